"""sdseg.data.synthetic (lesion-like multi-rater data) and sdseg.data.dataset (reading crops data sets): files
written, then read back with numpy/json independently and through CropsDataset; flips applied consistently."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sdseg.data.batches import InMemoryCrops
from sdseg.data.dataset import CropsDataset, DatasetError
from sdseg.data.synthetic import (FAINT_CONTRAST, gaussian_smooth, grow_or_shrink, lesion_contrasts, lesion_mask,
                                  make_shapes_dataset, rater_masks, render_image, SINGLE_LESION_RADII,
                                  single_lesion_crop)


def distance_to(mask: np.ndarray) -> np.ndarray:
    """Independent reference: the Euclidean distance of every pixel to the nearest pixel of ``mask`` (0 on it), by
    brute force."""
    points = np.argwhere(mask)
    grid = np.indices(mask.shape).reshape(2, -1).T
    return np.sqrt(((grid[:, None, :] - points[None, :, :]) ** 2).sum(-1)).min(1).reshape(mask.shape)


def disk_dilation_by_distances(mask: np.ndarray, radius: int) -> np.ndarray:
    """Independent reference: pixels within Euclidean distance ``radius`` of a foreground pixel."""
    return distance_to(mask) <= radius


def test_gaussian_smooth_of_a_point_is_the_normalised_gaussian():
    point = np.zeros((21, 21))
    point[10, 10] = 1.0
    smoothed = gaussian_smooth(point, 1.5)
    offsets = np.arange(-10, 11)
    expected_1d = np.where(np.abs(offsets) <= 5, np.exp(-0.5 * (offsets / 1.5) ** 2), 0.0)
    expected = np.outer(expected_1d, expected_1d) / expected_1d.sum() ** 2
    np.testing.assert_allclose(smoothed, expected, atol=1e-12)


@pytest.mark.parametrize("radius", [1, 2, 3])
def test_grow_and_shrink_are_disk_dilation_and_erosion(radius):
    rng = np.random.default_rng(radius)
    mask = gaussian_smooth(rng.random((24, 24)), 2.0) > 0.5
    mask[:, :3] = False  # keep the border clear so that erosion is not decided by the border convention
    np.testing.assert_array_equal(grow_or_shrink(mask, radius), disk_dilation_by_distances(mask, radius))
    np.testing.assert_array_equal(grow_or_shrink(mask, -radius), ~disk_dilation_by_distances(~mask, radius))


def test_lesion_mask_makes_separate_smooth_blobs():
    counts = []
    for seed in range(30):
        labels = lesion_mask(48, np.random.default_rng(seed))
        n = int(labels.max())
        counts.append(n)
        assert labels.dtype == np.int32 and labels.shape == (48, 48) and 1 <= n <= 3
        assert sorted(np.unique(labels)) == list(range(n + 1))
        for k in range(1, n + 1):
            lesion = labels == k
            assert lesion.sum() >= 4
            others = (labels > 0) & ~lesion
            assert not (grow_or_shrink(lesion, 1) & others).any(), "lesions must not touch"
    assert set(counts) == {1, 2, 3}
    np.testing.assert_array_equal(lesion_mask(48, np.random.default_rng(5)), lesion_mask(48, np.random.default_rng(5)))


def test_raters_differ_in_boundaries_and_only_some_mark_faint_lesions():
    rng = np.random.default_rng(0)
    labels = np.zeros((40, 40), dtype=np.int32)
    yy, xx = np.mgrid[:40, :40]
    labels[(yy - 12) ** 2 + (xx - 12) ** 2 <= 36] = 1  # clear lesion
    labels[(yy - 28) ** 2 + (xx - 28) ** 2 <= 25] = 2  # faint lesion
    contrasts = np.array([0.6, FAINT_CONTRAST / 2])
    faint_markers, outlines_differ = [], []
    for _ in range(20):
        masks = rater_masks(labels, 4, rng, contrasts)
        assert masks.shape == (4, 40, 40) and masks.dtype == np.uint8 and set(np.unique(masks)) <= {0, 1}
        for rater in masks.astype(bool):
            clear = rater & (grow_or_shrink(labels == 1, 4))
            assert (grow_or_shrink(labels == 1, -3) <= clear).all() and clear.sum() > 0
            assert (rater & ~grow_or_shrink(labels > 0, 4)).sum() == 0, "no mark far from the lesions"
        marks = [bool((m.astype(bool) & (labels == 2)).any()) for m in masks]
        faint_markers.append(sum(marks))
        clear_areas = [int((m.astype(bool) & grow_or_shrink(labels == 1, 4)).sum()) for m in masks]
        outlines_differ.append(len(set(clear_areas)) > 1)
    assert sum(outlines_differ) >= 15, "raters should differ in the clear lesion's outline"
    assert all(1 <= n <= 3 for n in faint_markers) and len(set(faint_markers)) > 1
    everyone = rater_masks(labels, 3, rng, contrasts=None)
    assert all((m.astype(bool) & (labels == 2)).any() for m in everyone), "without contrasts no lesion is faint"


def test_contrasts_have_one_sign_and_faint_ones_below_the_threshold():
    rng = np.random.default_rng(1)
    contrasts = np.concatenate([lesion_contrasts(3, rng) for _ in range(200)])
    faint = np.abs(contrasts) < FAINT_CONTRAST
    assert 0.15 < faint.mean() < 0.45 and (np.abs(contrasts) >= 0.1).all() and (np.abs(contrasts) < 0.8).all()
    assert all(len(set(np.sign(lesion_contrasts(3, rng)))) == 1 for _ in range(20))


def test_render_image_draws_lesions_with_their_contrast_on_the_texture():
    rng = np.random.default_rng(2)
    labels = np.zeros((32, 32), dtype=np.int32)
    labels[4:12, 4:12], labels[20:28, 20:28] = 1, 2
    image = render_image(labels, np.array([0.7, -0.7]), rng)
    assert image.dtype == np.float32 and image.shape == (32, 32) and -1 <= image.min() and image.max() <= 1
    background = image[labels == 0].mean()
    assert image[6:10, 6:10].mean() > background + 0.4 and image[22:26, 22:26].mean() < background - 0.4

    texture = np.clip(np.linspace(-0.8, 0.8, 32)[None, :] * np.ones((32, 1)), -1, 1)
    textured = render_image(labels, np.array([0.3, 0.3]), rng, texture=texture)
    away = ~grow_or_shrink(labels > 0, 3)
    assert np.corrcoef(textured[away], texture[away])[0, 1] > 0.95
    with pytest.raises(ValueError, match="texture shape"):
        render_image(labels, np.array([0.3, 0.3]), rng, texture=np.zeros((16, 16)))
    with pytest.raises(ValueError, match="contrasts"):
        render_image(labels, np.array([0.3]), rng)


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    return make_shapes_dataset(tmp_path_factory.mktemp("shapes") / "data", 6, 3, 2, image_size=32, n_raters=3,
                               seed=7)


def test_single_lesion_crops_are_one_visible_blob_of_every_size_on_the_texture():
    texture = np.random.default_rng(0).uniform(-0.5, 0.5, (64, 64)).astype(np.float32)
    areas, contrasts = [], []
    for seed in range(60):
        image, masks = single_lesion_crop(texture, 1, np.random.default_rng(seed))
        assert image.shape == (1, 64, 64) and masks.shape == (1, 64, 64) and masks.dtype == np.uint8
        mask = masks[0].astype(bool)
        core, ring = grow_or_shrink(mask, -2), grow_or_shrink(mask, 6) & ~grow_or_shrink(mask, 3)
        # no faint lesion: the lesion core differs from the texture around it by about its contrast (>= 0.35)
        contrasts.append(abs(float((image[0] - texture)[core].mean())) if core.any() else 1.0)
        areas.append(mask.sum())
        assert ring.any() and abs(float(image[0][ring].mean() - texture[ring].mean())) < 0.1
    assert min(contrasts) >= 0.25
    radii = np.sqrt(np.array(areas) / np.pi) / 64  # equivalent radius, fraction of the crop
    assert radii.min() < 0.1 and radii.max() > 0.3  # from small nodules to ROI-filling tumours
    assert SINGLE_LESION_RADII[0] * 0.8 <= radii.min() and radii.max() <= SINGLE_LESION_RADII[1] * 1.3


def test_dataset_is_written_in_the_crops_format_and_reads_back(dataset_dir):
    info = json.loads((dataset_dir / "dataset.json").read_text())
    assert info["synthetic"] is True and info["n_raters"] == 3 and info["image_size"] == 32
    assert {"name", "source", "licence", "preprocessing", "description"} <= set(info)
    assert "make_shapes_dataset" in info["description"] and "faint" in info["description"]
    patients = []
    for split, count in (("train", 6), ("val", 3), ("test", 2)):
        files = sorted((dataset_dir / split).glob("*.npz"))
        assert len(files) == count
        dataset = CropsDataset(dataset_dir, split)
        assert len(dataset) == count
        for index, path in enumerate(files):
            with np.load(path, allow_pickle=False) as data:
                assert data["image"].dtype == np.float32 and data["image"].shape == (1, 32, 32)
                assert data["masks"].dtype == np.uint8 and data["masks"].shape == (3, 32, 32)
                assert -1 <= data["image"].min() and data["image"].max() <= 1 and data["masks"].max() == 1
                patients.append(str(data["patient"]))
                image, masks = dataset[index]
                assert image.dtype == torch.float32 and masks.dtype == torch.float32
                np.testing.assert_array_equal(image.numpy(), data["image"])
                np.testing.assert_array_equal(masks.numpy(), data["masks"])
    assert len(set(patients)) == len(patients), "each crop is its own patient, so splits share no patient"


def test_same_seed_same_files_other_seed_other_files(dataset_dir, tmp_path):
    again = make_shapes_dataset(tmp_path / "again", 6, 3, 2, image_size=32, n_raters=3, seed=7)
    other = make_shapes_dataset(tmp_path / "other", 6, 0, 0, image_size=32, n_raters=3, seed=8)
    for name in ("train-00000.npz", "train-00005.npz"):
        first, second, third = (np.load(d / "train" / name) for d in (dataset_dir, again, other))
        np.testing.assert_array_equal(first["image"], second["image"])
        np.testing.assert_array_equal(first["masks"], second["masks"])
        assert not np.array_equal(first["image"], third["image"])
    with pytest.raises(FileExistsError, match="not empty"):
        make_shapes_dataset(dataset_dir, 1, 1, 1)


def test_texture_images_become_the_background(tmp_path):
    ramp = np.linspace(-0.9, 0.9, 80)[None, :] * np.ones((80, 1))
    folder = make_shapes_dataset(tmp_path / "textured", 4, 0, 0, image_size=32, seed=1, texture_images=[ramp],
                                 info={"name": "ramp-textures", "licence": "CC0-1.0"})
    info = json.loads((folder / "dataset.json").read_text())
    assert info["name"] == "ramp-textures" and info["licence"] == "CC0-1.0" and "texture" in info["description"]
    for path in sorted((folder / "train").glob("*.npz")):
        image = np.load(path)["image"][0]
        columns = image.mean(axis=0)
        assert np.corrcoef(columns, np.arange(32))[0, 1] > 0.8, "the horizontal ramp shows through"
    with pytest.raises(ValueError, match="at least 32x32"):
        make_shapes_dataset(tmp_path / "small", 1, 0, 0, image_size=32, texture_images=[np.zeros((16, 64))])


def _flip_variants(image, masks):
    return {(v, h): (image.flip([d for d, f in ((-2, v), (-1, h)) if f]) if v or h else image,
                     masks.flip([d for d, f in ((-2, v), (-1, h)) if f]) if v or h else masks)
            for v in (False, True) for h in (False, True)}


def test_in_memory_batches_flip_image_and_mask_together_and_pick_one_rater(dataset_dir):
    plain = CropsDataset(dataset_dir, "train")
    crops = InMemoryCrops(plain, torch.device("cpu"))
    assert len(crops) == len(plain) and crops.images.shape[1:] == (1, 32, 32)
    generator = torch.Generator().manual_seed(0)
    flips, raters = set(), set()
    for _ in range(6):
        images, mask = crops.batch(list(range(len(plain))), generator)
        assert images.shape == (len(plain), 1, 32, 32) and mask.shape == (len(plain), 1, 32, 32)
        for index in range(len(plain)):
            variants = _flip_variants(*plain[index])
            matching = [key for key, (image, _) in variants.items() if torch.equal(image, images[index])]
            assert len(matching) == 1, "the image must be one flip of the original"
            rater = [r for r, m in enumerate(variants[matching[0]][1]) if torch.equal(m, mask[index, 0])]
            assert rater, "the mask must be one rater's mask, with the image's flip"
            flips.add(matching[0])
            raters.add(rater[0])
    assert flips == {(False, False), (False, True), (True, False), (True, True)} and raters == {0, 1, 2}
    same = [crops.batch([0, 1, 2], torch.Generator().manual_seed(5)) for _ in range(2)]
    assert torch.equal(same[0][0], same[1][0]) and torch.equal(same[0][1], same[1][1])
    images, _ = crops.batch([0], torch.Generator().manual_seed(5), augmentations=())
    assert torch.equal(images[0], plain[0][0])


def test_not_a_dataset_gives_clear_errors(tmp_path, dataset_dir):
    with pytest.raises(DatasetError, match="no dataset.json"):
        CropsDataset(tmp_path, "train")
    with pytest.raises(DatasetError, match="no such data set folder"):
        CropsDataset(tmp_path / "missing", "train")
    with pytest.raises(DatasetError, match="unknown split"):
        CropsDataset(dataset_dir, "validation")
    (tmp_path / "dataset.json").write_text("{not json")
    with pytest.raises(DatasetError, match="not valid JSON"):
        CropsDataset(tmp_path, "train")
    info = json.loads((dataset_dir / "dataset.json").read_text())
    (tmp_path / "dataset.json").write_text(json.dumps({k: v for k, v in info.items() if k != "n_raters"}))
    with pytest.raises(DatasetError, match="missing keys n_raters"):
        CropsDataset(tmp_path, "train")
    (tmp_path / "dataset.json").write_text(json.dumps(info))
    with pytest.raises(DatasetError, match="no .npz crops"):
        CropsDataset(tmp_path, "train")
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "broken.npz").write_bytes(b"not a zip file")
    np.savez(tmp_path / "train" / "wrong.npz", image=np.zeros((1, 16, 16), np.float32),
             masks=np.zeros((1, 16, 16), np.uint8), patient="p")
    dataset = CropsDataset(tmp_path, "train")
    with pytest.raises(DatasetError, match="broken.npz: unreadable"):
        dataset[0]
    with pytest.raises(DatasetError, match=r"wrong.npz: image \(1, 16, 16\)"):
        dataset[1]
