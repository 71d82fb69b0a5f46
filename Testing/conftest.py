"""Suite-wide safety net against CPU oversubscription: the tests share a small machine, where more than one thread
per process makes them many times slower. Subprocesses inherit OMP_NUM_THREADS=1 (unless it is set already) and
this process runs torch, when installed, with one thread. Also the fixtures of the end-to-end tests of
SDSegSlicerLib (a tiny real model, the environment of a real worker / CLI subprocess); they import numpy, torch
and the test helpers inside, so that OMP_NUM_THREADS is set before any of them loads."""

from __future__ import annotations

import importlib.util
import locale
import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def the_process_locale_restored():
    """GDCM (SimpleITK's DICOM writer) sets the C locale of the whole process and leaves it: later tests would then
    decode their subprocesses' UTF-8 output as ASCII. Each test starts from the environment's locale."""
    yield
    locale.setlocale(locale.LC_ALL, "")


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    if importlib.util.find_spec("torch") is not None:
        import torch

        torch.set_num_threads(1)
    yield


@pytest.fixture(scope="module")
def tiny_models_dir(tmp_path_factory):
    """A models folder with the tiny ambiguous model (random weights), named MODEL_NAME, and the threshold model
    BRIGHT_MODEL_NAME (intensity above the middle of BRIGHT_WINDOW, on BRIGHT_MODEL_SIZE^2 inputs: its masks are
    known exactly), also as BRIGHT_3D_MODEL_NAME with the prompt channels point, box and previous, at its recipe's
    crop scale always (its scale rule passes no scale: the panel's click, which cannot force a scale, gives exact
    masks too), and as BRIGHT_CT_MODEL_NAME for CT only. It imports torch in the test process only; the MRML side
    never does."""
    import torch
    from slicerlib_testing import (BRIGHT_3D_MODEL_NAME, BRIGHT_CT_MODEL_NAME, BRIGHT_MODEL_NAME, BRIGHT_MODEL_SIZE,
                                   BRIGHT_WINDOW, MODEL_NAME)

    from sdseg.checkpoint import save_model
    from sdseg.models import build_model

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("models")
    save_model(build_model("ambiguous", "tiny"), folder / MODEL_NAME)
    bright = {"image_size": BRIGHT_MODEL_SIZE, "threshold": 0.0, "polarity": "above",
              "crop": {"in_plane_voxels": BRIGHT_MODEL_SIZE, "lesion_margin": 1.2},
              "preprocessing": {"normalization": "ct_window", "window": list(BRIGHT_WINDOW)}}
    save_model(build_model("threshold", "tiny", **bright), folder / BRIGHT_MODEL_NAME,
               card="# Bright voxels: normalised intensity > 0 (test model)")
    save_model(build_model("threshold", "tiny", **bright, modalities=["CT"]), folder / BRIGHT_CT_MODEL_NAME,
               card="# Bright voxels, for CT only (test model)")
    save_model(build_model("threshold", "tiny", **bright, image_channels=4,
                           prompt_channels=["point", "box", "previous"],
                           propagation={"scale_rule": {"min_score": 1.1}}),  # no scale passes: always the recipe's
               folder / BRIGHT_3D_MODEL_NAME, card="# Bright voxels, taking the previous slice's mask (test model)")
    return folder


@pytest.fixture()
def worker_env(tiny_models_dir, monkeypatch):
    """Environment of CLI subprocesses and of workers started by the test: the lib importable, the tiny model
    found, one thread per process (the test machine is small)."""
    from slicerlib_testing import lib_python_path

    monkeypatch.setenv("SDSEG_MODELS_PATH", str(tiny_models_dir))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("PYTHONPATH", lib_python_path())
    return dict(os.environ)



# --- CI: the browser tests must run ------------------------------------------------------------------------------

BROWSER_TEST_FILE = "test_web.py"
_skipped_browser_tests: list[str] = []


def pytest_runtest_logreport(report):
    if report.skipped and os.path.basename(report.nodeid.split("::")[0]) == BROWSER_TEST_FILE:
        _skipped_browser_tests.append(report.nodeid)


def pytest_sessionfinish(session, exitstatus):
    """Under CI=true a skipped browser test (no Chromium, no Playwright, no trame-slicer) fails the run: CI must show
    that the web page was tested in a real browser, not skip it quietly."""
    if os.environ.get("CI", "").lower() == "true" and _skipped_browser_tests:
        print(f"\nCI=true: {len(_skipped_browser_tests)} browser test(s) were skipped ({_skipped_browser_tests[0]}, "
              "...): install Chromium (apt-get install chromium) and the [test] extra.")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
