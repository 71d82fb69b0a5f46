"""Keeping the propagation on its lesion: a slice whose consensus jumps away from the previous slice's (it grew into a
neighbouring structure) ends its direction.

With P the previous slice's consensus of the direction (area a_p, centroid c_p, equivalent diameter
D = 2 sqrt(a_p / pi)) and C the new one (a_c, c_c), the consensus jumps when any of

    area:      a_c > max_area_ratio x a_p  and  a_c - a_p > min_growth_voxels
    centroid:  |c_c - c_p| > max_centroid_shift x D + 1 voxel
    footprint: |C outside dilate(P, r)| > max_outside_fraction x a_c,  r = max(min_dilation_voxels,
               footprint_dilation x D)  (a square structuring element of side 2r + 1)

holds. The propagation then keeps that slice's samples inside dilate(P, r) only and stops the direction (reported as
``jump``). The bounds are config values: a model's ``config["propagation"]["jump_rule"]`` overrides the defaults.
Checked on the true masks of the sarcoma validation patients (CT, MR and PET of STS_004, 007, 013, 022, 023, 034,
036, 039): the defaults flag 24 of their 2256 consecutive-slice transitions (1.1 %, all at a lesion's tip, where a
few voxels become many: area ratio 99th percentile 2.9, centroid shift 0.44 D, outside share 0.22).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from sdseg.masks import dilate
from sdseg.rule_config import rule_of_config


@dataclass(frozen=True)
class JumpRule:
    """Bounds of :func:`jump` (see the module docstring)."""
    CONFIG_KEY: ClassVar[str] = "jump_rule"  # its key in a model's config["propagation"]

    max_area_ratio: float = 3.0
    min_growth_voxels: float = 25.0
    max_centroid_shift: float = 0.5
    footprint_dilation: float = 0.25
    min_dilation_voxels: float = 2.0
    max_outside_fraction: float = 0.35

    @classmethod
    def of_config(cls, config: dict) -> "JumpRule":
        """The defaults, overridden by the model's ``config["propagation"]["jump_rule"]`` (sdseg.rule_config)."""
        return rule_of_config(cls, config, cls.CONFIG_KEY)


def _diameter(area: int) -> float:
    return 2.0 * math.sqrt(area / math.pi)


def footprint(previous: np.ndarray, rule: JumpRule) -> np.ndarray:
    """dilate(P, r) of a previous consensus ``previous`` (H, W) bool (module docstring)."""
    radius = int(math.ceil(max(rule.min_dilation_voxels, rule.footprint_dilation * _diameter(previous.sum()))))
    return dilate(torch.from_numpy(np.ascontiguousarray(previous, dtype=bool))[None], radius)[0].numpy()


def jump(previous: np.ndarray, current: np.ndarray, rule: JumpRule) -> str | None:
    """Why ``current`` (H, W) bool jumped away from ``previous`` (module docstring), or None when it did not (or one
    of them is empty: an empty slice is the ``stop_after_empty`` rule's)."""
    area_p, area_c = int(previous.sum()), int(current.sum())
    if area_p == 0 or area_c == 0:
        return None
    if area_c > rule.max_area_ratio * area_p and area_c - area_p > rule.min_growth_voxels:
        return f"area x{area_c / area_p:.1f}"
    shift = float(np.hypot(*(np.mean(np.nonzero(current), axis=1) - np.mean(np.nonzero(previous), axis=1))))
    if shift > rule.max_centroid_shift * _diameter(area_p) + 1.0:
        return f"centroid moved {shift:.1f} voxels"
    outside = int((current & ~footprint(previous, rule)).sum())
    if outside > rule.max_outside_fraction * area_c:
        return f"{outside / area_c:.0%} outside the previous slice's footprint"
    return None
