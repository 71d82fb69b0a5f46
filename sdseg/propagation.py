"""Prompt-driven 3D segmentation: from a click on a lesion (or a box around it), slice by slice outward, every
slice cut at the scale the model was trained on (docs/protocol.md, "Prompts").

For each lesion prompt:

1. **Crops at the trained scale, or a multiple of it.** The model's crop recipe (``config["crop"]``, written by
   ``sdseg preprocess`` and copied by ``sdseg train``; :data:`DEFAULT_CROP` for older models) gives each slice's
   in-plane crop exactly as :func:`sdseg.data.preprocess.lesion_rois` made the training crops: ``in_plane_voxels``
   pixels (x the lesion's scale), at least ``lesion_margin`` x the lesion (a box prompt: the box), centred on it,
   shifted to stay inside the volume, never padded; no larger than the volume.
2. **Scale search** (a point prompt; sdseg.scale_search): the prompted slice is sampled at every scale of
   ``scales`` in one batched pass and the rule of :func:`sdseg.scale_search.choose_scale` picks one; that scale's
   samples are the prompted slice's result. A forced ``scale`` skips the search; a box fixes the scale (1: its crop
   holds the box). Each direction then re-scales with the lesion: after each slice, of ``scales``, the one its
   consensus fills as the prompted slice filled the chosen scale (:func:`sdseg.scale_search.scale_for_extent`; not
   with a forced scale or a box, nor when no scale passed the rule or the one taken overflows its crop).
3. **Normalisation over the crop stack**, once per lesion (as training normalised over each ROI): the first crop's
   footprint (each searched scale's own) over the slices within half its physical width of the prompted slice,
   inside the ROI.
4. **Propagation.** The prompted slice is segmented first, then the slices outward, alternating directions (one
   forward pass holds the next slice of each direction). Each next crop is centred on the previous consensus of its
   direction and grows to ``lesion_margin`` x that consensus' extent; a box's slices are all cut at the box's own
   crop (a crop following a consensus smaller than the lesion was filled by it, and the model outlines no lesion
   that fills its crop: box 3D Dice on the sarcoma validation volumes, CT 0.585 -> 0.634, MR 0.610 -> 0.690, PET
   0.751 both). A slice whose consensus touches an edge of its crop inside the volume (the lesion goes on beyond
   it; never with a box, whose crop holds it) is cut again :data:`GROWTH` times larger before it is delivered.
5. **The prompt picks the object.** On the prompted slice each sample keeps its connected component under the point
   (or the nearest one within :data:`POINT_TOLERANCE_VOXELS`; a box: the components inside the box); on later slices
   the components touching the previous consensus of that direction (until there is one: the prompt again).
   Consensus and variance are those of the kept components.
6. **Prompt channels** (models trained with them, sdseg.prompt_maps): the prompted slice gets the user's click or
   box; every later slice a click at the most interior point of the previous consensus of its direction (the
   user's prompt again while there is none), so that a slice past the lesion's end is asked about healthy tissue.
7. **Stopping.** A direction stops after ``stop_after_empty`` consecutive slices with an empty consensus
   (``empty``), at the end of the ROI (a box: of the box; ``roi_end``), once the lesion has ``max_slices`` slices
   (``max_slices``), when its consensus jumps away from the previous slice's (``jump``: sdseg.lesion_jumps; that
   slice keeps only what lies in the previous slice's dilated footprint), or when its next slice lies farther from
   the prompted slice than the lesion's length rule allows (``length``: sdseg.lesion_length; point prompts of models
   whose config sets it). :class:`LesionReport` says, per lesion,
   the scale and how each direction stopped.
8. **3D hypotheses** (models with the ``previous`` prompt channel): sample n of each later slice is conditioned on
   sample n of the slice before it in its direction (the kept components, in the new crop's pixels), so that sample n
   is one 3D hypothesis; the prompted slice's samples see "unknown". Other models draw samples slice by slice
   (sample n of slice k and of slice k+1 are independent draws), as in the whole-volume mode.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator

import numpy as np
import torch

from sdseg.inference import (BatchSize, auto_batch_size, check_model_fits_volume, consensus_mask, model_device,
                             sample_items)
from sdseg.geometry import voxel_spacing
from sdseg.preprocessing import intensity_range, normalize_intensities
from sdseg.lesion_jumps import JumpRule, footprint, jump
from sdseg.lesion_length import LengthRule, reach_slices
from sdseg.masks import components_near_point, components_touching, interior_point
from sdseg.prompt_maps import CropPrompt, takes_previous_masks
from sdseg.metrics import voxel_variance
from sdseg.scale_search import DEFAULT_SCALES, ScaleRule, candidate, choose_scale, scale_for_extent

# The crop recipe of models saved before it was recorded: `sdseg preprocess --crop 96` (its default), >= 1.2 x the
# lesion (sdseg.data.preprocess.LESION_MARGIN).
DEFAULT_CROP = {"in_plane_voxels": 96, "lesion_margin": 1.2}
POINT_TOLERANCE_VOXELS = 5.0  # a click this close to a predicted component (in crop pixels) still picks it
GROWTH = 1.5  # a crop whose consensus touches its edge is cut again this many times larger
DEFAULT_STOP_AFTER_EMPTY = 2
# For the ETA only: a lesion found on its prompted slice is expected to reach this many of its equivalent diameters
# there to each side (a sphere: 0.5); where the model has a length rule (sdseg.lesion_length), its reach instead.
EXPECTED_DEPTH = LengthRule(max_diameters=0.5)


@dataclass(frozen=True)
class Prompt:
    """A lesion prompt in the volume's continuous IJK coordinates: a point (i, j, k), or a box
    [i0, j0, k0, i1, j1, k1] (voxel indices, end exclusive)."""
    point_ijk: tuple[float, float, float] | None = None
    box_ijk: tuple[int, int, int, int, int, int] | None = None


@dataclass(frozen=True)
class LesionSlice:
    """One segmented slice of one lesion: arrays cover ``box_ijk`` (its extent along the slice axis is the slice),
    laid out as docs/protocol.md says (rows: the higher remaining IJK axis)."""
    lesion: int
    index: int
    box_ijk: list[int]
    samples: np.ndarray  # uint8 (N, A, B)
    consensus: np.ndarray  # uint8 (A, B)
    variance: np.ndarray  # float32 (A, B)


def crop_recipe(config: dict) -> dict:
    """The model's crop recipe ``{"in_plane_voxels", "lesion_margin"}`` (DEFAULT_CROP when it has none)."""
    return {**DEFAULT_CROP, **(config.get("crop") or {})}


def plane_axes(slice_axis: int) -> tuple[int, int]:
    """(row axis, column axis) of a slice's 2D arrays, as IJK axes: the two others, the higher one first."""
    row, column = [axis for axis in (2, 1, 0) if axis != slice_axis]
    return row, column


@dataclass
class LesionReport:
    """How one lesion's propagation went: its crop ``scale`` (x ``in_plane_voxels``) and where it came from
    (``scale_source``: "search", "forced", "box", or "whole slices" for a model trained on whole slices), the
    chosen scale's score and every searched scale's figures (sdseg.scale_search), and how each direction stopped
    (``stops``: "forward" = increasing slice index, "backward" -> "empty", "roi_end", "max_slices", "length" or
    "jump: <why>"; filled when the lesion is done)."""
    lesion: int
    scale: float
    scale_source: str
    scale_score: float | None = None
    scales_tried: list[dict] = field(default_factory=list)
    stops: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def crop_window(centre: float, extent_needed: float, dim: int, recipe: dict, scale: float = 1.0) -> tuple[int, int]:
    """[start, end) of a crop along one in-plane axis, as the training crops were made: ``scale`` x
    ``in_plane_voxels`` (0: the whole ``dim``), at least ``lesion_margin`` x ``extent_needed``, no larger than
    ``dim``, centred on ``centre`` (continuous voxel coordinates, voxel n covering [n - 0.5, n + 0.5)) and shifted to
    stay inside [0, dim)."""
    crop = max(1, round(int(recipe["in_plane_voxels"]) * scale)) if recipe["in_plane_voxels"] else dim
    extent = min(dim, max(crop, math.ceil(extent_needed * recipe["lesion_margin"])))
    first = int(np.clip(round(centre + 0.5 - extent / 2.0), 0, dim - extent))
    return first, first + extent


@dataclass
class _Direction:
    """State of the propagation in one direction (+1 or -1) along the slice axis."""
    step: int
    next_index: int
    centre: tuple[float, float]  # (row, column) in the volume's plane coordinates
    extent: tuple[float, float]  # lesion extent (rows, columns) the next crop must hold
    anchor: np.ndarray | None  # previous consensus on the whole plane (None: use the prompt)
    empty_run: int
    scale: float = 1.0  # of the next crop
    active: bool = True
    previous: np.ndarray | None = None  # (N, rows, columns) bool: the previous slice's samples on the whole plane
    stop: str | None = None  # why it stopped (LesionReport.stops)


class _Lesion:
    """Geometry and state of one lesion's propagation."""

    def __init__(self, number: int, prompt: Prompt, dims_ijk, slice_axis: int, roi_ijk, recipe: dict,
                 scales=DEFAULT_SCALES, scale: float | None = None):
        self.number, self.prompt, self.recipe = number, prompt, recipe
        self.slice_axis = slice_axis
        self.row_axis, self.column_axis = plane_axes(slice_axis)
        self.plane_shape = (dims_ijk[self.row_axis], dims_ijk[self.column_axis])
        low, high = roi_ijk[slice_axis], roi_ijk[slice_axis + 3]
        self.roi_plane = (roi_ijk[self.row_axis], roi_ijk[self.row_axis + 3],
                          roi_ijk[self.column_axis], roi_ijk[self.column_axis + 3])
        if prompt.box_ijk is not None:
            box = prompt.box_ijk
            low, high = max(low, box[slice_axis]), min(high, box[slice_axis + 3])
            rr0, rr1, cc0, cc1 = self.roi_plane
            self.roi_plane = (max(rr0, box[self.row_axis]), min(rr1, box[self.row_axis + 3]),
                              max(cc0, box[self.column_axis]), min(cc1, box[self.column_axis + 3]))
            self.start = (box[slice_axis] + box[slice_axis + 3] - 1) // 2
            centre = tuple((box[a] + box[a + 3] - 1) / 2.0 for a in (self.row_axis, self.column_axis))
            extent = tuple(float(box[a + 3] - box[a]) for a in (self.row_axis, self.column_axis))
        else:
            point = prompt.point_ijk
            self.start = int(round(point[slice_axis]))
            centre = (float(point[self.row_axis]), float(point[self.column_axis]))
            extent = (0.0, 0.0)
        if not low <= self.start < high:
            raise ValueError(f"lesion {number + 1}: the prompt's slice {self.start} is outside slices {low}..{high - 1} "
                             "of the region of interest (and box); move the prompt or the ROI")
        rr0, rr1, cc0, cc1 = self.roi_plane
        inside = rr0 - 0.5 <= centre[0] < rr1 - 0.5 and cc0 - 0.5 <= centre[1] < cc1 - 0.5
        if prompt.point_ijk is not None and not inside:
            raise ValueError(f"lesion {number + 1}: the point {list(prompt.point_ijk)} (IJK) is outside the region "
                             f"of interest {list(roi_ijk)}; move the point or the ROI")
        self.low, self.high = low, high
        self.directions = [_Direction(+1, self.start + 1, centre, extent, None, 0),
                           _Direction(-1, self.start - 1, centre, extent, None, 0)]
        self.first_centre, self.first_extent = centre, extent
        self.slices = 0
        self.reach_slices: float | None = None  # how far from the prompted slice a direction may go (length rule)
        self.depth_slices: float | None = None  # how far it is expected to go (ETA); None: prompted slice not done
        if not recipe["in_plane_voxels"]:
            source, scales = "whole slices", (1.0,)
        elif prompt.box_ijk is not None:
            source, scales = "box", (1.0,)
        elif scale is not None:
            source, scales = "forced", (float(scale),)
        else:
            source, scales = "search", tuple(sorted(float(s) for s in scales))
        self.scales = scales  # searched on the prompted slice, and re-scaled among with the lesion
        self.report = LesionReport(number, 1.0 if len(scales) > 1 else scales[0], source)
        self.fill = 0.0  # how the lesion filled the chosen scale's nominal crop on the prompted slice

    def crop(self, centre, extent, scale: float) -> tuple[int, int, int, int]:
        """(row0, row1, column0, column1) of the crop around ``centre`` holding ``extent`` at ``scale``."""
        rows = crop_window(centre[0], extent[0], self.plane_shape[0], self.recipe, scale)
        columns = crop_window(centre[1], extent[1], self.plane_shape[1], self.recipe, scale)
        return rows + columns

    def direction_crop(self, direction: _Direction) -> tuple[int, int, int, int]:
        """The crop of a direction's next slice: around its previous consensus, holding it (a point prompt); the
        box's own crop (a box prompt: the box bounds the lesion on every slice, and a crop that follows a consensus
        smaller than the lesion would cut it)."""
        if self.prompt.box_ijk is not None:
            return self.crop(self.first_centre, self.first_extent, direction.scale)
        return self.crop(direction.centre, direction.extent, direction.scale)

    def first_crops(self) -> list[tuple[float, tuple[int, int, int, int]]]:
        """(scale, crop) of the prompted slice at each scale to try, scales giving the same crop (the volume's
        edges) once."""
        crops = {}
        for scale in self.scales:
            crops.setdefault(self.crop(self.first_centre, self.first_extent, scale), scale)
        return [(scale, crop) for crop, scale in crops.items()]

    def choose(self, scale: float, candidates: list, score: float | None, plane: np.ndarray) -> None:
        """Take ``scale`` for the lesion; ``plane``: its prompted slice's consensus on the whole plane, whose fill
        the directions keep as they re-scale (empty: they do not re-scale)."""
        self.report.scale, self.report.scale_score = scale, score
        self.report.scales_tried = [c.as_dict() for c in candidates]
        for direction in self.directions:
            direction.scale = scale
        if plane.any() and self.recipe["in_plane_voxels"]:
            self.fill = _largest_extent(plane) / (scale * self.recipe["in_plane_voxels"])

    def rescale(self, direction: _Direction) -> None:
        """Re-scale a direction after a non-empty slice (module docstring, 2)."""
        if self.report.scale_source == "search" and self.fill > 0:
            direction.scale = scale_for_extent(max(direction.extent), self.scales, self.recipe["in_plane_voxels"],
                                               self.fill)

    def finish(self, max_slices: int | None) -> LesionReport:
        """The report, every direction's stop filled in (one still going ran out of ``max_slices``)."""
        for direction in self.directions:
            if direction.stop is None:
                direction.stop = "max_slices" if max_slices is not None and self.slices >= max_slices else "roi_end"
        self.report.stops = {("forward" if d.step > 0 else "backward"): d.stop for d in self.directions}
        return self.report

    def box_ijk(self, index: int, crop) -> list[int]:
        """The IJK box of a slice's crop clipped to the ROI's in-plane extent."""
        r0, r1, c0, c1 = self.clipped(crop)
        box = [0] * 6
        box[self.slice_axis], box[self.slice_axis + 3] = index, index + 1
        box[self.row_axis], box[self.row_axis + 3] = r0, r1
        box[self.column_axis], box[self.column_axis + 3] = c0, c1
        return box

    def clipped(self, crop):
        rr0, rr1, cc0, cc1 = self.roi_plane
        return max(crop[0], rr0), min(crop[1], rr1), max(crop[2], cc0), min(crop[3], cc1)

    def intensity_range(self, array_kji: np.ndarray, ijk_to_ras, crop, preprocessing: dict) -> tuple[float, float]:
        """(lo, hi) of the normalisation of the crop stack of a first ``crop`` (module docstring, 3)."""
        first, end = self.normalisation_slices(ijk_to_ras, crop)
        r0, r1, c0, c1 = crop
        axis = 2 - self.slice_axis
        stack = np.moveaxis(np.take(array_kji, range(first, end), axis=axis), axis, 0)
        return intensity_range(stack[:, r0:r1, c0:c1], preprocessing)

    def normalisation_slices(self, ijk_to_ras, crop) -> tuple[int, int]:
        """[first, end) of the slices of the crop stack: within half the first crop's physical width of the
        prompted slice, inside the ROI (and box)."""
        spacing = voxel_spacing(ijk_to_ras)
        r0, r1, c0, c1 = crop
        half_width_mm = max((r1 - r0) * spacing[self.row_axis], (c1 - c0) * spacing[self.column_axis]) / 2.0
        reach = int(math.ceil(half_width_mm / spacing[self.slice_axis]))
        return max(self.low, self.start - reach), min(self.high, self.start + reach + 1)

    def limit_length(self, plane: np.ndarray, rule: LengthRule, ijk_to_ras) -> None:
        """Bound the directions' reach by the length rule, from the prompted slice's consensus ``plane`` (on the
        whole plane; sdseg.lesion_length); a point prompt's only: a box gives the lesion's slices itself."""
        if self.prompt.box_ijk is None:
            self.reach_slices = reach_slices(rule, int(plane.sum()), ijk_to_ras, self.slice_axis)
        self.depth_slices = self.reach_slices or reach_slices(EXPECTED_DEPTH, int(plane.sum()), ijk_to_ras,
                                                              self.slice_axis) or 0.0

    def slices_expected(self, stop_after_empty: int, max_slices: int | None) -> int | None:
        """For the ETA: the slices this lesion's directions are still expected to visit once its prompted slice is
        done (None before): each goes on to ``depth_slices`` from the prompted slice while it finds the lesion, then
        ``stop_after_empty`` empty slices, within the ROI (or box), the length rule's reach and ``max_slices``."""
        if self.depth_slices is None:
            return None
        left = 0
        for direction in (d for d in self.directions if d.active):
            done = abs(direction.next_index - self.start) - 1  # slices it has visited
            room = self.high - direction.next_index if direction.step > 0 else direction.next_index - self.low + 1
            if self.reach_slices is not None:
                room = min(room, math.floor(self.reach_slices) - done)
            found = direction.anchor is not None and direction.empty_run == 0
            expected = (max(0, round(self.depth_slices) - done) if found else 0) + stop_after_empty \
                - direction.empty_run
            left += max(0, min(room, expected))
        return left if max_slices is None else min(left, max(0, max_slices - self.slices))

    def active_directions(self, max_slices: int | None) -> list[_Direction]:
        for direction in self.directions:
            if direction.active and not self.low <= direction.next_index < self.high:
                direction.active, direction.stop = False, "roi_end"
            elif direction.active and self.reach_slices is not None \
                    and abs(direction.next_index - self.start) > self.reach_slices:
                direction.active, direction.stop = False, "length"
        active = [d for d in self.directions if d.active]
        if max_slices is not None:
            active = active[:max(0, max_slices - self.slices)]
        return active

    def pick(self, samples: np.ndarray, crop, anchor: np.ndarray | None) -> np.ndarray:
        """The components of the samples (N, rows, columns of ``crop``) that ``anchor`` (the previous consensus on
        the whole plane) or else the prompt picks; a box prompt keeps what is inside the box (see clipped())."""
        r0, r1, c0, c1 = crop
        masks = torch.from_numpy(samples.astype(bool))
        if anchor is not None:
            return components_touching(masks, torch.from_numpy(anchor[r0:r1, c0:c1])).numpy()
        if self.prompt.box_ijk is not None:
            return samples.astype(bool)
        point = (self.prompt.point_ijk[self.row_axis] - r0, self.prompt.point_ijk[self.column_axis] - c0)
        return components_near_point(masks, point, POINT_TOLERANCE_VOXELS).numpy()

    def crop_prompt(self, crop, anchor: np.ndarray | None) -> CropPrompt:
        """The prompt channels' prompt of a slice's crop (for models that take them): the most interior point of
        ``anchor`` (the previous consensus of the slice's direction on the whole plane), else the user's prompt,
        in the crop's pixels."""
        r0, _, c0, _ = crop
        point = None if anchor is None else interior_point(anchor)
        if point is not None:
            return CropPrompt(point=(point[0] - r0, point[1] - c0))
        if self.prompt.box_ijk is not None:
            box = self.prompt.box_ijk
            return CropPrompt(box=(box[self.row_axis] - r0, box[self.row_axis + 3] - r0,
                                   box[self.column_axis] - c0, box[self.column_axis + 3] - c0))
        return CropPrompt(point=(self.prompt.point_ijk[self.row_axis] - r0,
                                 self.prompt.point_ijk[self.column_axis] - c0))

    def kept_consensus(self, crop, picked: np.ndarray) -> np.ndarray:
        """The consensus of ``picked`` (the crop's pixels) clipped to the ROI (and box): what result() keeps."""
        r0, _, c0, _ = crop
        rr0, rr1, cc0, cc1 = self.roi_plane
        return consensus_mask(picked)[max(0, rr0 - r0):rr1 - r0, max(0, cc0 - c0):cc1 - c0] > 0

    def border_contact(self, crop, kept: np.ndarray) -> tuple[bool, bool]:
        """Whether the kept consensus ``kept`` touches a (row, column) edge of ``crop`` with more ROI (or box)
        beyond it."""
        r0, r1, c0, c1 = crop
        rr0, rr1, cc0, cc1 = self.roi_plane
        if not kept.any():
            return False, False
        return ((r0 > rr0 and kept[0].any()) or (r1 < rr1 and kept[-1].any()),
                (c0 > cc0 and kept[:, 0].any()) or (c1 < cc1 and kept[:, -1].any()))

    def grown_crop(self, crop, picked: np.ndarray, scale: float):
        """A crop GROWTH times larger around the consensus when it touches an edge of ``crop`` with more ROI (or
        box) beyond it (the lesion goes on there: the model never saw a lesion cut by its crop); None when it does
        not, or the crop cannot grow."""
        r0, r1, c0, c1 = crop
        rr0, _, cc0, _ = self.roi_plane
        kept = self.kept_consensus(crop, picked)
        touches_rows, touches_columns = self.border_contact(crop, kept)
        if not (touches_rows or touches_columns):
            return None
        row_list, column_list = np.nonzero(kept)
        centre = (max(r0, rr0) + float(row_list.mean()), max(c0, cc0) + float(column_list.mean()))
        needed = ((r1 - r0) * GROWTH if touches_rows else 0.0, (c1 - c0) * GROWTH if touches_columns else 0.0)
        bigger = self.crop(centre, tuple(n / self.recipe["lesion_margin"] for n in needed), scale)
        return None if (bigger[1] - bigger[0], bigger[3] - bigger[2]) <= (r1 - r0, c1 - c0) else bigger

    def on_plane(self, crop, mask: np.ndarray) -> np.ndarray:
        """A mask of ``crop``'s clipped pixels (what result() keeps) on the whole plane."""
        cr0, cr1, cc0, cc1 = self.clipped(crop)
        plane = np.zeros(self.plane_shape, dtype=bool)
        plane[cr0:cr1, cc0:cc1] = mask
        return plane

    def jumped(self, direction: _Direction, crop, picked: np.ndarray, rule: JumpRule) -> np.ndarray:
        """``picked`` as it may be kept: when its consensus jumps away from the direction's previous one
        (sdseg.lesion_jumps), only what lies in the previous footprint, and the direction stops."""
        reason = jump(direction.anchor, self.on_plane(crop, self.kept_consensus(crop, picked)), rule)
        if reason is None:
            return picked
        direction.active, direction.stop = False, f"jump: {reason}"
        r0, r1, c0, c1 = crop
        allowed = footprint(direction.anchor, rule)
        window = np.zeros((r1 - r0, c1 - c0), dtype=bool)
        a0, a1, b0, b1 = max(0, r0), min(self.plane_shape[0], r1), max(0, c0), min(self.plane_shape[1], c1)
        window[a0 - r0:a1 - r0, b0 - c0:b1 - c0] = allowed[a0:a1, b0:b1]
        return picked & window

    def result(self, index: int, crop, picked: np.ndarray,
               with_samples: bool) -> tuple[LesionSlice, np.ndarray, np.ndarray | None]:
        """The slice's result clipped to the ROI (and box), its consensus on the whole plane, and ``with_samples``
        its samples on the whole plane (else None)."""
        r0, _, c0, _ = crop
        cr0, cr1, cc0, cc1 = self.clipped(crop)
        kept = picked[:, cr0 - r0:cr1 - r0, cc0 - c0:cc1 - c0]
        consensus = consensus_mask(kept)
        plane = self.on_plane(crop, consensus > 0)
        sample_planes = None
        if with_samples:
            sample_planes = np.zeros((len(kept), *self.plane_shape), dtype=bool)
            sample_planes[:, cr0:cr1, cc0:cc1] = kept
        self.slices += 1
        return LesionSlice(self.number, index, self.box_ijk(index, crop), kept.astype(np.uint8), consensus,
                           voxel_variance(kept)), plane, sample_planes

    def follow(self, direction: _Direction, plane: np.ndarray, stop_after_empty: int, move: bool = True,
               samples: np.ndarray | None = None) -> None:
        """Update a direction after a slice: re-centre (and re-scale) on the consensus, or count an empty slice;
        keep its ``samples`` on the whole plane for the next slice's; ``move`` on to its next slice (not after the
        prompted slice, which both directions start from)."""
        direction.previous = samples
        if plane.any():
            rows, columns = np.nonzero(plane)
            direction.centre = (float(rows.mean()), float(columns.mean()))
            direction.extent = (float(rows.max() - rows.min() + 1), float(columns.max() - columns.min() + 1))
            direction.anchor, direction.empty_run = plane, 0
            self.rescale(direction)
        else:
            direction.empty_run += 1
            if direction.empty_run >= stop_after_empty and direction.active:
                direction.active, direction.stop = False, "empty"
        if move:
            direction.next_index += direction.step


def check_prompts(prompts: list[Prompt], shape_kji, slice_axis: int, roi_ijk) -> None:
    """ValueError naming the first prompt outside the volume, or whose slice is outside the ROI."""
    dims_ijk = shape_kji[::-1]
    for number, prompt in enumerate(prompts, start=1):
        if prompt.point_ijk is not None:
            if not all(-0.5 <= prompt.point_ijk[a] < dims_ijk[a] - 0.5 for a in range(3)):
                raise ValueError(f"lesion {number}: the point {list(prompt.point_ijk)} (IJK) is outside the volume "
                                 f"of size {list(dims_ijk)}; click inside the volume")
        elif not all(0 <= prompt.box_ijk[a] < prompt.box_ijk[a + 3] <= dims_ijk[a] for a in range(3)):
            raise ValueError(f"lesion {number}: the box {list(prompt.box_ijk)} (IJK, end exclusive) does not fit "
                             f"the volume of size {list(dims_ijk)}; move or resize it")
        _Lesion(number - 1, prompt, dims_ijk, slice_axis, roi_ijk, DEFAULT_CROP)  # its slice inside the ROI


def _largest_extent(mask: np.ndarray) -> int:
    """The larger of a 2D mask's row and column extents (voxels)."""
    rows, columns = np.nonzero(mask)
    return int(max(rows.max() - rows.min() + 1, columns.max() - columns.min() + 1))


def rules_of(config: dict, prompt: dict | None) -> dict:
    """The ``accepted`` fields of a job's propagation rules: ``scale_search`` (the scales searched and the rule's
    parameters; null when the job forces a scale), ``jump_rule`` and ``length_rule``; nothing for a whole-ROI
    job."""
    if not prompt:
        return {}
    search = None if prompt.get("scale") is not None else {
        "scales": list(DEFAULT_SCALES), "rule": asdict(ScaleRule.of_config(config))}
    return {"scale_search": search, "jump_rule": asdict(JumpRule.of_config(config)),
            "length_rule": asdict(LengthRule.of_config(config))}


def slices_at_most(prompts: list[Prompt], shape_kji, slice_axis: int, roi_ijk, max_slices: int | None) -> int:
    """An upper bound of the slices a propagation visits (for progress and ETA)."""
    total = 0
    for prompt in prompts:
        low, high = roi_ijk[slice_axis], roi_ijk[slice_axis + 3]
        if prompt.box_ijk is not None:
            low, high = max(low, prompt.box_ijk[slice_axis]), min(high, prompt.box_ijk[slice_axis + 3])
        total += min(high - low, max_slices) if max_slices is not None else high - low
    return total


def propagate(model, array_kji: np.ndarray, ijk_to_ras, slice_axis: int, prompts: list[Prompt], roi_ijk,
              num_samples: int, steps: int | None = None, seed: int = 0, batch_size: int | None = None,
              stop_after_empty: int = DEFAULT_STOP_AFTER_EMPTY, max_slices: int | None = None,
              should_stop: Callable[[], bool] | None = None,
              on_batch: Callable[[int, int], None] | None = None, scale: float | None = None,
              scales=DEFAULT_SCALES,
              on_report: Callable[[LesionReport], None] | None = None) -> Iterator[LesionSlice]:
    """Yield the :class:`LesionSlice` results of every lesion prompt, lesion after lesion, each starting with the
    prompted slice and going outward (see the module docstring). ``scale``: force the crop scale of point prompts
    (None: search ``scales``). ``should_stop()`` is checked before every forward pass and at each of its sampling
    steps; ``on_batch(images_done, images_expected)`` is called after each pass and once more before a prompted
    slice is yielded (the images a lesion is expected to need, _Lesion.slices_expected, once its prompted slice is
    done: the ETA's, its first slice's included; a slice cut again in a
    larger crop, and the scales searched, add their images to both). ``on_report(report)`` is called for each
    lesion once its scale is chosen (before its first slice is yielded; ``stops`` empty) and once it is done."""
    config = model.config
    check_model_fits_volume(config)
    check_prompts(prompts, array_kji.shape, slice_axis, roi_ijk)
    size, recipe = int(config["image_size"]), crop_recipe(config)
    scale_rule, jump_rule, length_rule = (ScaleRule.of_config(config), JumpRule.of_config(config),
                                          LengthRule.of_config(config))
    dims_ijk = array_kji.shape[::-1]
    lesions = [_Lesion(n, prompt, dims_ijk, slice_axis, roi_ijk, recipe, scales, scale)
               for n, prompt in enumerate(prompts)]
    bounds = [slices_at_most([prompt], array_kji.shape, slice_axis, roi_ijk, max_slices) + len(lesion.first_crops())
              - 1 for prompt, lesion in zip(prompts, lesions)]  # slices, and the scales searched, at most
    batch = BatchSize(batch_size or auto_batch_size(model_device(model), size))
    coherent = takes_previous_masks(config)
    images_done, current, lesion_began = 0, 0, 0  # lesion_began: images done before the current lesion's

    def images_expected() -> int:
        """The images of the run as expected before a forward pass: those done, those the current lesion is expected
        to need from here (_Lesion.slices_expected: as far as its size on its prompted slice says; before that
        slice is done, as far as it may go) and those the later lesions may need."""
        expected = lesions[current].slices_expected(stop_after_empty, max_slices)
        ahead = (lesion_began + bounds[current] * num_samples if expected is None
                 else images_done + expected * num_samples)
        return max(images_done, ahead) + sum(bounds[current + 1:]) * num_samples

    def on_pass(images: int) -> None:
        nonlocal images_done
        images_done += images
        if on_batch is not None:
            on_batch(images_done, max(images_done, planned))

    for current, lesion in enumerate(lesions):
        lesion_began = images_done
        first_crops = lesion.first_crops()
        ranges = [lesion.intensity_range(array_kji, ijk_to_ras, crop, config["preprocessing"])
                  for _, crop in first_crops]
        plan = [(None, lesion.start, crop, scale_of) for scale_of, crop in first_crops]  # one forward pass
        searching, lesion_range = True, None  # the chosen scale's (lo, hi), once searched
        while plan:
            if should_stop is not None and should_stop():
                return
            planned = images_expected()
            lo_hi = ranges if searching else [lesion_range] * len(plan)
            crops = [normalize_intensities(np.take(array_kji, index, axis=2 - slice_axis)[a0:a1, b0:b1], lo, hi)
                     for (_, index, (a0, a1, b0, b1), _), (lo, hi) in zip(plan, lo_hi)]
            prompts = [lesion.crop_prompt(crop, None if direction is None else direction.anchor)
                       for direction, _, crop, _ in plan]
            previous = [None if direction is None or direction.previous is None
                        else direction.previous[:, a0:a1, b0:b1] for direction, _, (a0, a1, b0, b1), _ in plan]
            drawn = [samples for _, samples in sample_items(
                model, crops.__getitem__, lambda n: plan[n][1], len(crops), num_samples, steps, seed, batch,
                stream=lesion.number, should_stop=should_stop, on_pass=on_pass, prompt_of=prompts.__getitem__,
                previous_of=previous.__getitem__ if coherent else None)]  # stopped: the slices done so far
            picks = [lesion.pick(samples, crop, None if direction is None else direction.anchor)
                     for (direction, _, crop, _), samples in zip(plan, drawn)]
            if searching:
                if len(drawn) < len(plan):
                    return  # stopped during the search
                chosen = _choose_scale(lesion, plan, picks, scale_rule)
                lesion_range = ranges[chosen]
                plan, picks, searching = [plan[chosen]], [picks[chosen]], False
                if on_report is not None:
                    on_report(lesion.report)
            retries = []
            for (direction, index, crop, crop_scale), picked in zip(plan, picks):
                if direction is not None and direction.anchor is not None:
                    picked = lesion.jumped(direction, crop, picked, jump_rule)
                bigger = None if direction is not None and direction.stop else lesion.grown_crop(crop, picked,
                                                                                                  crop_scale)
                if bigger is not None:  # the lesion goes beyond the crop: this slice again, in a larger crop
                    retries.append((direction, index, bigger, crop_scale))
                    bounds[current] += 1
                    continue
                result, plane, sample_planes = lesion.result(index, crop, picked, coherent)
                if direction is None:  # the prompted slice: both directions start from it
                    lesion.limit_length(plane, length_rule, ijk_to_ras)
                    for follower in lesion.directions:
                        lesion.follow(follower, plane, stop_after_empty, move=False, samples=sample_planes)
                    if on_batch is not None:  # the lesion's size is known now: the ETA its first slice carries
                        on_batch(images_done, max(images_done, images_expected()))
                else:
                    lesion.follow(direction, plane, stop_after_empty, samples=sample_planes)
                yield result
            if any(direction is None for direction, _, _, _ in retries):
                plan = retries  # nothing goes outward before the prompted slice is done
                continue
            waiting = [direction for direction, _, _, _ in retries]
            plan = retries + [(d, d.next_index, lesion.direction_crop(d), d.scale)
                              for d in lesion.active_directions(max_slices) if d not in waiting]
        if on_report is not None:
            on_report(lesion.finish(max_slices))


def _choose_scale(lesion: _Lesion, plan, picks, rule: ScaleRule) -> int:
    """Index in ``plan`` (the prompted slice at each scale tried) of the scale the lesion takes (sdseg.scale_search;
    a single scale: that one), recorded in its report."""
    candidates = []
    for (_, _, crop, scale), picked in zip(plan, picks):
        kept = lesion.kept_consensus(crop, picked)
        candidates.append(candidate(scale, picked, kept, any(lesion.border_contact(crop, kept))))
    chosen = choose_scale(candidates, rule) if len(plan) > 1 else 0
    rescales = chosen is not None and not candidates[chosen].touches_border  # a fill the directions can keep
    if chosen is None:  # no scale passes the rule: the recipe's scale, as the model gives it
        chosen = min(range(len(plan)), key=lambda n: abs(math.log(plan[n][3])))
    _, _, crop, scale = plan[chosen]
    plane = lesion.on_plane(crop, lesion.kept_consensus(crop, picks[chosen]))
    lesion.choose(scale, candidates if len(plan) > 1 else [], candidates[chosen].score,
                  plane if rescales else np.zeros_like(plane))
    return chosen
