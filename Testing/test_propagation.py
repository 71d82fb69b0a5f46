"""sdseg.propagation in process, with real models: crops cut exactly as the training crops were, the propagation's
order, stopping, following and growing with the lesion, ROI and box limits, and its noise streams. The threshold
model (mask = normalised intensity > 0) makes the expected masks exact."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sdseg import inference, preprocessing, propagation
from sdseg.data.preprocess import lesion_rois
from sdseg.metrics import dice
from sdseg.models import build_model
from sdseg.prompt_maps import takes_previous_masks
from sdseg.propagation import Prompt

SPACING_IJK = (0.8, 0.8, 2.0)
WINDOW = {"normalization": "ct_window", "window": [0.0, 200.0]}


def bright_model(size=16, crop=16, **overrides):
    return build_model("threshold", "tiny", image_size=size, preprocessing=WINDOW,
                       crop={"in_plane_voxels": crop, "lesion_margin": 1.2}, **overrides)


def ijk_to_ras():
    return np.diag([*SPACING_IJK, 1.0])


def run(model, array, prompts, roi=None, samples=2, **kwargs):
    """The propagation's slices; at the recipe's scale unless ``scale`` is given (None: the scale search)."""
    roi = roi or [0, 0, 0, *array.shape[::-1]]
    kwargs.setdefault("scale", 1.0)
    return list(propagation.propagate(model, array, ijk_to_ras(), 2, prompts, roi, samples, **kwargs))


def tube(shape_kji=(20, 40, 40), radius=3.0, start=(10.0, 8.0), step=(0.0, 2.0), slices=range(4, 16)):
    """A bright disc on each of ``slices``, its centre (row j, column i) moving by ``step`` per slice."""
    array = np.full(shape_kji, 20.0, np.float32)
    j, i = np.mgrid[0:shape_kji[1], 0:shape_kji[2]]
    truth = np.zeros(shape_kji, bool)
    for n, k in enumerate(slices):
        centre = (start[0] + step[0] * n, start[1] + step[1] * n)
        truth[k] = (j - centre[0]) ** 2 + (i - centre[1]) ** 2 <= radius ** 2
    array[truth] = 150.0
    return array, truth


def assemble(results, shape_kji):
    masks = {}
    for result in results:
        i0, j0, k0, i1, j1, k1 = result.box_ijk
        masks.setdefault(result.lesion, np.zeros(shape_kji, bool))[k0, j0:j1, i0:i1] = result.consensus > 0
    return masks


@pytest.mark.parametrize("seed", range(6))
def test_crops_are_cut_like_the_training_crops(seed):
    """For the first slice of a box prompt, the crop is the in-plane ROI sdseg preprocess cut around a lesion of
    that box (its first, unshifted ROI)."""
    rng = np.random.default_rng(seed)
    dims = [int(rng.integers(40, 200)), int(rng.integers(40, 200)), 30]
    size = [int(rng.integers(2, 120)), int(rng.integers(2, 120)), 5]
    start = [int(rng.integers(0, max(1, dims[a] - size[a]))) for a in range(3)]
    size = [min(size[a], dims[a] - start[a]) for a in range(3)]
    crop = int(rng.choice([0, 48, 96]))
    (roi,) = lesion_rois((start, size), dims, 2, crop, 0, 1, rng)
    recipe = {"in_plane_voxels": crop, "lesion_margin": 1.2}
    for axis in (0, 1):
        centre = start[axis] + (size[axis] - 1) / 2.0  # the box prompt's centre, in voxel coordinates
        assert propagation.crop_window(centre, size[axis], dims[axis], recipe) == (roi[axis], roi[axis + 3])


def test_outward_order_stopping_and_the_prompt_picking_one_object():
    array, truth = tube(step=(0.0, 0.0))
    array[5:9, 25:29, 5:9] = 150.0  # another bright object in the crops, not touching the disc
    results = run(bright_model(size=32, crop=32), array, [Prompt(point_ijk=(8.0, 10.0, 9.0))])
    assert [r.index for r in results] == [9, 10, 8, 11, 7, 12, 6, 13, 5, 14, 4, 15, 3, 16, 2, 17]
    masks = assemble(results, array.shape)[0]
    np.testing.assert_array_equal(masks, truth)  # the other object is left out, every slice of the disc is in
    assert all(r.samples.shape[0] == 2 and not r.variance.any() for r in results)


def test_crops_follow_a_lesion_that_moves_out_of_the_first_crop():
    """The disc moves 2 voxels a slice (22 in all): with 16-voxel crops only re-centring keeps it in view."""
    array, truth = tube()
    results = run(bright_model(), array, [Prompt(point_ijk=(8.0 + 2 * 6, 10.0, 10.0))])
    np.testing.assert_array_equal(assemble(results, array.shape)[0], truth)


def test_crops_grow_with_the_lesion():
    """A disc of radius 12 (25 voxels) does not fit a 16-voxel crop: the prompted slice is cut again 1.5 x larger
    until the consensus no longer touches the crop's edge (16 -> 24 -> 36), the next crops are 1.2 x its extent."""
    array, truth = tube(radius=12.0, start=(20.0, 20.0), step=(0.0, 0.0), slices=range(6, 10))
    results = run(bright_model(size=32), array, [Prompt(point_ijk=(20.0, 20.0, 7.0))])
    sizes = {r.index: (r.box_ijk[3] - r.box_ijk[0], r.box_ijk[4] - r.box_ijk[1]) for r in results}
    assert sizes[7] == (36, 36)
    assert all(28 <= side <= 30 for side in sizes[8] + sizes[6])  # 1.2 x 23..25 (its extent after resizing)
    found = assemble(results, array.shape)[0]
    for k in range(6, 10):
        assert (found[k] == truth[k]).mean() > 0.99  # resized to 32 and back: boundary pixels may differ


def test_a_stop_request_is_honoured_between_the_passes_of_one_slice_and_progress_follows_each_pass():
    """One image per pass: the prompted slice takes 4 passes; a stop after the first pass ends the propagation
    before the second (nothing half-drawn is yielded), and each pass reports its images."""
    array, _ = tube()
    passes = []
    results = run(bright_model(), array, [Prompt(point_ijk=(8.0, 10.0, 9.0))], samples=4, batch_size=1,
                  should_stop=lambda: bool(passes), on_batch=lambda done, total: passes.append((done, total)))
    assert results == [] and passes == [(1, 20 * 4)]
    passes_of_a_full_run = []
    run(bright_model(), array, [Prompt(point_ijk=(8.0, 10.0, 9.0))], samples=4, batch_size=1,
        on_batch=lambda done, total: passes_of_a_full_run.append(done))
    # one report per image here, and one more once the prompted slice (its 4 images) is done: its ETA
    assert passes_of_a_full_run == [1, 2, 3, 4, 4] + list(range(5, len(passes_of_a_full_run)))


def test_progress_counts_a_slice_cut_again_in_a_larger_crop():
    array, _ = tube(radius=12.0, start=(20.0, 20.0), step=(0.0, 0.0), slices=range(6, 10))
    reports = []
    results = run(bright_model(size=32), array, [Prompt(point_ijk=(20.0, 20.0, 7.0))],
                  on_batch=lambda done, total: reports.append((done, total)))
    assert all(done <= total for done, total in reports)
    assert reports[-1][0] == reports[-1][1] > len(results) * 2  # the re-cuts' images counted, done and in all


def test_the_expected_images_follow_the_size_of_the_lesion_on_its_prompted_slice():
    """The ETA's total: until the prompted slice is done, all the slices the propagation may visit (20 here); then
    a lesion as deep as it is wide: a ball of radius 4.8 mm (6 voxels of 0.8 mm on its prompted slice, 2 mm slices:
    2 slices to each side), plus the empty slices that end each direction: what the run takes."""
    k, j, i = np.mgrid[0:20, 0:40, 0:40]
    spacing_i, _, spacing_k = SPACING_IJK
    ball = ((i - 20) * spacing_i) ** 2 + ((j - 20) * spacing_i) ** 2 + ((k - 9) * spacing_k) ** 2 < 4.8 ** 2
    array = np.where(ball, 200.0, 20.0).astype(np.float32)
    reports, reported_at_yield, results = [], [], []
    for result in propagation.propagate(bright_model(), array, ijk_to_ras(), 2, [Prompt(point_ijk=(20.0, 20.0, 9.0))],
                                        [0, 0, 0, 40, 40, 20], 2, batch_size=2, scale=1.0,
                                        on_batch=lambda done, total: reports.append((done, total))):
        results.append(result)
        reported_at_yield.append(reports[-1])
    assert reports[0] == (2, 20 * 2)  # the prompted slice's pass: nothing known of the lesion yet
    assert len(results) == 5 + 2 * propagation.DEFAULT_STOP_AFTER_EMPTY
    assert all(total == len(results) * 2 for _, total in reports[1:])  # from the first slice outward on
    assert reported_at_yield[0] == (2, len(results) * 2)  # the ETA sent with the first slice knows its size



@pytest.mark.parametrize("stop_after_empty, max_slices, expected", [
    (1, None, [9, 10, 8]),
    (3, None, [9, 10, 8, 11, 7, 12, 6]),
    (2, 3, [9, 10, 8]),
    (5, 4, [9, 10, 8, 11]),
])
def test_stopping_rules(stop_after_empty, max_slices, expected):
    array, _ = tube(slices=[9])  # the lesion is on one slice
    results = run(bright_model(), array, [Prompt(point_ijk=(8.0, 10.0, 9.0))], stop_after_empty=stop_after_empty,
                  max_slices=max_slices)
    assert [r.index for r in results] == expected


def test_the_roi_and_a_box_bound_slices_and_masks():
    array, truth = tube(step=(0.0, 0.0))
    roi = [0, 0, 6, 11, 40, 13]  # cuts the disc's columns at i 11 and its slices at 6..12
    results = run(bright_model(), array, [Prompt(point_ijk=(8.0, 10.0, 9.0))], roi=roi)
    assert sorted(r.index for r in results) == list(range(6, 13))
    inside = np.zeros(array.shape, bool)
    inside[6:13, :, :11] = True
    np.testing.assert_array_equal(assemble(results, array.shape)[0], truth & inside)
    box = (5, 7, 8, 9, 13, 11)
    results = run(bright_model(), array, [Prompt(box_ijk=box)])
    assert [r.index for r in results] == [9, 10, 8]  # the box's middle slice first; only the box's slices
    boxed = np.zeros(array.shape, bool)
    boxed[8:11, 7:13, 5:9] = True
    np.testing.assert_array_equal(assemble(results, array.shape)[0], truth & boxed)


class CropFillingBlind(type(bright_model())):
    """The bright-pixel model, but blind to a lesion that fills most of its crop (> half of it), as the trained
    models are (they never saw one): nothing comes back for such a crop."""

    def sample(self, image, num_samples, steps=None, generator=None, sampler=None):
        masks = super().sample(image, num_samples, steps, generator, sampler)
        return masks * (masks.flatten(2).mean(2) <= 0.5)[..., None, None]


def test_a_box_cuts_every_slice_at_its_own_crop_so_a_lesion_wider_than_the_slice_before_is_outlined():
    """A lesion that widens from slice to slice (a disc of radius 4 on the box's middle slice, 12 two slices away):
    a crop around the consensus of the slice before would be filled by it, and a model blind to such a lesion
    would stop there; the box's own crop holds the lesion on every slice (chosen on validation volumes: README)."""
    array = np.full((9, 40, 40), 20.0, np.float32)
    j, i = np.mgrid[0:40, 0:40]
    truth = np.zeros(array.shape, bool)
    for k, radius in zip(range(2, 7), (12, 8, 4, 8, 12)):
        truth[k] = (j - 20) ** 2 + (i - 20) ** 2 <= radius ** 2
    array[truth] = 150.0
    model = CropFillingBlind(bright_model().config)
    found = assemble(run(model, array, [Prompt(box_ijk=(6, 6, 1, 35, 35, 8))]), array.shape)[0]
    assert min(dice(found[k], truth[k]) for k in range(2, 7)) > 0.8  # resized to 16 and back: edges differ
    assert not found[[0, 1, 7, 8]].any()


def test_prompts_outside_are_refused_naming_the_lesion():
    array, _ = tube()
    with pytest.raises(ValueError, match=r"lesion 2: the point \[40.0, 1.0, 1.0\] \(IJK\) is outside the volume"):
        propagation.check_prompts([Prompt(point_ijk=(1.0, 1.0, 1.0)), Prompt(point_ijk=(40.0, 1.0, 1.0))],
                                  array.shape, 2, [0, 0, 0, 40, 40, 20])
    with pytest.raises(ValueError, match="lesion 1: the prompt's slice 3 is outside slices 5..19"):
        propagation.check_prompts([Prompt(point_ijk=(1.0, 1.0, 3.0))], array.shape, 2, [0, 0, 5, 40, 40, 20])
    with pytest.raises(ValueError, match=r"lesion 1: the point \[30.0, 1.0, 8.0\] \(IJK\) is outside the region of "
                                         r"interest \[0, 0, 5, 20, 40, 20\]"):
        propagation.check_prompts([Prompt(point_ijk=(30.0, 1.0, 8.0))], array.shape, 2, [0, 0, 5, 20, 40, 20])
    propagation.check_prompts([Prompt(point_ijk=(19.4, 0.0, 8.0))], array.shape, 2, [0, 0, 5, 20, 40, 20])


def test_the_first_lesion_draws_the_noise_of_a_whole_volume_run_and_the_next_their_own():
    """Lesion 0 uses the same per-slice noise streams as the whole-volume mode; another lesion on the same slice
    draws different noise. (The tiny ambiguous model, random weights: its masks depend on the noise.)"""
    torch.manual_seed(0)
    model = build_model("ambiguous", "tiny", preprocessing=WINDOW).eval()
    array = np.random.default_rng(0).normal(100.0, 40.0, (6, 32, 32)).astype(np.float32)
    crops = [preprocessing.normalize_intensities(array[3], *WINDOW["window"])]
    first = inference.sample_crops(model, crops, [3], range(2), 3, 0, 32)
    other = inference.sample_crops(model, crops, [3], range(2), 3, 0, 32, stream=1)
    (whole,) = inference.segment_slices(model, array, [0, 0, 3, 32, 32, 4], 2, 2, steps=3)  # slice 3, whole plane
    np.testing.assert_array_equal(first[0], whole.samples)
    assert not np.array_equal(first[0], other[0])


def test_a_prompted_model_gets_the_click_then_the_previous_consensus_interior():
    """A model with prompt channels: the prompted slice's point map peaks at the click (in the crop's resized
    pixels), each later slice's at the most interior point of the previous consensus of its direction; a box prompt
    gives the box map on its first slice."""
    array, truth = tube(step=(0.0, 2.0))  # the disc moves 2 voxels in i per slice
    model = bright_model(size=32, crop=32, image_channels=3, prompt_channels=["point", "box"])
    seen = []
    sample = model.sample

    def recording_sample(image, *args, **kwargs):
        seen.append(image[:, 1:].clone())
        return sample(image, *args, **kwargs)

    model.sample = recording_sample
    results = run(model, array, [Prompt(point_ijk=(24.0, 10.0, 9.0))], samples=1, batch_size=1)
    assert [r.index for r in results][:3] == [9, 10, 8]
    first, second = seen[0][0], seen[1][0]
    crop = results[0].box_ijk  # 32 voxels in-plane: no resizing, crop pixels = model pixels
    assert crop[3] - crop[0] == 32 and not first[1].any()
    assert divmod(int(first[0].argmax()), 32) == (10 - crop[1], 24 - crop[0])
    centre = [(j, i) for j, i in zip(*np.nonzero(truth[9]))]
    rows, columns = np.array(centre).T
    second_crop = results[1].box_ijk
    expected = (round(rows.mean()) - second_crop[1], round(columns.mean()) - second_crop[0])
    assert divmod(int(second.argmax()), 32) == expected, "slice 10: the interior of slice 9's consensus"
    np.testing.assert_array_equal(assemble(results, array.shape)[0], truth)

    seen.clear()
    run(model, array, [Prompt(box_ijk=(18, 4, 8, 31, 17, 11))], samples=1, batch_size=1)
    box_map = seen[0][0, 1]
    rows, columns = np.nonzero(box_map.numpy())
    assert not seen[0][0, 0].any(), "a box prompt: no click on its first slice"
    assert box_map.sum() == 13 * 13 and np.ptp(rows) == np.ptp(columns) == 12  # the 13 x 13 voxel box, unresized


def test_a_model_taking_the_previous_mask_gets_sample_n_of_the_slice_before_for_sample_n():
    """Sample n of each later slice is conditioned on sample n of the slice before it in its direction, in the new
    crop's pixels (+1 inside, -1 outside); the prompted slice's samples see "unknown" (zeros). The threshold model,
    its masks grown by 0-2 pixels drawn from each sample's own noise generator, gives samples that differ by n."""
    array, truth = tube(step=(0.0, 2.0))
    model = bright_model(size=32, crop=32, image_channels=4, prompt_channels=["point", "box", "previous"])
    seen = []
    sample = model.sample

    def varied_sample(image, num_samples, steps=None, generator=None, sampler=None):
        seen.append((image[:, 3].clone(), num_samples))
        masks = sample(image, num_samples, steps, generator, sampler)
        grown = [torch.nn.functional.max_pool2d(masks[b:b + 1], 2 * g + 1, stride=1, padding=g)
                 for b, g in enumerate(int(torch.randint(0, 3, (1,), generator=gen)) for gen in generator)]
        return torch.cat(grown)

    model.sample = varied_sample
    results = run(model, array, [Prompt(point_ijk=(24.0, 10.0, 9.0))], samples=3, batch_size=3)
    assert [r.index for r in results][:3] == [9, 10, 8] and len(seen) == len(results)
    assert all(n == 1 and maps.shape[0] == 3 for maps, n in seen)  # one conditioning image per (crop, sample)
    assert not seen[0][0].any()  # the prompted slice: unknown
    assert any(not np.array_equal(r.samples[0], r.samples[1]) for r in results), "the samples differ by n"
    by_index = {r.index: r for r in results}
    for (maps, _), result in list(zip(seen, results))[1:]:
        before = by_index[result.index - (1 if result.index > 9 else -1)]
        planes = np.zeros((3, *array.shape[1:]), dtype=bool)
        i0, j0, _, i1, j1, _ = before.box_ijk
        planes[:, j0:j1, i0:i1] = before.samples > 0
        i0, j0, _, i1, j1, _ = result.box_ijk
        for n in range(3):  # sample n of the slice before, cut to this slice's crop
            np.testing.assert_array_equal(maps[n].numpy(), np.where(planes[n, j0:j1, i0:i1], 1.0, -1.0),
                                          err_msg=f"slice {result.index}, sample {n}")
    assert len(results) >= 6
    assert takes_previous_masks(model.config) and not takes_previous_masks({})
