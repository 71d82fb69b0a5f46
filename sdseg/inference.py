"""Volume -> per-slice segmentation samples, consensus mask and sample variance (the worker's engine).

The slices of a region of interest are normalised (once, over the whole ROI), resized to the model's square input,
sampled N times in batches of ``slices x samples`` images, and the binary samples are resized back to the slice
size. Every sample (slice ``index``, sample ``n``) draws its noise from its own generator seeded from
``(seed, index, n)``, so the result of a slice does not depend on the batch size, the ROI's extent along the slice
axis or the device's memory.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch

from sdseg.device import free_memory_bytes
from sdseg.masks import postprocess
from sdseg.noise import sample_generators
from sdseg.prompt_maps import CropPrompt, crop_prompt_maps, data_channels, prompt_channels_of, takes_previous_masks
from sdseg.preprocessing import intensity_range, normalize_intensities, resize_images, resize_masks
from sdseg.metrics import voxel_variance
from sdseg.volume_io import roi_array, slice_of_roi

MAX_BATCH = {"cpu": 16, "cuda": 128}  # CPU throughput stops growing early; big batches only delay the first slice
# On a CPU the cost per image grows again past about this many input pixels per pass (scripts/benchmark_inference.py
# --batch-sweep, 1 thread: ambiguous/small at 128 px costs 1.47 s per image at 4 images, 1.89 s at 16; sdseg/small
# 55 vs 54 ms; at 64 px both are cheapest at 16): 16 images of 64 px, 4 of 128 px, 1 of 256 px.
CPU_PIXELS_PER_PASS = 16 * 64 * 64
ACTIVATION_BYTES_PER_PIXEL = 8192  # estimate: ~2000 float32 activations alive per input pixel at the peak
MEMORY_FRACTION = 0.5  # of the free memory, for activations (the out-of-memory back-off covers misestimates)

log = logging.getLogger(__name__)


class ModelMismatchError(ValueError):
    """The model cannot be applied to this volume (e.g. it expects colour images); the message says what to do."""


class OutOfMemory(RuntimeError):
    """Even one image per forward pass does not fit in the device memory."""


class Stopped(Exception):
    """A forward pass ended at a sampling step because its ``should_stop()`` said so (:func:`stopping_at_steps`)."""


@contextlib.contextmanager
def stopping_at_steps(model, should_stop: Callable[[], bool] | None):
    """While inside, each call of one of ``model``'s top-level modules (its denoiser runs once per sampling step)
    first asks ``should_stop()`` and raises :class:`Stopped` when it is true, so that a cancel ends even a long
    forward pass at its next sampling step instead of after its last."""
    if should_stop is None:
        yield
        return

    def check(module, inputs):
        if should_stop():
            raise Stopped

    handles = [child.register_forward_pre_hook(check) for child in model.children()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@dataclass(frozen=True)
class SliceResult:
    """One segmented slice: ``index`` along the slice axis of the full volume; arrays cover the ROI only."""
    index: int
    samples: np.ndarray  # uint8 (N, A, B), 0/1
    consensus: np.ndarray  # uint8 (A, B), 0/1
    variance: np.ndarray  # float32 (A, B), in [0, 0.25]


def check_model_fits_volume(config: dict) -> None:
    """Raise :class:`ModelMismatchError` unless the model takes single-channel images (besides its prompt channels)
    with a known normalisation."""
    try:
        channels = data_channels(config)
    except ValueError as error:
        raise ModelMismatchError(f"the model's {error}; re-export the model with this version of SDSegSlicer") \
            from None
    if channels != 1:
        raise ModelMismatchError(
            f"the model expects {channels} image channels but a scalar volume has 1; choose a model trained on "
            "single-channel (grayscale CT/MR) images")
    preprocessing = config.get("preprocessing")
    if not isinstance(preprocessing, dict) or preprocessing.get("normalization") not in ("ct_window", "percentile"):
        raise ModelMismatchError(
            f"the model's preprocessing {preprocessing!r} is not supported (expected normalization 'ct_window' or "
            "'percentile'); re-export the model with this version of SDSegSlicer")
    if not isinstance(config.get("image_size"), int) or config["image_size"] < 1:
        raise ModelMismatchError(f"the model's image_size {config.get('image_size')!r} is not a positive integer; "
                                 "re-export the model with this version of SDSegSlicer")


def consensus_mask(samples: np.ndarray) -> np.ndarray:
    """uint8 majority vote of N binary samples (axis 0): the voxels in at least half of them (mean >= 0.5)."""
    return (np.asarray(samples, dtype=bool).mean(axis=0) >= 0.5).astype(np.uint8)


def auto_batch_size(device: torch.device, image_size: int, free_bytes: int | None = None) -> int:
    """Images per forward pass fitting ``MEMORY_FRACTION`` of the free memory at
    ``ACTIVATION_BYTES_PER_PIXEL`` per input pixel, clamped to [1, MAX_BATCH[device]] and on a CPU to
    CPU_PIXELS_PER_PASS input pixels (where the measured cost per image is lowest)."""
    free_bytes = free_memory_bytes(device) if free_bytes is None else free_bytes
    per_image = ACTIVATION_BYTES_PER_PIXEL * image_size * image_size
    limit = MAX_BATCH.get(device.type, MAX_BATCH["cpu"])
    if device.type == "cpu":
        limit = min(limit, CPU_PIXELS_PER_PASS // (image_size * image_size))
    return int(max(1, min(limit, MEMORY_FRACTION * free_bytes // per_image)))


def is_out_of_memory(error: BaseException) -> bool:
    """True for a CUDA out-of-memory error or a failed host allocation."""
    if isinstance(error, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def model_device(model: torch.nn.Module) -> torch.device:
    """Device of the model's first parameter or buffer (the CPU for a model with neither)."""
    tensor = next(itertools.chain(model.parameters(), model.buffers()), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def sample_crops(model, crops: list[np.ndarray], indices: list[int], samples: range, steps, seed: int, size: int,
                 stream: int = 0, postprocessing: bool = True,
                 prompts: list[CropPrompt | None] | None = None,
                 previous: list[np.ndarray | None] | None = None,
                 should_stop: Callable[[], bool] | None = None) -> list[np.ndarray]:
    """Binary samples (len(samples), A_b, B_b) of each normalised 2D crop b (shapes may differ): every crop is
    resized to the model's size x size (with the maps of ``prompts[b]``, in the crop's pixels, when the model takes
    prompt channels: sdseg.prompt_maps), all are sampled in one forward pass, binarised (soft > 0.5),
    post-processed as the model says (:func:`sdseg.masks.postprocess`; ``postprocessing=False``: as drawn) and
    resized back. A model with the ``previous`` channel conditions each sample on its own previous-slice mask,
    ``previous[b][n]`` (A_b, B_b) bool for sample n of crop b (None: unknown): every (crop, sample) pair is then
    one conditioning image, with the same noise as otherwise. :class:`Stopped` when ``should_stop()`` turns true
    during the pass (asked at every sampling step)."""
    device = model_device(model)
    images = torch.cat([resize_images(torch.from_numpy(np.ascontiguousarray(crop, dtype=np.float32))[None, None]
                                      .to(device), size) for crop in crops])
    channels = prompt_channels_of(model.config)
    prompts = prompts or [None] * len(crops)
    per_sample = takes_previous_masks(model.config)
    if per_sample:
        repeat = len(samples)
        images = images.repeat_interleave(repeat, dim=0)
        masks = [None if previous is None or previous[b] is None else previous[b][n]
                 for b in range(len(crops)) for n in range(repeat)]
        maps = crop_prompt_maps([p for p in prompts for _ in range(repeat)],
                                [crop.shape for crop in crops for _ in range(repeat)], size, channels, device, masks)
        images = torch.cat([images, maps], dim=1)
    elif channels:
        maps = crop_prompt_maps(prompts, [crop.shape for crop in crops], size, channels, device)
        images = torch.cat([images, maps], dim=1)
    generators = [g for index in indices for g in sample_generators(seed, index, samples, stream)]
    with stopping_at_steps(model, should_stop):
        if per_sample:
            soft = model.sample(images, num_samples=1, steps=steps, generator=generators)
            soft = soft.reshape(len(crops), len(samples), *soft.shape[-2:])
        else:
            soft = model.sample(images, num_samples=len(samples), steps=steps, generator=generators)
    binary = soft > 0.5
    if postprocessing:
        binary = postprocess(binary, model.config)
    return [resize_masks(masks[None], crop.shape)[0].cpu().numpy() for masks, crop in zip(binary, crops)]


@dataclass(frozen=True)
class Pass:
    """One forward pass: the samples ``samples`` of each of the items ``items``."""
    items: range
    samples: range


def plan_passes(count: int, num_samples: int, batch_size: int, start: tuple[int, int] = (0, 0),
                first_alone: bool = False) -> Iterator[Pass]:
    """The forward passes that draw ``num_samples`` samples of items ``start[0]`` .. ``count - 1`` (item
    ``start[0]`` from sample ``start[1]`` on) with at most ``batch_size`` images (items x samples) each: as many
    whole items as fit when one item's samples fit, otherwise one item's samples in chunks of ``batch_size``.
    ``first_alone``: the first pass holds one item only, so that its result arrives early."""
    item, first_sample = start
    while item < count:
        limit = min(batch_size, num_samples) if first_alone else batch_size
        first_alone = False
        if first_sample == 0 and limit >= num_samples:
            step = Pass(range(item, min(count, item + limit // num_samples)), range(num_samples))
        else:
            step = Pass(range(item, item + 1), range(first_sample, min(num_samples, first_sample + limit)))
        yield step
        done = step.samples.stop == num_samples
        item, first_sample = (step.items.stop, 0) if done else (item, step.samples.stop)


@dataclass
class BatchSize:
    """Images per forward pass; halved in place on out-of-memory, so later calls start from what fitted."""
    images: int


def sample_items(model, crop_of: Callable[[int], np.ndarray], index_of: Callable[[int], int], count: int,
                 num_samples: int, steps, seed: int, batch: BatchSize, stream: int = 0, first_alone: bool = False,
                 postprocessing: bool = True, should_stop: Callable[[], bool] | None = None,
                 on_pass: Callable[[int], None] | None = None,
                 prompt_of: Callable[[int], CropPrompt | None] | None = None,
                 previous_of: Callable[[int], np.ndarray | None] | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """Execute the passes of :func:`plan_passes`: yield ``(item, samples (N, A, B))`` for items 0..count-1 in order,
    each as soon as all its samples are drawn. Item n is the normalised 2D crop ``crop_of(n)`` whose noise is that of
    slice ``index_of(n)`` (and ``stream``), with the prompt ``prompt_of(n)`` (None: none) and the previous-slice
    masks ``previous_of(n)`` (num_samples, A, B) (None: unknown). On out-of-memory ``batch`` is halved and the pass
    planned again; :class:`OutOfMemory` when one image does not fit. ``should_stop()`` is checked before every
    forward pass and at each of its sampling steps (a pass stopped midway yields nothing); ``on_pass(images)`` is
    called after each pass. A deterministic model (every sample the same mask) draws one sample per item, repeated
    ``num_samples`` times (``on_pass`` counts the repeats)."""
    if getattr(model, "deterministic", False) and num_samples > 1:
        counted = None if on_pass is None else (lambda images: on_pass(images * num_samples))
        for item, samples in sample_items(model, crop_of, index_of, count, 1, steps, seed, batch, stream, first_alone,
                                          postprocessing, should_stop, counted, prompt_of, previous_of):
            yield item, np.repeat(samples, num_samples, axis=0)
        return
    size, device = int(model.config["image_size"]), model_device(model)
    start, alone, parts = (0, 0), first_alone, []
    while True:
        for step in plan_passes(count, num_samples, batch.images, start, alone):
            if should_stop is not None and should_stop():
                return
            limit = min(batch.images, num_samples) if alone else batch.images
            try:
                masks = sample_crops(model, [crop_of(n) for n in step.items], [index_of(n) for n in step.items],
                                     step.samples, steps, seed, size, stream, postprocessing,
                                     None if prompt_of is None else [prompt_of(n) for n in step.items],
                                     None if previous_of is None else [_samples_of(previous_of(n), step.samples)
                                                                       for n in step.items], should_stop)
            except Stopped:
                return
            except Exception as error:  # noqa: BLE001 - only out-of-memory is handled, the rest re-raised
                if not is_out_of_memory(error):
                    raise
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                if limit == 1:
                    raise OutOfMemory(f"one image of {size}x{size} does not fit in the {device.type} "
                                      "memory") from error
                batch.images = max(1, limit // 2)
                log.warning("out of memory with %d images per pass on %s; retrying with %d", limit, device,
                            batch.images)
                start = (step.items.start, step.samples.start)
                break  # plan the rest again with the smaller batch
            alone = False
            if on_pass is not None:
                on_pass(len(step.items) * len(step.samples))
            for item, item_masks in zip(step.items, masks):
                parts.append(item_masks)
                if step.samples.stop == num_samples:
                    yield item, np.concatenate(parts)
                    parts = []
        else:
            return


def _samples_of(masks: np.ndarray | None, samples: range) -> np.ndarray | None:
    return None if masks is None else masks[samples.start:samples.stop]


def _slice_result(index: int, samples: np.ndarray) -> SliceResult:
    return SliceResult(index=index, samples=samples.astype(np.uint8), consensus=consensus_mask(samples),
                       variance=voxel_variance(samples))


def segment_slices(model, array_kji: np.ndarray, roi_ijk, slice_axis: int, num_samples: int,
                   steps: int | None = None, seed: int = 0, batch_size: int | None = None,
                   should_stop: Callable[[], bool] | None = None,
                   on_batch: Callable[[int, int], None] | None = None) -> Iterator[SliceResult]:
    """Yield a :class:`SliceResult` for each slice of the ROI along ``slice_axis``, in increasing index order.

    ``roi_ijk`` = [i0, j0, k0, i1, j1, k1] (end exclusive, already checked). Forward passes as
    :func:`plan_passes` plans them with up to ``batch_size`` images (= slices x samples; None = from the free
    memory), the first holding one slice so that it arrives early, run by :func:`sample_items` (out-of-memory
    back-off, stop requests). ``on_batch(images_done, images_total)`` is called after each pass.
    """
    config = model.config
    check_model_fits_volume(config)
    size = int(config["image_size"])
    roi = roi_array(array_kji, roi_ijk)
    lo, hi = intensity_range(roi, config["preprocessing"])
    first_index, count = roi_ijk[slice_axis], roi_ijk[slice_axis + 3] - roi_ijk[slice_axis]
    batch = BatchSize(batch_size or auto_batch_size(model_device(model), size))
    images_total, images_done = count * num_samples, 0

    def on_pass(images: int) -> None:
        nonlocal images_done
        images_done += images
        if on_batch is not None:
            on_batch(images_done, images_total)

    for position, samples in sample_items(
            model, lambda p: normalize_intensities(slice_of_roi(roi, slice_axis, p), lo, hi),
            lambda p: first_index + p, count, num_samples, steps, seed, batch, first_alone=True,
            should_stop=should_stop, on_pass=on_pass):
        yield _slice_result(first_index + position, samples)
