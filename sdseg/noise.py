"""Noise that does not depend on how work is batched or on the device: a seed per (slice, sample), one CPU generator
per sample, and N(0, I) draws taking one generator per batch row (the worker seeds each sample on its own, so a
result depends on neither the batch size nor the device's memory)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


def generator_device(generator: torch.Generator | None, device) -> torch.device:
    """Device on which random numbers are drawn: the generator's own device when one is given (so that a CPU
    generator gives the same numbers whatever the model's device), else ``device``."""
    return generator.device if generator is not None else torch.device(device)


def standard_normal(shape, generator: torch.Generator | Sequence[torch.Generator] | None, device,
                    dtype=torch.float32) -> torch.Tensor:
    """``N(0, I)`` noise of ``shape`` on ``device``, drawn from ``generator``.

    ``generator`` may also be a sequence of ``shape[0]`` generators, one per batch row: each row's noise then
    comes from its own generator and does not depend on which other rows share the batch.
    """
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ValueError(f"got {len(generator)} generators for a batch of {shape[0]}; pass one per batch row")
        return torch.stack([standard_normal(tuple(shape[1:]), g, device, dtype) for g in generator])
    noise = torch.randn(shape, generator=generator, device=generator_device(generator, device), dtype=dtype)
    return noise.to(device)


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
