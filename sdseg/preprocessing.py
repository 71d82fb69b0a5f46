"""Images as the models see them, the same way in training data, inference and evaluation: intensities mapped to
[-1, 1] (a CT window, or percentiles over the region of interest), slices resized to the model's square input and
masks back to the slice."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def intensity_range(values: np.ndarray, preprocessing: dict) -> tuple[float, float]:
    """Intensities mapped to -1 and +1: the CT window ``[lo, hi]`` (normalization "ct_window"), or the percentiles
    ``[p0, p1]`` of ``values`` (normalization "percentile"; computed once over the whole ROI)."""
    if preprocessing["normalization"] == "ct_window":
        lo, hi = preprocessing["window"]
    else:
        lo, hi = np.percentile(values, preprocessing["percentiles"])
    return float(lo), float(hi)


def normalize_intensities(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """float32 ``clip((x - lo) / (hi - lo), 0, 1) * 2 - 1``: [lo, hi] -> [-1, 1]; a constant range maps to -1."""
    scale = 1.0 / (hi - lo) if hi > lo else 0.0
    return (np.clip((np.asarray(values, dtype=np.float32) - lo) * scale, 0.0, 1.0) * 2.0 - 1.0).astype(np.float32)


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """(B, C, h, w) -> (B, C, size, size), bilinear (antialiased when shrinking)."""
    if images.shape[-2:] == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def resize_masks(masks: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """(B, N, S, S) binary masks -> (B, N, *shape), nearest neighbour (pixel-centre aligned)."""
    if tuple(masks.shape[-2:]) == tuple(shape):
        return masks
    return F.interpolate(masks.to(torch.uint8), size=tuple(shape), mode="nearest-exact").bool()
