"""sdseg.inference with real tiny models: normalisation, resizing, per-sample seeding (results independent of the
batch size and the ROI extent), consensus/variance, stop requests and the out-of-memory back-off."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sdseg import inference, noise, preprocessing
from sdseg.models import build_model

STEPS = {"ambiguous": 3, "segdiff": 3, "sdseg": None}  # few steps: the tests check plumbing, not quality



def tiny_model(kind="ambiguous", **overrides):
    torch.manual_seed(0)
    return build_model(kind, "tiny", **overrides).eval()


def volume(shape_kji=(5, 21, 27), seed=0):
    rng = np.random.default_rng(seed)
    array = rng.normal(40.0, 30.0, size=shape_kji).astype(np.float32)
    array[:, 6:15, 8:20] += 120.0  # a bright "lesion" box through all slices
    return array


def run(model, array, roi, slice_axis=2, samples=4, **kwargs):
    kwargs.setdefault("steps", STEPS[model.kind])
    return list(inference.segment_slices(model, array, roi, slice_axis, samples, **kwargs))


def test_ct_window_maps_window_to_minus_one_plus_one_and_clips():
    lo, hi = preprocessing.intensity_range(None, {"normalization": "ct_window", "window": [-100, 300]})
    values = np.array([-1000.0, -100.0, 100.0, 300.0, 2000.0])
    np.testing.assert_allclose(preprocessing.normalize_intensities(values, lo, hi), [-1.0, -1.0, 0.0, 1.0, 1.0])


def test_percentile_normalisation_uses_the_roi_distribution():
    roi = np.random.default_rng(1).exponential(50.0, size=(20, 50, 50))
    lo, hi = preprocessing.intensity_range(roi, {"normalization": "percentile", "percentiles": [2.0, 90.0]})
    scaled = preprocessing.normalize_intensities(roi, lo, hi)
    assert scaled.dtype == np.float32 and scaled.min() == -1.0 and scaled.max() == 1.0
    assert np.mean(scaled == -1.0) == pytest.approx(0.02, abs=0.002)
    assert np.mean(scaled == 1.0) == pytest.approx(0.10, abs=0.002)


def test_constant_volume_normalises_without_nan():
    constant = np.full((2, 3, 3), 7.0)
    lo, hi = preprocessing.intensity_range(constant, {"normalization": "percentile", "percentiles": [0.5, 99.5]})
    np.testing.assert_array_equal(preprocessing.normalize_intensities(constant, lo, hi), -1.0)


def test_sample_seeds_differ_per_slice_and_sample_and_are_stable():
    seeds = {noise.sample_seed(0, index, n) for index in range(50) for n in range(16)}
    assert len(seeds) == 50 * 16
    assert noise.sample_seed(3, 7, 2) == noise.sample_seed(3, 7, 2) != noise.sample_seed(4, 7, 2)


def test_masks_are_resized_back_with_nearest_neighbour():
    small = torch.tensor([[[[1, 0], [0, 1]]]], dtype=torch.bool)
    np.testing.assert_array_equal(preprocessing.resize_masks(small, (4, 6))[0, 0].numpy(),
                                  np.kron([[1, 0], [0, 1]], np.ones((2, 3))).astype(bool))


def test_images_are_resized_bilinearly_to_the_model_size():
    ramp = torch.linspace(-1, 1, 64).repeat(48, 1)[None, None]
    resized = preprocessing.resize_images(ramp, 32)
    assert resized.shape == (1, 1, 32, 32)
    columns = resized[0, 0, 0].numpy()
    assert np.all(np.diff(columns) > 0) and -1 <= columns.min() < -0.9 and 0.9 < columns.max() <= 1


@pytest.mark.parametrize("kind", ["ambiguous", "segdiff", "sdseg"])
def test_results_do_not_depend_on_batch_size(kind):
    model = tiny_model(kind)
    array = volume()
    roi = [2, 1, 1, 26, 19, 4]  # 3 K slices of 18 x 24 (resized to 32 x 32 and back)
    one_by_one = run(model, array, roi, batch_size=1)  # every sample alone
    chunks = run(model, array, roi, batch_size=3)  # 4 samples of a slice split 3 + 1
    many = run(model, array, roi, batch_size=64)  # all slices in one pass (after the first)
    for results in (one_by_one, chunks, many):
        assert [r.index for r in results] == [1, 2, 3]
    for a, b, c in zip(one_by_one, chunks, many):
        assert a.samples.shape == (4, 18, 24)
        np.testing.assert_array_equal(a.samples, b.samples)
        np.testing.assert_array_equal(a.samples, c.samples)
    assert any(len({s.tobytes() for s in r.samples}) > 1 for r in many), "samples should differ from each other"


def test_slice_results_do_not_depend_on_the_roi_extent_along_the_slice_axis():
    model = tiny_model(preprocessing={"normalization": "ct_window", "window": [0.0, 200.0]})  # ROI-independent
    array = volume()
    whole = {r.index: r.samples for r in run(model, array, [2, 1, 0, 26, 19, 5])}
    part = run(model, array, [2, 1, 2, 26, 19, 4])
    assert [r.index for r in part] == [2, 3]
    for r in part:
        np.testing.assert_array_equal(r.samples, whole[r.index])


def test_seed_changes_the_samples():
    model = tiny_model()
    array = volume()
    a = run(model, array, [0, 0, 0, 27, 21, 1], seed=0)[0]
    b = run(model, array, [0, 0, 0, 27, 21, 1], seed=1)[0]
    assert not np.array_equal(a.samples, b.samples)


@pytest.mark.parametrize("slice_axis, shape", [(2, (18, 24)), (1, (3, 24)), (0, (3, 18))])
def test_slices_follow_the_protocol_layout_and_order(slice_axis, shape):
    model = tiny_model("sdseg")
    roi = [2, 1, 1, 26, 19, 4]
    results = run(model, volume(), roi, slice_axis=slice_axis, samples=3, batch_size=7)
    assert [r.index for r in results] == list(range(roi[slice_axis], roi[slice_axis + 3]))
    for r in results:
        assert r.samples.shape == (3, *shape) and r.samples.dtype == np.uint8
        assert r.consensus.shape == shape and r.consensus.dtype == np.uint8
        assert r.variance.shape == shape and r.variance.dtype == np.float32


def test_consensus_is_the_majority_and_variance_the_population_variance_of_the_samples():
    results = run(tiny_model(), volume(), [0, 0, 0, 27, 21, 3], samples=4)
    for r in results:
        votes = r.samples.astype(int).sum(axis=0)
        np.testing.assert_array_equal(r.consensus, (2 * votes >= 4).astype(np.uint8))  # ties count as foreground
        p = votes / 4.0
        np.testing.assert_allclose(r.variance, p * (1 - p), atol=1e-7)
        assert set(np.unique(r.samples)) <= {0, 1}
    assert any((r.variance > 0).any() for r in results)


def test_stop_request_ends_the_generator_before_the_next_pass():
    model = tiny_model("sdseg")
    received = []
    results = inference.segment_slices(model, volume(), [0, 0, 0, 27, 21, 5], 2, 2, batch_size=2,
                                       should_stop=lambda: len(received) >= 2)
    for result in results:
        received.append(result.index)
    assert received == [0, 1]


@pytest.mark.parametrize("kind", ["sdseg", "ambiguous", "segdiff"])
def test_a_stop_request_ends_a_forward_pass_at_its_next_sampling_step(kind):
    """One pass of 20 sampling steps: a stop that comes while it runs ends it at the next call of one of the model's
    modules (nothing half-drawn is yielded), and the model's hooks are gone afterwards."""
    model = tiny_model(kind)
    asked = []

    def should_stop():
        asked.append(True)
        return len(asked) > 3  # before the pass, then at the pass's first two module calls: go on

    results = list(inference.segment_slices(model, volume(), [0, 0, 0, 27, 21, 1], 2, 20, batch_size=2,
                                            should_stop=should_stop))
    assert results == [] and len(asked) == 4
    assert all(not child._forward_pre_hooks for child in model.children())
    asked.clear()
    assert len(list(inference.segment_slices(model, volume(), [0, 0, 0, 27, 21, 1], 2, 20, batch_size=2,
                                             should_stop=lambda: bool(asked.append(True))))) == 1
    assert len(asked) > 20  # asked at every step of a full pass


def test_progress_callback_counts_images():
    calls = []
    run(tiny_model("sdseg"), volume(), [0, 0, 0, 27, 21, 3], samples=2, batch_size=4,
        on_batch=lambda done, total: calls.append((done, total)))
    assert calls == [(2, 6), (6, 6)]  # first pass: one slice; then up to 4 images


class FlakyMemoryModel(torch.nn.Module):
    """A real tiny model whose forward passes fail with out-of-memory above ``max_images`` images."""

    def __init__(self, model, max_images):
        super().__init__()
        self.model, self.max_images, self.config, self.kind = model, max_images, model.config, model.kind
        self.pass_sizes = []

    def sample(self, image, num_samples, steps=None, generator=None, sampler=None):
        self.pass_sizes.append(image.shape[0] * num_samples)
        if image.shape[0] * num_samples > self.max_images:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.model.sample(image, num_samples, steps, generator, sampler)


def test_out_of_memory_halves_the_batch_and_keeps_the_results():
    model = tiny_model("sdseg")
    array, roi = volume(), [0, 0, 0, 27, 21, 5]
    reference = run(model, array, roi, samples=2, batch_size=2)
    flaky = FlakyMemoryModel(model, max_images=3)
    backed_off = run(flaky, array, roi, samples=2, batch_size=8)
    assert flaky.pass_sizes[:3] == [2, 8, 4]  # first slice alone, then 8 fails, then 4 fails, then 2 ...
    assert max(size for size in flaky.pass_sizes[3:]) <= 2
    assert [r.index for r in backed_off] == [r.index for r in reference] == [0, 1, 2, 3, 4]
    for a, b in zip(reference, backed_off):
        np.testing.assert_array_equal(a.samples, b.samples)


def test_out_of_memory_with_one_image_raises():
    flaky = FlakyMemoryModel(tiny_model("sdseg"), max_images=0)
    with pytest.raises(inference.OutOfMemory, match="does not fit"):
        run(flaky, volume(), [0, 0, 0, 27, 21, 2], samples=2, batch_size=4)


def test_auto_batch_size_follows_free_memory_within_limits():
    cpu, size = torch.device("cpu"), 64
    per_image = inference.ACTIVATION_BYTES_PER_PIXEL * size * size
    assert inference.auto_batch_size(cpu, size, free_bytes=0) == 1
    assert inference.auto_batch_size(cpu, size, free_bytes=int(6 * per_image / inference.MEMORY_FRACTION)) == 6
    assert inference.auto_batch_size(cpu, size, free_bytes=2 ** 50) == inference.MAX_BATCH["cpu"]
    assert inference.auto_batch_size(torch.device("cuda"), size, free_bytes=2 ** 50) == inference.MAX_BATCH["cuda"]
    assert inference.auto_batch_size(cpu, size) >= 1  # reads this machine's available memory
    # a CPU pass holds at most CPU_PIXELS_PER_PASS input pixels: past that a bigger batch costs more per image
    assert [inference.auto_batch_size(cpu, s, free_bytes=2 ** 50) for s in (32, 64, 128, 256, 512)] == [16, 16, 4, 1, 1]
    assert inference.auto_batch_size(torch.device("cuda"), 256, free_bytes=2 ** 50) == inference.MAX_BATCH["cuda"]


def test_model_expecting_colour_images_is_a_mismatch():
    model = tiny_model()
    model.config = {**model.config, "image_channels": 3}
    with pytest.raises(inference.ModelMismatchError, match="3 image channels"):
        run(model, volume(), [0, 0, 0, 27, 21, 1])


def test_the_pass_planner_fills_passes_with_whole_slices_or_chunks_of_one_slices_samples():
    def plan(*args, **kwargs):
        return [(list(p.items), list(p.samples)) for p in inference.plan_passes(*args, **kwargs)]

    assert plan(5, 2, 4, first_alone=True) == [([0], [0, 1]), ([1, 2], [0, 1]), ([3, 4], [0, 1])]
    assert plan(5, 2, 4) == [([0, 1], [0, 1]), ([2, 3], [0, 1]), ([4], [0, 1])]
    assert plan(2, 5, 2) == [([0], [0, 1]), ([0], [2, 3]), ([0], [4]), ([1], [0, 1]), ([1], [2, 3]), ([1], [4])]
    assert plan(3, 2, 4, start=(1, 1)) == [([1], [1]), ([2], [0, 1])]  # resuming after an out-of-memory
    for count, samples, batch in [(7, 3, 5), (4, 16, 16), (9, 1, 1), (6, 4, 100)]:
        passes = list(inference.plan_passes(count, samples, batch, first_alone=True))
        drawn = [(item, sample) for p in passes for item in p.items for sample in p.samples]
        assert sorted(drawn) == [(i, n) for i in range(count) for n in range(samples)]  # each exactly once
        assert all(len(p.items) * len(p.samples) <= batch for p in passes)


def test_a_model_taking_the_previous_mask_conditions_each_sample_on_its_own_with_the_same_noise():
    """With the ``previous`` channel every (crop, sample) is one conditioning image: unknown previous masks give
    exactly the samples of the model's own batched call (same noise), and changing sample 1's previous mask
    changes sample 1 only. (The tiny ambiguous model with random weights: its masks depend on every input.)"""
    from sdseg.masks import postprocess
    from sdseg.noise import sample_generators

    torch.manual_seed(0)
    model = build_model("ambiguous", "tiny", image_channels=4, prompt_channels=["point", "box", "previous"]).eval()
    crop = np.random.default_rng(0).uniform(-1, 1, (32, 32)).astype(np.float32)
    unknown = inference.sample_crops(model, [crop], [3], range(3), 3, 0, 32)[0]
    images = torch.cat([torch.from_numpy(crop)[None, None], torch.zeros(1, 3, 32, 32)], dim=1)
    direct = model.sample(images, 3, steps=3, generator=sample_generators(0, 3, range(3), 0)) > 0.5
    np.testing.assert_array_equal(unknown, postprocess(direct, model.config)[0].numpy())
    square = np.zeros((32, 32), dtype=bool)
    square[8:20, 8:20] = True
    same = inference.sample_crops(model, [crop], [3], range(3), 3, 0, 32, previous=[np.stack([square] * 3)])[0]
    other = np.stack([square, ~square, square])
    changed = inference.sample_crops(model, [crop], [3], range(3), 3, 0, 32, previous=[other])[0]
    np.testing.assert_array_equal(changed[[0, 2]], same[[0, 2]])
    assert not np.array_equal(changed[1], same[1])
    assert not np.array_equal(same, unknown)
