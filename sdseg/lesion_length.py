"""Keeping the propagation within a plausible length of its lesion: a lesion prompted on one slice is taken to reach
at most ``max_diameters`` x D_0 on each side of that slice, with

    D_0 = 2 sqrt(A_0 / pi)   (mm; A_0 the area of the prompted slice's consensus, mm^2)

its equivalent diameter there; a direction whose next slice lies farther from the prompted slice (centre to centre,
along the slice axis) stops, reported as ``length``. Point prompts only: a box gives the lesion's slices itself.
Off (``None``) unless a model's
``config["propagation"]["length_rule"]`` sets it (sdseg.rule_config), as scripts/tune_length_rule.py chooses it
on validation volumes.

Why: past a sarcoma's end the union models go on painting the neighbouring muscle, slice after slice, with the
tumour's area, intensity and sample agreement (on the validation volumes no per-slice figure told those slices from
the tumour's); the distance from the prompted slice, measured in the lesion's own width, did.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from sdseg.geometry import voxel_spacing
from sdseg.rule_config import rule_of_config


@dataclass(frozen=True)
class LengthRule:
    """The bound of :func:`reach_mm` (see the module docstring); None: no bound."""
    CONFIG_KEY: ClassVar[str] = "length_rule"  # its key in a model's config["propagation"]

    max_diameters: float | None = None

    @classmethod
    def of_config(cls, config: dict) -> "LengthRule":
        """The default (no bound), overridden by the model's ``config["propagation"]["length_rule"]``."""
        return rule_of_config(cls, config, cls.CONFIG_KEY)


def reach_mm(rule: LengthRule, area_mm2: float) -> float | None:
    """How far (mm) from the prompted slice, whose consensus covers ``area_mm2``, the propagation may go; None: no
    bound (the rule is off, or the prompted slice found nothing)."""
    if rule.max_diameters is None or area_mm2 <= 0:
        return None
    return rule.max_diameters * 2.0 * math.sqrt(area_mm2 / math.pi)


def reach_slices(rule: LengthRule, plane_voxels: int, ijk_to_ras, slice_axis: int) -> float | None:
    """:func:`reach_mm` in slices of a volume (geometry ``ijk_to_ras``, slices along IJK axis ``slice_axis``) whose
    prompted slice's consensus covers ``plane_voxels`` voxels; None: no bound."""
    spacing = voxel_spacing(ijk_to_ras)
    in_plane_mm2 = float(np.prod([spacing[axis] for axis in range(3) if axis != slice_axis]))
    reach = reach_mm(rule, plane_voxels * in_plane_mm2)
    return None if reach is None else reach / float(spacing[slice_axis])
