"""Training augmentations (sdseg.data.augment) on real crops of a synthetic data set and on drawn shapes: geometric
ones move an image and its masks together, intensity ones the image only, every draw from the caller's generator."""

from __future__ import annotations

import pytest
import torch

from sdseg.data.augment import AUGMENTATIONS, ZOOM_RANGE, augment_batch, parse_augmentations
from sdseg.data.batches import InMemoryCrops
from sdseg.data.dataset import CropsDataset
from sdseg.data.synthetic import make_shapes_dataset


def _disc_batch(count: int = 64, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Off-centre discs of random radius: the image is +1 inside, -1 outside."""
    generator = torch.Generator().manual_seed(1)
    rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    centres = 6 + 20 * torch.rand(count, 2, generator=generator)
    radii = 3 + 4 * torch.rand(count, generator=generator)
    masks = ((rows - centres[:, 0, None, None]) ** 2 + (cols - centres[:, 1, None, None]) ** 2
             <= radii[:, None, None] ** 2)[:, None]
    return masks.float() * 2 - 1, masks


def test_parse_augmentations_keeps_the_documented_order_and_refuses_unknown_names():
    assert parse_augmentations("scale, flip") == ["flip", "scale"]
    assert parse_augmentations("none") == []
    assert parse_augmentations(",".join(reversed(AUGMENTATIONS))) == list(AUGMENTATIONS)
    for text in ("rotate", "flip,elastic", ""):
        with pytest.raises(ValueError, match="give a subset of flip,transpose,scale,intensity"):
            parse_augmentations(text)


def test_geometric_augmentations_move_the_image_and_every_mask_together():
    images, masks = _disc_batch()
    neighbours = masks.repeat(1, 2, 1, 1)
    moved, (moved_masks, moved_neighbours) = augment_batch(images, [masks, neighbours],
                                                           torch.Generator().manual_seed(0),
                                                           ("flip", "transpose", "scale"))
    assert moved_masks.dtype == torch.bool and moved_masks.shape == masks.shape
    assert torch.equal(moved_neighbours, moved_masks.repeat(1, 2, 1, 1))
    agreement = ((moved >= 0) == moved_masks).float().mean()
    assert agreement > 0.999  # the image was 2 x mask - 1: it still marks the same pixels
    area_ratio = moved_masks.sum((1, 2, 3)).float() / masks.sum((1, 2, 3)).float()
    changed = (area_ratio - 1).abs() > 0.08
    assert 0.2 < changed.float().mean() < 0.8  # zoomed with probability 1/2
    assert ((area_ratio > ZOOM_RANGE[0] ** 2 * 0.85) & (area_ratio < ZOOM_RANGE[1] ** 2 * 1.15)).all()
    assert not torch.equal(moved_masks, masks)


def test_flip_alone_mirrors_without_changing_areas_and_the_same_seed_gives_the_same_batch():
    images, masks = _disc_batch()
    first = augment_batch(images, [masks], torch.Generator().manual_seed(4), ("flip",))
    again = augment_batch(images, [masks], torch.Generator().manual_seed(4), ("flip",))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1][0], again[1][0])
    assert torch.equal(first[1][0].sum((1, 2, 3)), masks.sum((1, 2, 3)))
    unchanged = augment_batch(images, [masks], torch.Generator().manual_seed(4), ())
    assert torch.equal(unchanged[0], images) and torch.equal(unchanged[1][0], masks)


def test_intensity_changes_the_image_only_within_the_documented_range(tmp_path):
    data = make_shapes_dataset(tmp_path / "shapes", 32, 2, 2, image_size=32, n_raters=2, seed=0)
    crops = InMemoryCrops(CropsDataset(data, "train"), torch.device("cpu"))
    indices = list(range(len(crops)))
    plain, plain_mask = crops.batch(indices, torch.Generator().manual_seed(2), ())
    bright, bright_mask = crops.batch(indices, torch.Generator().manual_seed(2), ("intensity",))
    assert torch.equal(plain_mask, bright_mask)  # the same rater drawn, no geometric change
    assert bright.min() >= -1 and bright.max() <= 1
    changed = (bright - plain).abs().amax((1, 2, 3)) > 1e-6
    assert 0.2 < changed.float().mean() < 0.8
    # gamma, contrast and brightness are monotonic: brighter stays brighter (no inverted contrast)
    ramp = torch.linspace(-1, 1, 32).expand(40, 1, 32, 32)
    out, _ = augment_batch(ramp, [], torch.Generator().manual_seed(3), ("intensity",))
    assert (out.diff(dim=-1) >= 0).all() and (out[:, 0, 0, -1] > out[:, 0, 0, 0]).all()
