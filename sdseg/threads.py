"""CPU threads of a process that runs torch, chosen before torch is imported (this module never imports it).

OpenMP reads its settings once, when torch loads it, so the worker calls :func:`configure_openmp` first:
- the wait policy is passive unless the user set one: idle OpenMP threads sleep instead of spinning, so a program
  beside the worker (a CPU hog, a browser, Slicer rendering) does not make torch's threads wait for a core they
  spin on (7x slower on a 2-core machine with one busy process beside it);
- the intra-op thread count is ``$OMP_NUM_THREADS`` when set (``sdseg-slicer --threads`` sets it for its workers),
  else the cores this process may run on (its CPU affinity: a container's or ``taskset``'s limit, not the machine's
  core count).
"""

from __future__ import annotations

import os

PASSIVE = "PASSIVE"


def usable_cores() -> int:
    """The cores this process may run on (``os.sched_getaffinity`` where the platform has it)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def _positive_int(text: str | None) -> int | None:
    try:
        value = int(text) if text else None
    except ValueError:
        return None
    return value if value and value > 0 else None


def configure_openmp(environ=os.environ) -> int:
    """Set the OpenMP wait policy (passive unless set) and thread count in ``environ`` before torch is imported;
    returns the intra-op thread count to give ``torch.set_num_threads``."""
    environ.setdefault("OMP_WAIT_POLICY", PASSIVE)
    threads = _positive_int(environ.get("OMP_NUM_THREADS")) or usable_cores()
    environ["OMP_NUM_THREADS"] = str(threads)
    return threads
