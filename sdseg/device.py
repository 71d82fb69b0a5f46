"""The torch device named by a user: "auto" (CUDA when available, else the CPU), "cpu", "cuda" or "cuda:N"."""

from __future__ import annotations

import torch


class DeviceUnavailable(ValueError):
    """The requested device cannot be used; the message says what to choose instead."""


def resolve_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise DeviceUnavailable(f"{requested!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        reason = (f"this PyTorch {torch.__version__} is a CPU-only build" if torch.version.cuda is None
                  else "no CUDA GPU is visible (no NVIDIA driver, or CUDA_VISIBLE_DEVICES hides it)")
        raise DeviceUnavailable(f"CUDA was requested but {reason}. Choose device 'auto' or 'cpu', or install a CUDA "
                                "build of PyTorch matching your GPU driver.")
    return device
