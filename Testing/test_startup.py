"""Start-up of the real worker and command lines: the worker's OpenMP settings are made before torch loads and its
thread count is the one it was given (or the cores it may use); `--help`, argument errors and `models` load none of
vtk / slicer-core / SimpleITK / torch; a reader that goes away (`sdseg -h | head`) gets no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from slicerlib_testing import CLI_TIMEOUT_S, MODEL_NAME, process_alive, worker_pids

from SDSegSlicerLib.worker_client import WorkerClient

HEAVY_MODULES = ("vtk", "slicer", "SimpleITK", "torch")
SDSEG = ["-m", "sdseg.cli"]
SDSEG_SLICER = ["-m", "SDSegSlicerLib.headless"]


def worker_hello(env: dict) -> dict:
    client = WorkerClient(env=env)
    try:
        return client.start(timeout=CLI_TIMEOUT_S)
    finally:
        client.stop()


def test_worker_uses_the_threads_it_was_given_with_a_passive_wait_policy(worker_env):
    runtime = worker_hello(dict(worker_env, OMP_NUM_THREADS="3"))["runtime"]
    assert runtime == {"threads": 3, "omp_wait_policy": "PASSIVE", "openmp_set_before_torch": True}


def test_the_worker_says_hello_before_it_loads_the_job_code(worker_env, tmp_path):
    """SimpleITK and the inference code load after the hello (the client prepares its job meanwhile): a SimpleITK
    whose import never ends does not hold the hello back."""
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "SimpleITK.py").write_text("import time\nwhile True:\n    time.sleep(1)\n")
    client = WorkerClient(env=dict(worker_env, PYTHONPATH=os.pathsep.join([str(shadow), worker_env["PYTHONPATH"]])))
    try:
        assert client.start(timeout=CLI_TIMEOUT_S)["runtime"]["openmp_set_before_torch"]
    finally:
        client.stop(timeout=1.0)  # it hangs in that import: killed


def test_worker_keeps_the_users_wait_policy(worker_env):
    assert worker_hello(dict(worker_env, OMP_WAIT_POLICY="ACTIVE"))["runtime"]["omp_wait_policy"] == "ACTIVE"


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity on this platform")
def test_worker_without_a_setting_uses_the_cores_it_may_run_on(worker_env):
    env = {name: value for name, value in worker_env.items() if name != "OMP_NUM_THREADS"}
    allowed = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(allowed)})  # the worker inherits this process's affinity: one core
    try:
        client = WorkerClient(env=env)
        client.start(timeout=CLI_TIMEOUT_S)  # in the try: the affinity comes back whatever happens
    finally:
        os.sched_setaffinity(0, allowed)
    try:
        assert client.hello["runtime"]["threads"] == 1
    finally:
        client.stop()


def test_sdseg_slicer_threads_option_reaches_the_worker(worker_env):
    result = subprocess.run([sys.executable, *SDSEG_SLICER, "models", "--threads", "3"], env=worker_env,
                            capture_output=True, text=True, timeout=CLI_TIMEOUT_S)
    assert result.returncode == 0, result.stderr
    assert "3 CPU threads" in result.stdout.splitlines()[0]


def imported_top_level_modules(argv: list[str], env: dict) -> tuple[set, subprocess.CompletedProcess]:
    """The top-level packages a real CLI process imported (`python -X importtime` lists every import on stderr)."""
    result = subprocess.run([sys.executable, "-X", "importtime", *argv], env=env, capture_output=True, text=True,
                            timeout=CLI_TIMEOUT_S)
    names = {line.split("|")[-1].strip().split(".")[0] for line in result.stderr.splitlines()
             if line.startswith("import time:")}
    return names, result


@pytest.mark.parametrize("argv, status", [
    (SDSEG + ["--help"], 0), (SDSEG + ["no-such-command"], 2), (SDSEG + ["models"], 0),
    (SDSEG + ["train", "--help"], 0), (SDSEG + ["evaluate", "--help"], 0), (SDSEG + ["train", "--model", "x"], 2),
    (SDSEG + ["evaluate", "--model", "m", "--data", "d", "--samples", "0"], 2),
    (SDSEG + ["preprocess", "--help"], 0), (SDSEG + ["preprocess", "--source", "no-such", "--out", "o"], 2),
    (SDSEG_SLICER + ["--help"], 0), (SDSEG_SLICER + ["segment", "--help"], 0), (SDSEG_SLICER + ["batch", "--help"], 0),
    (SDSEG_SLICER + ["segment", "in.nrrd"], 2), (SDSEG_SLICER + ["segment", "no-such.nrrd", "-o", "x.seg.nrrd"], 2),
    (SDSEG_SLICER + ["segment", "x.nrrd", "-o", "x.seg.nrrd", "--samples", "0"], 2),
])
def test_command_line_answers_without_heavy_imports(argv, status, worker_env, tmp_path):
    names, result = imported_top_level_modules(argv, worker_env)
    assert result.returncode == status, result.stderr[-2000:]
    assert names & {"sdseg", "SDSegSlicerLib"}  # the import list was read
    assert not names & set(HEAVY_MODULES), sorted(names & set(HEAVY_MODULES))


def test_sdseg_slicer_models_loads_torch_in_the_worker_only(worker_env):
    names, result = imported_top_level_modules(SDSEG_SLICER + ["models"], worker_env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "torch" in result.stdout  # the worker's torch version, from its hello
    assert not names & set(HEAVY_MODULES)


@pytest.mark.parametrize("argv", [SDSEG + ["-h"], SDSEG + ["models"], SDSEG_SLICER + ["-h"],
                                  SDSEG_SLICER + ["segment", "-h"], SDSEG_SLICER + ["models"]])
def test_a_reader_that_went_away_gets_no_traceback(argv, worker_env):
    """`sdseg -h | head`: the pipe's reading end is closed before the command writes (as when `head` has exited)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run([sys.executable, *argv], env=worker_env, stdout=write_end, stderr=subprocess.PIPE,
                                text=True, timeout=CLI_TIMEOUT_S)
    finally:
        os.close(write_end)
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr and "Errno" not in result.stderr, \
        result.stderr


CONCURRENT_IMPORTS = """
import sys, threading, time
import torch
from sdseg.checkpoint import load_model
from sdseg.models import import_model_classes
threading.Thread(target=import_model_classes, daemon=True).start()  # as the worker does after its hello
while "diffusers" not in sys.modules:  # the thread is inside diffusers' import: a job loads a model now
    time.sleep(0.001)
print(type(load_model(sys.argv[1])).__name__)
"""


def test_a_job_loading_a_model_while_the_worker_imports_the_classes_gets_them(worker_env, tiny_models_dir):
    """The worker imports the model classes in a thread after its hello; a job's model load then must wait for
    them (diffusers replaces its module while it initialises: a second importer would find no classes)."""
    result = subprocess.run([sys.executable, "-c", CONCURRENT_IMPORTS, str(tiny_models_dir / MODEL_NAME)],
                            env=worker_env, capture_output=True, text=True, timeout=CLI_TIMEOUT_S)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["AmbiguousDiffusionModel"]


def blocking_import(name: str) -> str:
    """The text of a module that, imported, marks ``<name>-loading`` in its folder, waits there until the test
    creates ``release``, then fails as a missing module."""
    return f"""import pathlib, time
folder = pathlib.Path(__file__).parent
(folder / "{name}-loading").touch()
while not (folder / "release").exists():
    time.sleep(0.02)
raise ImportError("No module named {name}")
"""


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the processes from Linux /proc")
def test_segment_loads_mrml_while_its_worker_starts_and_stops_the_worker_when_mrml_is_missing(worker_env, tmp_path):
    """`segment` imports slicer-core while its worker is still importing PyTorch (here: until the test releases both
    imports); without slicer-core it says what to install, in one line, and its worker does not outlive it."""
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "slicer.py").write_text(blocking_import("slicer"))
    (shadow / "torch.py").write_text(blocking_import("torch"))  # only the worker imports torch
    sample = Path(__file__).resolve().parents[1] / "Resources" / "SampleData" / "sample.nrrd"
    command = subprocess.Popen(
        [sys.executable, *SDSEG_SLICER, "segment", str(sample), "-o", str(tmp_path / "x.seg.nrrd"), "--point-ijk",
         "45,31,16"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=dict(worker_env, PYTHONPATH=os.pathsep.join([str(shadow), worker_env["PYTHONPATH"]])))
    both = [shadow / "slicer-loading", shadow / "torch-loading"]
    try:
        deadline = time.monotonic() + CLI_TIMEOUT_S
        while not all(path.exists() for path in both) and command.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        loading = [path.name for path in both if path.exists()]
        workers = worker_pids(command.pid)
        (shadow / "release").touch()
        _, stderr = command.communicate(timeout=CLI_TIMEOUT_S)
    finally:
        command.kill()
    assert loading == ["slicer-loading", "torch-loading"] and len(workers) == 1, (loading, workers)
    assert command.returncode == 2, stderr[-2000:]
    assert "Traceback" not in stderr
    assert stderr.splitlines()[-1].endswith("pip install 'sdseg-slicer[headless]'")
    assert not list(tmp_path.glob("x*"))
    while process_alive(workers[0]) and time.monotonic() < deadline:  # stopped, not orphaned
        time.sleep(0.02)
    assert not process_alive(workers[0]), "the command ended before its worker"
