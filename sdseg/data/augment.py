"""Training augmentations of a batch of crops, applied on the training device.

Geometric ones move an image and all its masks (every rater's, the neighbouring slices') together; intensity ones
change the image only. The standard recipe for segmentation from few patients (nnU-Net, Isensee et al. 2021,
supplementary "Data augmentation": rotations, scaling, gamma, contrast, brightness, mirroring), cut down to what
keeps a crop a crop of the same lesion: mirroring and transposition (together the 8 symmetries of the square, in
place of nnU-Net's arbitrary rotations), zoom about the centre, gamma, contrast and brightness.

``flip`` is what every model trained before augmentations were selectable used; ``sdseg train --augment`` picks
others. Every random number comes from the caller's CPU generator, drawn in a fixed order, so a batch depends only
on that generator's seed (resumable training).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from sdseg.choices import AUGMENTATIONS, DEFAULT_AUGMENTATIONS

PROBABILITY = 0.5  # each of transpose, scale and intensity is applied to an image with this probability
ZOOM_RANGE = (0.8, 1.25)  # zoom about the crop's centre, drawn log-uniformly (> 1: the lesion looks larger)
GAMMA_RANGE = (0.7, 1.5)  # exponent on the image mapped to [0, 1], drawn log-uniformly
CONTRAST_RANGE = (0.75, 1.25)  # factor about the image's mean
BRIGHTNESS = 0.1  # shift drawn uniformly in [-BRIGHTNESS, BRIGHTNESS] (images span [-1, 1])


def parse_augmentations(text: str) -> list[str]:
    """``"flip,scale"`` -> ``["flip", "scale"]`` (in AUGMENTATIONS' order); ``"none"`` -> ``[]``; ValueError for an
    unknown name."""
    names = set() if text.strip() == "none" else {name.strip() for name in text.split(",") if name.strip()}
    unknown = names - set(AUGMENTATIONS)
    if unknown or not (names or text.strip() == "none"):
        raise ValueError(f"give a subset of {','.join(AUGMENTATIONS)} or none; got {text!r}")
    return [name for name in AUGMENTATIONS if name in names]


def _where(chosen: torch.Tensor, changed: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    return torch.where(chosen.to(kept.device).view(-1, *[1] * (kept.dim() - 1)), changed, kept)


def _log_uniform(count: int, bounds: tuple[float, float], generator: torch.Generator) -> torch.Tensor:
    low, high = math.log(bounds[0]), math.log(bounds[1])
    return torch.exp(low + (high - low) * torch.rand(count, generator=generator))


def _zoom(tensor: torch.Tensor, grid: torch.Tensor, is_mask: bool) -> torch.Tensor:
    """Resample ``tensor`` (B, C, S, S) on ``grid``: images bilinear with the edge value outside, masks bilinear then
    thresholded at 0.5 with nothing outside."""
    values = F.grid_sample(tensor.float(), grid, mode="bilinear", padding_mode="zeros" if is_mask else "border",
                           align_corners=False)
    return values >= 0.5 if is_mask else values


def augment_batch(images: torch.Tensor, masks: list[torch.Tensor], generator: torch.Generator,
                  names=DEFAULT_AUGMENTATIONS):
    """``(images, masks)`` after the augmentations ``names`` (a subset of AUGMENTATIONS), per image:

    - ``flip``: vertical and horizontal mirroring, each with probability 1/2 (drawn even when ``flip`` is not
      named, so that the draws after it do not depend on it);
    - ``transpose``: swap the two in-plane axes;
    - ``scale``: zoom about the centre by a factor in ZOOM_RANGE (sampling grid x / factor);
    - ``intensity``: on the image mapped to [0, 1], a gamma in GAMMA_RANGE, then contrast about its mean (factor in
      CONTRAST_RANGE) and a brightness shift, clipped back to [-1, 1].

    ``images`` (B, C, S, S) float; ``masks``: bool tensors (B, *, S, S), each moved with the image."""
    count = images.shape[0]
    flips = torch.rand(count, 2, generator=generator) < 0.5
    if "flip" in names:
        for axis, flip in ((-2, flips[:, 0]), (-1, flips[:, 1])):
            images = _where(flip, images.flip(axis), images)
            masks = [_where(flip, mask.flip(axis), mask) for mask in masks]
    if "transpose" in names:
        swap = torch.rand(count, generator=generator) < PROBABILITY
        images = _where(swap, images.transpose(-1, -2), images)
        masks = [_where(swap, mask.transpose(-1, -2), mask) for mask in masks]
    if "scale" in names:
        zoom = torch.where(torch.rand(count, generator=generator) < PROBABILITY,
                           _log_uniform(count, ZOOM_RANGE, generator), torch.ones(count))
        theta = torch.zeros(count, 2, 3)
        theta[:, 0, 0] = theta[:, 1, 1] = 1.0 / zoom
        grid = F.affine_grid(theta, list(images.shape), align_corners=False).to(images.device)
        images = _zoom(images, grid, is_mask=False)
        masks = [_zoom(mask, grid, is_mask=True) for mask in masks]
    if "intensity" in names:
        chosen = torch.rand(count, generator=generator) < PROBABILITY
        gamma = _log_uniform(count, GAMMA_RANGE, generator)
        contrast = CONTRAST_RANGE[0] + (CONTRAST_RANGE[1] - CONTRAST_RANGE[0]) * torch.rand(count, generator=generator)
        shift = BRIGHTNESS * (2 * torch.rand(count, generator=generator) - 1)
        gamma, contrast, shift = (value.to(images.device).view(-1, 1, 1, 1) for value in (gamma, contrast, shift))
        unit = ((images + 1) / 2).clamp(0, 1) ** gamma
        mean = unit.mean(dim=(-2, -1), keepdim=True)
        changed = (((unit - mean) * contrast + mean) * 2 - 1 + shift).clamp(-1, 1)
        images = _where(chosen, changed, images)
    return images, masks
