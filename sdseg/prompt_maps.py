"""Prompt channels: the user's click and box given to a model as extra input channels after the image, as in
promptable segmentation models (SAM, Kirillov et al. 2023; nnInteractive, Isensee et al. 2025), so that the task
becomes "the object at this prompt" and a prompt on healthy tissue can be answered with an empty mask.

A model takes prompts when its config lists ``prompt_channels`` (a subset of :data:`PROMPT_CHANNELS`, in that
order); its ``image_channels`` then count them after the image's own channels. The channels of one image (S x S):

- ``point``: a Gaussian heat map exp(-d^2 / (2 sigma^2)), sigma = :data:`POINT_SIGMA_FRACTION` x S, around the
  click; all zero without a click.
- ``box``: 1 inside the box, 0 outside; all zero without a box.
- ``previous``: the mask of the slice the propagation comes from, +1 inside, -1 outside, all zero when unknown (the
  prompted slice, a 2D image). The propagation gives sample n of a slice sample n of the previous slice, so that
  sample n is one 3D hypothesis (sdseg.propagation); training gives the raters' union on a neighbouring slice,
  unknown with :data:`PREVIOUS_UNKNOWN_ODDS` (:func:`training_prompts`).

Training draws the prompts from the ground truth (:func:`training_prompts`); inference converts the user's prompt
into crop pixel coordinates (:class:`CropPrompt`) and the maps are drawn at the model's size the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from sdseg.choices import PROMPT_CHANNELS
from sdseg.masks import dilate, interior_point, interior_points
from sdseg.preprocessing import resize_images

POINT_SIGMA_FRACTION = 1.0 / 32.0  # 2 pixels at 64 x 64
# How training prompts are drawn for a crop that shows the object: no prompt, a click, a box, or both.
OBJECT_PROMPT_ODDS = {"none": 0.15, "point": 0.45, "box": 0.2, "both": 0.2}
BORDER_CLICK_ODDS = 0.2  # a click on the object's border instead of anywhere inside it
CLICK_JITTER_PIXELS = 1.0  # uniform +- jitter of a click
BOX_MARGIN_MAX = 0.25  # each side of a training box is moved out by up to this fraction of the object's extent
# A crop without the object (a negative): a click or box on healthy tissue (the answer must be empty), else nothing.
NEGATIVE_PROMPT_ODDS = {"none": 0.4, "point": 0.45, "box": 0.15}
# The propagation's click: when the slice before or after shows the object, the click it gives the next slice (the
# most interior point of that slice's mask) replaces the prompt above with these odds, on crops that show the object
# (it is still there) and on crops that do not (the object ended: the answer must be empty).
PROPAGATION_CLICK_ODDS = {"object": 0.25, "negative": 0.6}
# A click off the object on a crop that shows it (healthy tissue beside a lesion, the lesion in view): with these odds
# a crop's prompt becomes one click at least OFF_OBJECT_MARGIN_FRACTION x S away from the raters' union, and its
# training mask becomes empty, so that the answer follows the click, not whatever lesion the crop shows.
OFF_OBJECT_CLICK_ODDS = 0.15
OFF_OBJECT_MARGIN_FRACTION = 1.0 / 16.0  # 4 pixels at 64 x 64
# The previous slice's mask is given as unknown (as on the prompted slice) with these odds; otherwise it is the
# neighbour the propagation's click came from (else a random neighbour). Crops without neighbours: always unknown.
PREVIOUS_UNKNOWN_ODDS = 0.3


def prompt_channels_of(config: dict) -> tuple[str, ...]:
    """The prompt channels a model takes (empty for a model without prompts); ValueError for unknown ones."""
    channels = tuple(config.get("prompt_channels") or ())
    if list(channels) != [c for c in PROMPT_CHANNELS if c in channels]:
        raise ValueError(f"prompt_channels {list(channels)} must be a subset of {list(PROMPT_CHANNELS)}, in that order")
    return channels


def takes_previous_masks(config: dict) -> bool:
    """Whether a model conditions a slice on the previous slice's mask (the ``previous`` channel), so that the
    propagation draws samples that are 3D hypotheses."""
    return "previous" in prompt_channels_of(config)


def data_channels(config: dict) -> int:
    """The image channels of a model's input that come from the image (its ``image_channels`` less its prompts)."""
    return int(config.get("image_channels", 1)) - len(prompt_channels_of(config))


@dataclass(frozen=True)
class CropPrompt:
    """A prompt in the pixel coordinates of one crop (rows, columns; pixel n covers [n - 0.5, n + 0.5)): a click
    ``point`` (row, column) and/or a ``box`` (row0, row1, column0, column1), pixel edges, end exclusive."""
    point: tuple[float, float] | None = None
    box: tuple[float, float, float, float] | None = None

    def scaled(self, shape: tuple[int, int], size: int) -> "CropPrompt":
        """The prompt in the pixels of the crop resized from ``shape`` to ``size`` x ``size``."""
        fr, fc = size / shape[0], size / shape[1]
        point = None if self.point is None else ((self.point[0] + 0.5) * fr - 0.5, (self.point[1] + 0.5) * fc - 0.5)
        box = None if self.box is None else (self.box[0] * fr, self.box[1] * fr, self.box[2] * fc, self.box[3] * fc)
        return CropPrompt(point, box)


def prompt_maps(points: torch.Tensor, boxes: torch.Tensor, size: int, channels,
                previous: torch.Tensor | None = None) -> torch.Tensor:
    """(B, len(channels), size, size) float32 maps of ``points`` (B, 2) rows/columns and ``boxes`` (B, 4) row0,
    row1, column0, column1, both in pixel coordinates of the size x size image; a NaN row means no prompt;
    ``previous`` (B, size, size) float32 in {-1, 0, 1} (None: unknown everywhere)."""
    device = points.device
    grid = torch.arange(size, device=device, dtype=torch.float32)
    maps = []
    for channel in channels:
        if channel == "point":
            sigma = POINT_SIGMA_FRACTION * size
            rows = (grid[None, :] - points[:, :1]) ** 2
            columns = (grid[None, :] - points[:, 1:]) ** 2
            heat = torch.exp(-(rows[:, :, None] + columns[:, None, :]) / (2 * sigma * sigma))
            maps.append(torch.nan_to_num(heat, nan=0.0))
        elif channel == "box":
            centres = grid + 0.5  # a pixel is inside when its centre is
            inside_rows = (centres[None, :] > boxes[:, :1]) & (centres[None, :] < boxes[:, 1:2])
            inside_columns = (centres[None, :] > boxes[:, 2:3]) & (centres[None, :] < boxes[:, 3:])
            maps.append((inside_rows[:, :, None] & inside_columns[:, None, :]).float())
        elif channel == "previous":
            maps.append(torch.zeros(points.shape[0], size, size, device=device) if previous is None
                        else previous.to(device=device, dtype=torch.float32))
        else:
            raise ValueError(f"unknown prompt channel {channel!r}; known: {', '.join(PROMPT_CHANNELS)}")
    return torch.stack(maps, dim=1)


def previous_map(mask: np.ndarray | None, size: int) -> torch.Tensor:
    """(size, size) float32 "previous" map of a crop's previous-slice mask (A, B) bool: resized as the training
    crops' neighbours were (bilinear, antialiased, >= 0.5: sdseg.data.preprocess.roi_crops), +1 inside, -1 outside;
    None: unknown (zeros)."""
    if mask is None:
        return torch.zeros(size, size)
    resized = resize_images(torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None], size)[0, 0]
    return (resized >= 0.5).float() * 2.0 - 1.0


def crop_prompt_maps(prompts: list[CropPrompt | None], shapes: list[tuple[int, int]], size: int, channels,
                     device, previous: list[np.ndarray | None] | None = None) -> torch.Tensor:
    """The maps of inference crops: ``prompts[b]`` is in the pixels of a crop of ``shapes[b]`` (None: no prompt);
    ``previous[b]``: the previous slice's mask in the same pixels (None, or no list: unknown)."""
    nan = float("nan")
    points, boxes = [], []
    for prompt, shape in zip(prompts, shapes):
        prompt = prompt.scaled(shape, size) if prompt is not None else CropPrompt()
        points.append(prompt.point if prompt.point is not None else (nan, nan))
        boxes.append(prompt.box if prompt.box is not None else (nan,) * 4)
    previous_maps = None
    if previous is not None and "previous" in channels:
        previous_maps = torch.stack([previous_map(mask, size) for mask in previous])
    return prompt_maps(torch.tensor(points, dtype=torch.float32, device=device),
                       torch.tensor(boxes, dtype=torch.float32, device=device), size, channels, previous_maps)


def object_click(raters: np.ndarray) -> CropPrompt | None:
    """The click a user would give a crop whose raters' masks are ``raters`` (R, S, S) bool: the most interior point
    of their majority (else of their union); None when no rater marks anything (evaluation, training figures)."""
    majority = raters.sum(0) * 2 >= max(1, int(raters.reshape(len(raters), -1).any(1).sum()))
    majority &= raters.any(0)
    point = interior_point(majority if majority.any() else raters.any(0))
    return None if point is None else CropPrompt(point=point)


def _choose(odds: dict, uniform: torch.Tensor) -> list[str]:
    names, cumulative = list(odds), torch.cumsum(torch.tensor(list(odds.values())), 0)
    return [names[min(int(torch.searchsorted(cumulative, u, right=True)), len(names) - 1)] for u in uniform]


def _border(masks: torch.Tensor) -> torch.Tensor:
    """Pixels of ``masks`` (B, S, S) bool with a 4-neighbour outside them."""
    outside = torch.nn.functional.pad((~masks).float()[:, None], (1, 1, 1, 1), value=1.0)
    neighbours = torch.nn.functional.max_pool2d(outside, 3, stride=1)[:, 0] > 0  # 8-neighbourhood; fine here
    return masks & neighbours


def _random_pixel(candidates: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """(B, 2) row, column of a uniformly random pixel of each ``candidates`` (B, S, S) (any pixel when none)."""
    size = candidates.shape[-1]
    weighted = torch.where(candidates.flatten(1).any(1, keepdim=True), candidates.flatten(1).float(), 1.0) * scores
    flat = weighted.argmax(1)
    return torch.stack([flat // size, flat % size], 1).float()


class TrainingPrompts(NamedTuple):
    points: torch.Tensor  # (B, 2) rows, columns; NaN rows: no click
    boxes: torch.Tensor  # (B, 4) row0, row1, column0, column1; NaN rows: no box
    previous: torch.Tensor | None  # (B, S, S) in {-1, 0, 1}: the "previous" maps (None: not asked for)
    off_object: torch.Tensor  # (B,) bool: the click is off the object, the training mask must be empty


def training_prompts(raters: torch.Tensor, generator: torch.Generator, neighbours: torch.Tensor | None = None,
                     with_previous: bool = False, has_neighbours: torch.Tensor | None = None) -> TrainingPrompts:
    """Prompts drawn from the ground truth of a training batch: ``raters`` (B, R, S, S) bool, every rater's mask
    (padding raters empty); ``neighbours`` (B, 2, S, S) bool, the raters' union on the slices before and after
    (None: unknown; ``has_neighbours`` (B,) bool: which items have them, default all). Returns the points (B, 2)
    and boxes (B, 4) with NaN rows for "no prompt", on the masks' device, and with ``with_previous`` the "previous"
    maps (unknown with :data:`PREVIOUS_UNKNOWN_ODDS`, else the neighbour the propagation's click came from, else a
    random one; unknown without neighbours).
    A crop showing the object gets, as :data:`OBJECT_PROMPT_ODDS` say, no prompt, a click (a random pixel of the
    raters' majority, else of their union; with :data:`BORDER_CLICK_ODDS` one on its border; jittered by up to
    :data:`CLICK_JITTER_PIXELS`), a box (the union's bounding box, each side moved out by up to
    :data:`BOX_MARGIN_MAX` of its extent) or both. A crop without it gets a click or box anywhere, or nothing
    (:data:`NEGATIVE_PROMPT_ODDS`). Where a neighbour shows the object, the propagation's click (the most
    interior point of a random such neighbour, jittered) replaces that prompt as :data:`PROPAGATION_CLICK_ODDS`
    say. Every random draw comes from ``generator`` (CPU); the previous maps' draws come last, so asking for them
    leaves the other prompts as they were. With :data:`OFF_OBJECT_CLICK_ODDS`, a crop showing the object instead gets
    one click on a random pixel at least :data:`OFF_OBJECT_MARGIN_FRACTION` x S from the raters' union (no box, the
    previous map unknown) and ``off_object`` True: the caller empties that crop's training mask."""
    batch, _, size, _ = raters.shape
    device = raters.device
    union = raters.any(1)
    counts = raters.flatten(2).any(2).sum(1).clamp(min=1)
    majority = raters.sum(1) * 2 >= counts[:, None, None]
    majority &= union
    has_object = union.flatten(1).any(1).cpu()
    kinds = _choose(OBJECT_PROMPT_ODDS, torch.rand(batch, generator=generator))
    negative_kinds = _choose(NEGATIVE_PROMPT_ODDS, torch.rand(batch, generator=generator))
    on_border = (torch.rand(batch, generator=generator) < BORDER_CLICK_ODDS).to(device)
    scores = torch.rand(batch, size * size, generator=generator).to(device)
    jitter = ((torch.rand(batch, 2, generator=generator) * 2 - 1) * CLICK_JITTER_PIXELS).to(device)
    margins = torch.rand(batch, 4, generator=generator).to(device) * BOX_MARGIN_MAX
    corners = (torch.rand(batch, 4, generator=generator) * size).to(device)

    inside = torch.where(majority.flatten(1).any(1)[:, None, None], majority, union)
    border = _border(inside)
    candidates = torch.where(on_border[:, None, None] & border.flatten(1).any(1)[:, None, None], border, inside)
    points = (_random_pixel(candidates, scores) + jitter).clamp(0, size - 1)

    rows, columns = union.any(2), union.any(1)
    first_row, last_row = rows.float().argmax(1), size - 1 - rows.flip(1).float().argmax(1)
    first_column, last_column = columns.float().argmax(1), size - 1 - columns.flip(1).float().argmax(1)
    height, width = (last_row - first_row + 1).float(), (last_column - first_column + 1).float()
    boxes = torch.stack([first_row - margins[:, 0] * height, last_row + 1 + margins[:, 1] * height,
                         first_column - margins[:, 2] * width, last_column + 1 + margins[:, 3] * width], 1)
    boxes = boxes.clamp(0, size)
    random_boxes = torch.stack([corners[:, :2].min(1).values, corners[:, :2].max(1).values + 1,
                                corners[:, 2:].min(1).values, corners[:, 2:].max(1).values + 1], 1).clamp(0, size)

    chosen = [kind if has_object[b] else negative for b, (kind, negative) in enumerate(zip(kinds, negative_kinds))]
    want_point = torch.tensor([kind in ("point", "both") for kind in chosen], device=device)
    want_box = torch.tensor([kind in ("box", "both") for kind in chosen], device=device)
    has_object = has_object.to(device)
    nan = torch.tensor(float("nan"), device=device)
    points = torch.where(want_point[:, None], points, nan)
    boxes = torch.where(want_box[:, None], torch.where(has_object[:, None], boxes, random_boxes), nan)
    if neighbours is not None:
        points, boxes, clicked_first, clicked = _with_propagation_clicks(points, boxes, has_object, neighbours,
                                                                         generator)
    points, boxes, off_object = _with_off_object_clicks(points, boxes, union, generator)
    if not with_previous:
        return TrainingPrompts(points, boxes, None, off_object)
    if neighbours is None:
        return TrainingPrompts(points, boxes, torch.zeros(batch, size, size, device=device), off_object)
    known = torch.rand(batch, generator=generator).to(device) >= PREVIOUS_UNKNOWN_ODDS
    if has_neighbours is not None:
        known &= has_neighbours.to(device)
    first = torch.where(clicked, clicked_first, (torch.rand(batch, generator=generator) < 0.5).to(device))
    chosen = torch.where(first[:, None, None], neighbours[:, 0], neighbours[:, 1])
    known &= ~off_object
    previous = torch.where(known[:, None, None], chosen.float() * 2.0 - 1.0, 0.0)
    return TrainingPrompts(points, boxes, previous, off_object)


def _with_off_object_clicks(points, boxes, union, generator):
    """``points``, ``boxes`` with an off-object click (see :func:`training_prompts`) where one is drawn and the crop
    has room for it, and which crops got one."""
    batch, size, device = union.shape[0], union.shape[-1], union.device
    drawn = (torch.rand(batch, generator=generator) < OFF_OBJECT_CLICK_ODDS).to(device)
    scores = torch.rand(batch, size * size, generator=generator).to(device)
    margin = max(1, round(OFF_OBJECT_MARGIN_FRACTION * size))
    near = dilate(union, margin)
    room = (~near).flatten(1).any(1)
    off_object = drawn & union.flatten(1).any(1) & room
    clicks = _random_pixel(~near, scores)
    nan = torch.tensor(float("nan"), device=device)
    return (torch.where(off_object[:, None], clicks, points), torch.where(off_object[:, None], nan, boxes),
            off_object)


def _with_propagation_clicks(points, boxes, has_object, neighbours, generator):
    """``points``, ``boxes`` with the propagation's click (see :func:`training_prompts`) where it is drawn, and
    which neighbour each click came from (True: the first) and where one was given."""
    batch, size, device = neighbours.shape[0], neighbours.shape[-1], neighbours.device
    odds = torch.where(has_object, PROPAGATION_CLICK_ODDS["object"], PROPAGATION_CLICK_ODDS["negative"])
    drawn = torch.rand(batch, generator=generator).to(device) < odds
    first = (torch.rand(batch, generator=generator) < 0.5).to(device)
    jitter = ((torch.rand(batch, 2, generator=generator) * 2 - 1) * CLICK_JITTER_PIXELS).to(device)
    present = neighbours.flatten(2).any(2)
    use_first = present[:, 0] & (first | ~present[:, 1])
    chosen = torch.where(use_first[:, None, None], neighbours[:, 0], neighbours[:, 1])
    replace = drawn & present.any(1)
    clicks = (interior_points(chosen) + jitter).clamp(0, size - 1)
    nan = torch.tensor(float("nan"), device=device)
    return (torch.where(replace[:, None], clicks, points), torch.where(replace[:, None], nan, boxes), use_first,
            replace)
