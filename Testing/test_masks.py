"""sdseg.masks' shifted-maxima neighbourhood gives the same components, relative-area filter and interior points as
the max-pool formulation it replaced, and the same relative-area filter as SimpleITK's connected components."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from sdseg.masks import connected_components, dilate, neighbourhood_max, relative_area_filter


def random_masks(count: int, height: int, width: int, seed: int) -> torch.Tensor:
    """Blobs of several sizes: smoothed noise above a threshold."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(count, 1, height, width, generator=generator)
    return F.avg_pool2d(noise, 5, 1, 2)[:, 0] > 0.2


def max_pool_components(masks: torch.Tensor) -> torch.Tensor:
    """The max-pool label propagation sdseg.masks used before (float32 ids)."""
    shape = masks.shape
    fg = masks.reshape(-1, 1, shape[-2], shape[-1]).float()
    labels = torch.arange(1, shape[-2] * shape[-1] + 1, dtype=torch.float32).reshape(1, 1, *shape[-2:]) * fg
    while True:
        grown = F.max_pool2d(labels, 3, 1, 1) * fg
        if torch.equal(grown, labels):
            return labels.to(torch.int64).reshape(shape)
        labels = grown


def sitk_relative_area_filter(mask: np.ndarray, r: float) -> np.ndarray:
    components = sitk.GetArrayFromImage(sitk.ConnectedComponent(sitk.GetImageFromArray(mask.astype(np.uint8)), True))
    areas = np.bincount(components.ravel())
    areas[0] = 0
    return (components > 0) & (areas[components] >= r * areas.max()) if areas.max() else np.zeros_like(mask)


@pytest.mark.parametrize("shape, seed", [((16, 64, 64), 0), ((3, 37, 50), 1), ((2, 4, 1, 17), 2), ((5, 1, 9), 3)])
def test_components_are_those_of_the_max_pool_propagation(shape, seed):
    masks = random_masks(int(np.prod(shape[:-2])), *shape[-2:], seed).reshape(shape)
    assert torch.equal(connected_components(masks), max_pool_components(masks))


def test_neighbourhood_max_is_a_3x3_max_pool_for_non_negative_values():
    values = torch.randint(0, 1000, (4, 3, 23, 31), generator=torch.Generator().manual_seed(0)).float()
    assert torch.equal(neighbourhood_max(values), F.max_pool2d(values, 3, 1, 1))


@pytest.mark.parametrize("r", [0.0, 0.3, 0.5, 1.0])
def test_relative_area_filter_matches_simpleitk(r):
    masks = random_masks(16, 64, 64, seed=4)
    masks[3] = False  # an empty mask stays empty
    kept = relative_area_filter(masks, r).numpy()
    assert kept[3].sum() == 0 and masks.sum() > 0
    for mask, ours in zip(masks.numpy(), kept):
        np.testing.assert_array_equal(ours, sitk_relative_area_filter(mask, r))


def test_erosion_of_interior_points_is_the_max_pool_erosion():
    """interior_points erodes with -neighbourhood_max(-x); it used -max_pool2d(-pad(x)) (outside = background)."""
    current = random_masks(12, 40, 41, seed=5).float()[:, None]
    while current.any():
        eroded = -neighbourhood_max(-current)
        assert torch.equal(eroded, -F.max_pool2d(-F.pad(current, (1, 1, 1, 1)), kernel_size=3, stride=1))
        current = eroded


def test_dilate_grows_each_mask_by_a_square_of_the_radius_clipped_at_the_border():
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[0, 4, 4] = True
    masks[1, 0, 7] = True
    grown = dilate(masks, 2)
    expected = torch.zeros(2, 8, 8, dtype=torch.bool)
    expected[0, 2:7, 2:7] = True
    expected[1, 0:3, 5:8] = True
    assert grown.dtype == torch.bool and torch.equal(grown, expected)
