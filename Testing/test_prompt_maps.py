"""Prompt channels (sdseg.prompt_maps): the maps of a click and a box, their scaling from a crop to the model's size,
the prompts training draws from the ground truth (objects and lesion-free crops), the click evaluation gives, and
the most interior point of a mask (sdseg.masks.interior_point)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sdseg.inference import ModelMismatchError, check_model_fits_volume
from sdseg.masks import interior_point, interior_points
from sdseg.prompt_maps import (NEGATIVE_PROMPT_ODDS, OBJECT_PROMPT_ODDS, OFF_OBJECT_CLICK_ODDS,
                               OFF_OBJECT_MARGIN_FRACTION, PREVIOUS_UNKNOWN_ODDS, PROMPT_CHANNELS,
                               PROPAGATION_CLICK_ODDS, CropPrompt, crop_prompt_maps, data_channels, object_click,
                               prompt_channels_of, prompt_maps, training_prompts)

NAN = float("nan")


def test_a_click_is_a_gaussian_at_the_point_and_a_box_its_inside():
    maps = prompt_maps(torch.tensor([[5.0, 9.0], [NAN, NAN]]), torch.tensor([[2.0, 6.0, 3.0, 12.0], [NAN] * 4]), 16,
                       ("point", "box"))
    assert maps.shape == (2, 2, 16, 16)
    point, box = maps[0]
    assert divmod(int(point.argmax()), 16) == (5, 9) and point.max() == 1.0
    assert point[5, 11] == pytest.approx(np.exp(-4 / (2 * 0.5 ** 2)), rel=1e-5)  # sigma = 16 / 32 = 0.5 px
    assert torch.equal(box.nonzero()[:, 0].unique(), torch.arange(2, 6))  # rows 2..5: centres inside (2, 6)
    assert torch.equal(box.nonzero()[:, 1].unique(), torch.arange(3, 12))
    assert not maps[1].any(), "no prompt: all zero"
    only_box = prompt_maps(torch.tensor([[5.0, 9.0]]), torch.tensor([[2.0, 6.0, 3.0, 12.0]]), 16, ("box",))
    assert only_box.shape == (1, 1, 16, 16) and torch.equal(only_box[0, 0], box)


def test_crop_prompts_are_scaled_to_the_model_size_by_pixel_centres():
    prompt = CropPrompt(point=(19.5, 0.0), box=(0.0, 40.0, 10.0, 30.0)).scaled((40, 80), 16)
    assert prompt.point == pytest.approx(((19.5 + 0.5) * 0.4 - 0.5, 0.5 * 0.2 - 0.5))
    assert prompt.box == pytest.approx((0.0, 16.0, 2.0, 6.0))
    maps = crop_prompt_maps([CropPrompt(point=(39.0, 39.0)), None], [(40, 40), (10, 10)], 8, ("point",), "cpu")
    assert divmod(int(maps[0, 0].argmax()), 8) == (7, 7) and not maps[1].any()


def test_the_previous_slice_mask_is_plus_one_inside_minus_one_outside_zero_unknown():
    previous = torch.full((2, 16, 16), -1.0)
    previous[0, 4:8, 4:8] = 1.0
    previous[1] = 0.0
    maps = prompt_maps(torch.full((2, 2), NAN), torch.full((2, 4), NAN), 16, PROMPT_CHANNELS, previous)
    assert maps.shape == (2, 3, 16, 16) and torch.equal(maps[:, 2], previous) and not maps[:, :2].any()
    unknown = prompt_maps(torch.full((1, 2), NAN), torch.full((1, 4), NAN), 16, PROMPT_CHANNELS)
    assert not unknown.any()
    mask = np.zeros((40, 40), dtype=bool)
    mask[10:30, 20:40] = True  # a crop's previous-slice mask, resized to the model's 8 x 8
    maps = crop_prompt_maps([None, None], [(40, 40), (40, 40)], 8, PROMPT_CHANNELS, "cpu", [mask, None])
    expected = -torch.ones(8, 8)
    expected[2:6, 4:8] = 1.0
    assert torch.equal(maps[0, 2], expected) and not maps[1].any()


def test_prompt_channels_are_validated_and_counted_after_the_image():
    config = {"image_channels": 3, "prompt_channels": ["point", "box"], "image_size": 32,
              "preprocessing": {"normalization": "percentile", "percentiles": [0.5, 99.5]}}
    assert prompt_channels_of(config) == ("point", "box") and data_channels(config) == 1
    check_model_fits_volume(config)  # one image channel + two prompt channels: fits a scalar volume
    assert prompt_channels_of({"image_channels": 1}) == () and data_channels({"image_channels": 1}) == 1
    for wrong in (["box", "point"], ["scribble"]):
        with pytest.raises(ValueError, match="must be a subset"):
            prompt_channels_of({"prompt_channels": wrong})
        with pytest.raises(ModelMismatchError, match="must be a subset"):
            check_model_fits_volume({**config, "prompt_channels": wrong})


def _batch_with_objects(batch: int = 400, size: int = 24):
    """Items 0, 2, 4, ...: an object (raters 0 and 1 a rectangle, rater 2 a smaller one); odd items: none."""
    raters = torch.zeros(batch, 3, size, size, dtype=torch.bool)
    raters[0::2, :2, 6:14, 4:18] = True
    raters[0::2, 2, 8:12, 6:12] = True
    return raters


def test_training_prompts_come_from_the_ground_truth():
    raters = _batch_with_objects()
    points, boxes, previous, off_object = training_prompts(raters, torch.Generator().manual_seed(0))
    assert previous is None
    objects, negatives = slice(0, None, 2), slice(1, None, 2)
    clicked, boxed = ~points[:, 0].isnan(), ~boxes[:, 0].isnan()
    # a crop showing the object: clicks inside the raters' majority (the border of it included, +-1 px jitter)
    object_points = points[objects][clicked[objects] & ~off_object[objects]]
    assert ((object_points[:, 0] >= 5) & (object_points[:, 0] <= 14) & (object_points[:, 1] >= 3)
            & (object_points[:, 1] <= 18)).all()
    # boxes hold the union of the raters, with at most BOX_MARGIN_MAX of its extent more on each side
    object_boxes = boxes[objects][boxed[objects]]
    assert (object_boxes[:, 0] <= 6).all() and (object_boxes[:, 1] >= 14).all()
    assert (object_boxes[:, 0] >= 6 - 0.25 * 8).all() and (object_boxes[:, 3] <= 18 + 0.25 * 14).all()
    # the odds: roughly as declared, over 200 object crops and 200 lesion-free crops
    on_object = ~off_object & (torch.arange(len(raters)) % 2 == 0)  # object crops clicked on (or near) the object
    expected_click = OBJECT_PROMPT_ODDS["point"] + OBJECT_PROMPT_ODDS["both"]
    assert abs(clicked[on_object].float().mean() - expected_click) < 0.1
    assert abs((~clicked[on_object] & ~boxed[on_object]).float().mean() - OBJECT_PROMPT_ODDS["none"]) < 0.08
    assert abs(clicked[negatives].float().mean() - NEGATIVE_PROMPT_ODDS["point"]) < 0.1
    assert abs(boxed[negatives].float().mean() - NEGATIVE_PROMPT_ODDS["box"]) < 0.08
    negative_points = points[negatives][clicked[negatives]]
    assert negative_points[:, 0].std() > 4, "clicks on lesion-free crops fall anywhere"
    again = training_prompts(raters, torch.Generator().manual_seed(0))
    assert torch.equal(again[0].nan_to_num(-1), points.nan_to_num(-1))
    assert torch.equal(again[1].nan_to_num(-1), boxes.nan_to_num(-1))


def test_some_object_crops_are_clicked_off_the_object_and_their_training_mask_is_empty():
    """A click on healthy tissue beside a visible lesion must give an empty answer: training clicks some object
    crops at least OFF_OBJECT_MARGIN_FRACTION x S from the raters' union, without a box, and the batch's mask of
    those crops is empty."""
    size = 32
    raters = _batch_with_objects(size=size)
    raters[2, :, :, :] = True  # an object that fills its crop: no room for a click off it
    prompts = training_prompts(raters, torch.Generator().manual_seed(5))
    objects = raters.flatten(1).any(1)
    assert not prompts.off_object[~objects].any() and not prompts.off_object[2]
    share = prompts.off_object[objects].float().mean()
    assert abs(share - OFF_OBJECT_CLICK_ODDS) < 0.06, share
    margin = OFF_OBJECT_MARGIN_FRACTION * size
    for index in torch.nonzero(prompts.off_object).flatten().tolist():
        row, column = prompts.points[index].tolist()
        rows, columns = torch.nonzero(raters[index].any(0), as_tuple=True)
        nearest = torch.maximum((rows - row).abs(), (columns - column).abs()).min()
        assert nearest > margin - 0.5, (index, row, column)
        assert prompts.boxes[index].isnan().all()


def test_the_evaluation_click_is_inside_the_majority_even_for_a_ring():
    raters = np.zeros((3, 32, 32), dtype=bool)
    yy, xx = np.mgrid[:32, :32]
    ring = ((yy - 16) ** 2 + (xx - 16) ** 2 <= 12 ** 2) & ((yy - 16) ** 2 + (xx - 16) ** 2 >= 6 ** 2)
    raters[0], raters[1] = ring, ring
    raters[2, 2:5, 2:5] = True  # one rater elsewhere: not the majority
    click = object_click(raters)
    row, column = click.point
    assert ring[int(row), int(column)], "the centroid of a ring is outside it; the click must not be"
    assert object_click(np.zeros((2, 8, 8), dtype=bool)) is None
    assert interior_point(np.zeros((4, 4), dtype=bool)) is None
    square = np.zeros((9, 9), dtype=bool)
    square[2:7, 1:6] = True
    assert interior_point(square) == (4.0, 3.0)


def test_interior_points_of_a_batch_match_one_by_one_and_empty_masks_give_nan():
    masks = torch.zeros(3, 20, 20, dtype=torch.bool)
    masks[0, 2:9, 3:15] = True
    masks[1, 5:18, 5:8] = True
    masks[1, 15:18, 5:19] = True  # an L
    points = interior_points(masks)
    for index in range(2):
        assert tuple(points[index].tolist()) == interior_point(masks[index].numpy())
        row, column = points[index].long().tolist()
        assert masks[index, row, column]
    assert points[2].isnan().all()


def test_the_propagation_click_comes_from_the_neighbouring_slices_mask():
    """Where a neighbouring slice shows the object, training sometimes clicks at that mask's interior, as the
    propagation does: often on crops where the object has ended (their answer is empty), less on crops that show
    it; no box then."""
    raters = _batch_with_objects(size=24)
    neighbours = torch.zeros(400, 2, 24, 24, dtype=torch.bool)
    neighbours[:, 1, 14:22, 14:22] = True  # the slice after: an object at rows/columns 14..21 (interior 17.5)
    neighbours[::4] = False  # a quarter of the crops have no neighbour object
    points, boxes, _, off_object = training_prompts(raters, torch.Generator().manual_seed(1), neighbours)
    at_neighbour = (points - torch.tensor([17.5, 17.5])).abs().max(1).values <= 1.5
    with_neighbour = torch.ones(400, dtype=torch.bool)
    with_neighbour[::4] = False
    objects = torch.zeros(400, dtype=torch.bool)
    objects[::2] = True
    negatives = ~objects
    assert not at_neighbour[~with_neighbour & negatives].float().mean() > 0.05  # only where a neighbour shows it
    share_negative = at_neighbour[with_neighbour & negatives].float().mean()
    share_object = at_neighbour[with_neighbour & objects].float().mean()
    assert abs(share_negative - PROPAGATION_CLICK_ODDS["negative"]) < 0.12, share_negative
    assert abs(share_object - PROPAGATION_CLICK_ODDS["object"]) < 0.12, share_object
    assert boxes[at_neighbour].isnan().all()
    without = training_prompts(raters, torch.Generator().manual_seed(1))
    unchanged = ~at_neighbour & ~off_object & ~without.off_object  # off-object clicks are drawn after these
    assert torch.equal(points[unchanged].nan_to_num(-1), without[0][unchanged].nan_to_num(-1))


def test_training_gives_the_neighbour_the_click_came_from_as_previous_mask_or_unknown():
    raters = _batch_with_objects(size=24)
    neighbours = torch.zeros(400, 2, 24, 24, dtype=torch.bool)
    neighbours[:, 0, 2:6, 2:6] = True  # the slice before: a small object
    neighbours[:, 1, 14:22, 14:22] = True  # the slice after: another
    has_neighbours = torch.ones(400, dtype=torch.bool)
    has_neighbours[::5] = False  # crops without neighbours (2D sources, lesion-free crops): always unknown
    plain = training_prompts(raters, torch.Generator().manual_seed(3), neighbours)
    points, boxes, previous, off_object = training_prompts(raters, torch.Generator().manual_seed(3), neighbours, True,
                                                           has_neighbours)
    assert torch.equal(points.nan_to_num(-1), plain.points.nan_to_num(-1))  # its draws come after the others'
    assert torch.equal(boxes.nan_to_num(-1), plain.boxes.nan_to_num(-1))
    unknown = ~previous.flatten(1).any(1)
    assert unknown[~has_neighbours].all()
    assert unknown[off_object].all()  # a click off the object: the previous slice is no guide
    assert abs(unknown[has_neighbours & ~off_object].float().mean() - PREVIOUS_UNKNOWN_ODDS) < 0.08
    known = ~unknown
    before = known & (previous[:, 3, 3] == 1)
    after = known & (previous[:, 17, 17] == 1)
    assert torch.equal(before | after, known) and not (before & after).any()  # one neighbour, +1 in, -1 out
    assert set(previous[known].unique().tolist()) == {-1.0, 1.0}
    assert 0.3 < before[known].float().mean() < 0.7  # either neighbour
    clicked_before = (points - torch.tensor([3.5, 3.5])).abs().max(1).values <= 1.5
    clicked_after = (points - torch.tensor([17.5, 17.5])).abs().max(1).values <= 1.5
    assert before[known & clicked_before].all() and after[known & clicked_after].all()  # the click's own slice
