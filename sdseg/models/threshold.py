"""The intensity-threshold baseline as a model kind: mask = normalised image > t (polarity "above") or < t ("below").

Not a diffusion model and not trained by ``sdseg train``: ``sdseg evaluate --baselines`` fits ``t`` and the polarity
on the train split (:func:`sdseg.evaluation.fit_intensity_threshold`). Every sample is the same deterministic mask,
so the sample variance is zero. Saved as a model folder, it is a predictor whose output is known voxel by voxel,
which the tests use to check that the worker and the MRML writer put every mask voxel back on its image voxel.
"""

from __future__ import annotations

import numpy as np
import torch

from sdseg.models.base import SegmentationDiffusionModel

POLARITIES = ("above", "below")
DEFAULT_CONFIG = {
    "image_channels": 1,
    "preprocessing": {"normalization": "percentile", "percentiles": [0.5, 99.5]},
    "polarity": "above",
}
PRESETS = {"tiny": {"image_size": 32}, "small": {"image_size": 64}, "paper": {"image_size": 128}}


def threshold_masks(images, threshold: float, polarity: str):
    """``images > threshold`` (polarity "above") or ``images < threshold`` ("below"); numpy or torch."""
    if polarity not in POLARITIES:
        raise ValueError(f"polarity must be one of {', '.join(POLARITIES)}, got {polarity!r}")
    return images > threshold if polarity == "above" else images < threshold


class IntensityThresholdModel(SegmentationDiffusionModel):
    """``sample()`` returns ``num_samples`` copies of the thresholded image; ``threshold`` is a stored tensor."""

    kind = "threshold"

    def __init__(self, config: dict):
        super().__init__(config)
        threshold_masks(np.zeros(1), 0.0, self.config["polarity"])  # validates the polarity
        self.register_buffer("threshold", torch.tensor(float(self.config.pop("threshold", 0.0))))

    @classmethod
    def preset(cls, name: str, **overrides) -> dict:
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        return {**DEFAULT_CONFIG, **PRESETS[name], **overrides}

    def training_stages(self) -> list[str]:
        return []

    @torch.no_grad()
    def sample(self, image: torch.Tensor, num_samples: int, steps: int | None = None,
               generator=None, sampler: str | None = None) -> torch.Tensor:
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        masks = threshold_masks(image[:, 0], self.threshold, self.config["polarity"]).to(image.dtype)
        return masks[:, None].expand(-1, num_samples, -1, -1).contiguous()
