"""Volume -> per-slice segmentation samples, consensus mask and sample variance (the worker's engine).

The slices of a region of interest are normalised (once, over the whole ROI), resized to the model's square input,
sampled N times in batches of ``slices x samples`` images, and the binary samples are resized back to the slice
size. Every sample (slice ``index``, sample ``n``) draws its noise from its own generator seeded from
``(seed, index, n)``, so the result of a slice does not depend on the batch size, the ROI's extent along the slice
axis or the device's memory.
"""

from __future__ import annotations

import itertools
import logging
import os
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from sdseg.metrics import voxel_variance
from sdseg.volume_io import roi_array, slice_of_roi

MAX_BATCH = {"cpu": 16, "cuda": 128}  # CPU throughput stops growing early; big batches only delay the first slice
ACTIVATION_BYTES_PER_PIXEL = 8192  # estimate: ~2000 float32 activations alive per input pixel at the peak
MEMORY_FRACTION = 0.5  # of the free memory, for activations (the out-of-memory back-off covers misestimates)

log = logging.getLogger(__name__)


class ModelMismatchError(ValueError):
    """The model cannot be applied to this volume (e.g. it expects colour images); the message says what to do."""


class OutOfMemory(RuntimeError):
    """Even one image per forward pass does not fit in the device memory."""


@dataclass(frozen=True)
class SliceResult:
    """One segmented slice: ``index`` along the slice axis of the full volume; arrays cover the ROI only."""
    index: int
    samples: np.ndarray  # uint8 (N, A, B), 0/1
    consensus: np.ndarray  # uint8 (A, B), 0/1
    variance: np.ndarray  # float32 (A, B), in [0, 0.25]


def check_model_fits_volume(config: dict) -> None:
    """Raise :class:`ModelMismatchError` unless the model takes single-channel images with a known normalisation."""
    channels = config.get("image_channels", 1)
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


def intensity_range(values: np.ndarray, preprocessing: dict) -> tuple[float, float]:
    """Intensities mapped to -1 and +1: the CT window ``[lo, hi]`` (normalization "ct_window"), or the percentiles
    ``[p0, p1]`` of ``values`` (normalization "percentile"; computed once over the whole ROI)."""
    if preprocessing["normalization"] == "ct_window":
        lo, hi = preprocessing["window"]
    else:
        lo, hi = np.percentile(values, preprocessing["percentiles"])
    return float(lo), float(hi)


def normalize_intensities(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """float32 ``clip((x - lo) / (hi - lo), 0, 1) * 2 - 1``: [lo, hi] -> [-1, 1]; a constant range maps to -1."""
    scale = 1.0 / (hi - lo) if hi > lo else 0.0
    return (np.clip((np.asarray(values, dtype=np.float32) - lo) * scale, 0.0, 1.0) * 2.0 - 1.0).astype(np.float32)


def sample_seed(seed: int, index: int, sample: int, stream: int = 0) -> int:
    """64-bit seed of sample ``sample`` of slice ``index`` (slice number along the slice axis of the volume);
    ``stream`` tells apart the lesions of a prompt-driven job that visit the same slice (0: the first one, and
    every whole-volume job)."""
    entropy = [seed, index, sample] + ([stream] if stream else [])
    state = np.random.SeedSequence(entropy).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 32 | int(state[1])


def sample_generators(seed: int, index: int, samples: range, stream: int = 0) -> list[torch.Generator]:
    """CPU generators of the given samples of one slice (CPU so the noise is the same on every device)."""
    return [torch.Generator().manual_seed(sample_seed(seed, index, n, stream)) for n in samples]


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """(B, C, h, w) -> (B, C, size, size), bilinear (antialiased when shrinking)."""
    if images.shape[-2:] == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def resize_masks(masks: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """(B, N, S, S) binary masks -> (B, N, *shape), nearest neighbour (pixel-centre aligned)."""
    if tuple(masks.shape[-2:]) == tuple(shape):
        return masks
    return F.interpolate(masks.to(torch.uint8), size=tuple(shape), mode="nearest-exact").bool()


def consensus_mask(samples: np.ndarray) -> np.ndarray:
    """uint8 majority vote of N binary samples (axis 0): the voxels in at least half of them (mean >= 0.5)."""
    return (np.asarray(samples, dtype=bool).mean(axis=0) >= 0.5).astype(np.uint8)


def free_memory_bytes(device: torch.device) -> int:
    """Free memory of ``device``: CUDA free memory, or the host's available RAM for the CPU."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def auto_batch_size(device: torch.device, image_size: int, free_bytes: int | None = None) -> int:
    """Images per forward pass fitting ``MEMORY_FRACTION`` of the free memory at
    ``ACTIVATION_BYTES_PER_PIXEL`` per input pixel, clamped to [1, MAX_BATCH[device]]."""
    free_bytes = free_memory_bytes(device) if free_bytes is None else free_bytes
    per_image = ACTIVATION_BYTES_PER_PIXEL * image_size * image_size
    return int(max(1, min(MAX_BATCH.get(device.type, MAX_BATCH["cpu"]), MEMORY_FRACTION * free_bytes // per_image)))


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
                 stream: int = 0) -> list[np.ndarray]:
    """Binary samples (len(samples), A_b, B_b) of each normalised 2D crop b (shapes may differ): every crop is
    resized to the model's size x size, all are sampled in one forward pass, and the masks resized back."""
    device = model_device(model)
    images = torch.cat([resize_images(torch.from_numpy(np.ascontiguousarray(crop, dtype=np.float32))[None, None]
                                      .to(device), size) for crop in crops])
    generators = [g for index in indices for g in sample_generators(seed, index, samples, stream)]
    soft = model.sample(images, num_samples=len(samples), steps=steps, generator=generators)
    return [resize_masks(masks[None] > 0.5, crop.shape)[0].cpu().numpy() for masks, crop in zip(soft, crops)]


def sample_batch(model, slices: list[np.ndarray], indices: list[int], samples: range, steps, seed: int,
                  size: int) -> np.ndarray:
    """Binary samples (len(slices), len(samples), A, B) of equally shaped normalised 2D slices."""
    return np.stack(sample_crops(model, slices, indices, samples, steps, seed, size))


def _slice_result(index: int, samples: np.ndarray) -> SliceResult:
    return SliceResult(index=index, samples=samples.astype(np.uint8), consensus=consensus_mask(samples),
                       variance=voxel_variance(samples))


def segment_slices(model, array_kji: np.ndarray, roi_ijk, slice_axis: int, num_samples: int,
                   steps: int | None = None, seed: int = 0, batch_size: int | None = None,
                   should_stop: Callable[[], bool] | None = None,
                   on_batch: Callable[[int, int], None] | None = None) -> Iterator[SliceResult]:
    """Yield a :class:`SliceResult` for each slice of the ROI along ``slice_axis``, in increasing index order.

    ``roi_ijk`` = [i0, j0, k0, i1, j1, k1] (end exclusive, already checked). A forward pass holds up to
    ``batch_size`` images (= slices x samples; None = from the free memory); the first pass holds one slice so it
    arrives early. A slice with more samples than ``batch_size`` is sampled in chunks. On out-of-memory the
    batch is halved and retried; :class:`OutOfMemory` is raised when one image does not fit. ``should_stop()`` is
    checked before every forward pass; ``on_batch(images_done, images_total)`` is called after each one.
    """
    config = model.config
    check_model_fits_volume(config)
    size = int(config["image_size"])
    roi = roi_array(array_kji, roi_ijk)
    lo, hi = intensity_range(roi, config["preprocessing"])
    first_index, count = roi_ijk[slice_axis], roi_ijk[slice_axis + 3] - roi_ijk[slice_axis]
    device = model_device(model)
    batch_size = batch_size or auto_batch_size(device, size)
    images_total, images_done = count * num_samples, 0
    position, first_sample, parts = 0, 0, []
    while position < count:
        if should_stop is not None and should_stop():
            return
        limit = min(batch_size, num_samples) if images_done == 0 else batch_size
        if first_sample == 0 and limit >= num_samples:
            positions, samples = list(range(position, min(count, position + limit // num_samples))), \
                range(num_samples)
        else:
            positions, samples = [position], range(first_sample, min(num_samples, first_sample + limit))
        try:
            masks = sample_batch(model, [normalize_intensities(slice_of_roi(roi, slice_axis, p), lo, hi)
                                          for p in positions],
                                  [first_index + p for p in positions], samples, steps, seed, size)
        except Exception as error:  # noqa: BLE001 - only out-of-memory is handled, the rest re-raised
            if not is_out_of_memory(error):
                raise
            if device.type == "cuda":
                torch.cuda.empty_cache()
            if limit == 1:
                raise OutOfMemory(f"one image of {size}x{size} does not fit in the {device.type} memory") from error
            batch_size = max(1, limit // 2)
            log.warning("out of memory with %d images per pass on %s; retrying with %d", limit, device, batch_size)
            continue
        images_done += len(positions) * len(samples)
        if on_batch is not None:
            on_batch(images_done, images_total)
        for p, slice_masks in zip(positions, masks):
            parts.append(slice_masks)
            if samples.stop == num_samples:
                yield _slice_result(first_index + p, np.concatenate(parts))
                parts = []
        position, first_sample = (positions[-1] + 1, 0) if samples.stop == num_samples else (position, samples.stop)
