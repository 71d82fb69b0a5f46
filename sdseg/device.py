"""The torch device named by a user ("auto": CUDA when available, else the CPU; "cpu", "cuda" or "cuda:N"), and
the one-line description of the hardware a run used (model cards, evaluation reports), and its free memory."""

from __future__ import annotations

import contextlib
import os
import platform

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


def _cpu_name() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def hardware_description(device: torch.device) -> str:
    if device.type == "cuda":
        name = f"GPU {torch.cuda.get_device_name(device)}"
    else:
        name = f"CPU {_cpu_name()} ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"
    return f"{name}, torch {torch.__version__}, Python {platform.python_version()}"
