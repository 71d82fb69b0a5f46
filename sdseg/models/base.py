"""Interface shared by every segmentation diffusion model (see docs/architecture.md)."""

from __future__ import annotations

from typing import Iterable

import torch

# Config keys every model accepts besides its own: a one-line description (shown in model lists), the data sets it
# was trained on (sdseg.training.training_data_record), the recipe of its training crops (sdseg preprocess),
# which inference follows to cut its crops (sdseg.propagation.crop_recipe), and the prompt channels it takes after
# the image's (sdseg.prompt_maps), the propagation's rules tuned for it (sdseg.rule_config: the scale search's
# and the jump rule's parameters), and the only image modalities it was trained for (scripts/bundle_model.py
# --modalities; none: any).
SHARED_CONFIG_KEYS = frozenset({"description", "training_data", "crop", "prompt_channels", "propagation",
                                "modalities"})


class SegmentationDiffusionModel(torch.nn.Module):
    """A conditional diffusion model p(mask | image).

    Subclasses set ``kind`` and keep a JSON-serialisable ``config`` that rebuilds them. Images reach the model
    scaled to [-1, 1] with shape (B, C, H, W); masks are (B, 1, H, W) in {0, 1}.
    Models trained in several stages (SDSeg: mask autoencoder, then latent diffusion) list them in
    ``training_stages()``; the training loop runs them in order.
    """

    kind: str = ""
    # Config entry holding the default number of sampling steps (what ``sample(steps=None)`` runs).
    steps_config_key: str = "sampling_steps"
    # True for a predictor whose N samples are one mask repeated: the inference path then runs one forward pass per
    # image and repeats its mask (sdseg.inference.sample_items).
    deterministic: bool = False

    def __init__(self, config: dict):
        super().__init__()
        self.config = dict(config)

    @classmethod
    def preset(cls, name: str, **overrides) -> dict:
        """Config of a named size preset ("tiny" for tests, "small" CPU default, "paper"), with overrides."""
        raise NotImplementedError

    def training_stages(self) -> list[str]:
        return ["main"]

    def begin_stage(self, stage: str, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Hook run before a stage starts; ``batches`` yields (image, mask) training batches."""

    def parameters_for_stage(self, stage: str) -> list[torch.nn.Parameter]:
        return list(self.parameters())

    def training_target(self) -> str:
        """The mask each training image comes with (sdseg.masks.rater_target): "random", one uniformly random
        rater's per step (the diffusion models learn the raters' distribution), "majority" or "union"."""
        return "random"

    def training_loss(self, image: torch.Tensor, mask: torch.Tensor, generator: torch.Generator | None = None,
                      stage: str = "main"):
        """Return ``(loss, logs)`` for one batch; ``logs`` maps names to floats."""
        raise NotImplementedError

    @torch.no_grad()
    def sample(self, image: torch.Tensor, num_samples: int, steps: int | None = None,
               generator: torch.Generator | None = None, sampler: str | None = None) -> torch.Tensor:
        """Return ``num_samples`` soft masks per image, shape (B, N, H, W), values in [0, 1].

        ``generator`` is one generator or a list of B * N CPU generators, entry b * N + n drawing sample n of
        image b, so that a sample does not depend on which other samples share its batch.
        """
        raise NotImplementedError

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
