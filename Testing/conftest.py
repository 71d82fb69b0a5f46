"""Suite-wide safety net against CPU oversubscription: the tests share a small machine, where more than one thread
per process makes them many times slower. Subprocesses inherit OMP_NUM_THREADS=1 (unless it is set already) and
this process runs torch, when installed, with one thread."""

from __future__ import annotations

import importlib.util
import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    if importlib.util.find_spec("torch") is not None:
        import torch

        torch.set_num_threads(1)
    yield
