"""The worker's life seen from `sdseg-slicer` and SegmentationRun, with a REAL worker subprocess and a tiny real
model: Ctrl-C cancels cleanly and keeps what arrived, a killed worker is a clear error that keeps the result nodes,
`sdseg-slicer models` lists the models from the worker's hello."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
from slicerlib_testing import (BRIGHT_3D_MODEL_NAME, BRIGHT_CT_MODEL_NAME, BRIGHT_MODEL_NAME, CLI_TIMEOUT_S,
                               MODEL_NAME, lesion_volume, read_seg_nrrd_with_slicerio)

from SDSegSlicerLib import headless, worker_client
from sdseg import registry
from SDSegSlicerLib.run import SegmentationRun
from SDSegSlicerLib.worker_client import WorkerClient, WorkerError


@pytest.mark.parametrize("mode", [[], ["--point-ijk", "10,10,20", "--stop-after-empty", "40"]],
                         ids=["whole volume", "prompt"])
def test_ctrl_c_cancels_and_keeps_what_arrived(tmp_path, worker_env, mode):
    """Ctrl-C is sent when the command reports its first slice (a line printed at once, never throttled); each
    slice is one forward pass of 40 steps (~0.5 s), so 40 slices (a prompt: 20 each way, not stopping at empty
    slices) leave ample time for the cancel to arrive however slow the machine, and a run that ignored it would
    end "done" with exit status 0."""
    volume = lesion_volume(tmp_path / "long.nrrd", (40, 20, 20))
    output = tmp_path / "long.seg.nrrd"
    process = subprocess.Popen(
        [sys.executable, "-m", "SDSegSlicerLib.headless", "segment", str(volume), "-o", str(output), "--model",
         MODEL_NAME, "--samples", "2", "--steps", "40", "--batch-size", "2", "--device", "cpu", *mode],
        env=worker_env, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        # Ctrl-C handling as in a terminal, even when this test runs as a background job (which ignores SIGINT
        # and passes that on to its children).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines, interrupted = [], False
    try:
        for line in process.stderr:
            lines.append(line)
            progress = re.search(r"(\d+)(/\d+)? slices", line)
            if progress and int(progress.group(1)) >= 1:
                process.send_signal(signal.SIGINT)
                interrupted = True
                break
        stderr = "".join(lines) + process.communicate(timeout=CLI_TIMEOUT_S)[1]
    finally:
        if process.poll() is None:
            process.kill()
    assert interrupted, f"no slice was reported: {stderr}"
    assert process.returncode == headless.exit_status_of(signal.SIGINT) == 130, stderr
    assert "Traceback" not in stderr and "Cancelled after" in stderr
    summary = json.loads((tmp_path / "long_summary.json").read_text())
    assert summary["state"] == "cancelled" and 1 <= summary["slices_done"] < 40
    assert summary["slices_total"] == (None if mode else 40)
    masks, _ = read_seg_nrrd_with_slicerio(output)
    assert masks["sample 1"].shape == (40, 20, 20)
    variance = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "long_variance.nrrd")))
    samples = np.array([masks["sample 1"], masks["sample 2"]])
    np.testing.assert_allclose(variance, samples.mean(axis=0) * (1 - samples.mean(axis=0)), atol=1e-6)


def test_worker_start_keeps_calling_on_wait_until_the_hello(worker_env):
    """What keeps Slicer's GUI responsive while the worker imports PyTorch: start() calls on_wait() between short
    polls instead of blocking until the hello arrives."""
    calls = []
    client = WorkerClient()
    try:
        started = time.monotonic()
        hello = client.start(120, on_wait=lambda: calls.append(time.monotonic()))
        waited = time.monotonic() - started
    finally:
        client.stop()
    assert hello["type"] == "hello" and MODEL_NAME in [m["name"] for m in hello["models"]]
    # Importing torch takes seconds, polls last WAIT_POLL_S: called many times, all before start() returned.
    # (A start() that blocked until the hello would call it at most once.) The bound is 20x generous.
    assert len(calls) >= 2 and calls[-1] - started <= waited
    assert len(calls) >= waited / (20 * worker_client.WAIT_POLL_S), f"{len(calls)} calls in {waited:.1f} s"


def test_worker_start_keeps_calling_on_wait_until_it_gives_up(tmp_path):
    """A worker that never says hello (an interpreter that only sleeps): on_wait is called throughout the wait,
    then start() fails with a clear error and leaves no process behind."""
    sleeper = tmp_path / "sleeping-python"
    sleeper.write_text("#!/bin/sh\nexec sleep 60\n")
    sleeper.chmod(0o755)
    calls = []
    client = WorkerClient(python_executable=str(sleeper))
    with pytest.raises(WorkerError, match="did not start within 2 s"):
        client.start(2, on_wait=lambda: calls.append(time.monotonic()))
    assert len(calls) >= 2 and not client.is_running()
    with pytest.raises(ProcessLookupError):
        os.kill(client.pid, 0)  # stopped (killed) and reaped


def test_killed_worker_is_a_clear_error_and_keeps_the_result_nodes(tmp_path, worker_env):
    volume = lesion_volume(tmp_path / "ct.nrrd", (3, 16, 16))
    scene = slicer.vtkMRMLScene()
    client = WorkerClient()
    try:
        bundled = sorted(path.parent.name for path in registry.bundled_models_dir().glob("*/config.json"))
        names = [m["name"] for m in client.start(120)["models"]]
        ours = [MODEL_NAME, BRIGHT_MODEL_NAME, BRIGHT_3D_MODEL_NAME, BRIGHT_CT_MODEL_NAME]
        assert sorted(names[:len(ours)]) == sorted(ours) and sorted(names[len(ours):]) == bundled
        run = SegmentationRun(scene, client, {"volume": str(volume), "model": MODEL_NAME, "samples": 2,
                                              "steps": 2, "device": "cpu"})
        job_dir = client.job_dir(run.start())
        assert job_dir.is_dir()
        deadline = time.monotonic() + 60
        while run.accepted is None and run.process_messages(0.2) == "running":
            assert time.monotonic() < deadline
        os.kill(client.pid, signal.SIGKILL)
        while run.process_messages(0.2) == "running":
            assert time.monotonic() < deadline
        assert run.state == "error" and run.error_code == "worker_crashed"
        assert "stopped unexpectedly" in run.error_message and "exit code -9" in run.error_message
        assert "\n" not in run.error_message
        assert run.segmentation_node is not None and run.segmentation_node.GetScene() is scene
        assert not client.is_running() and not job_dir.exists()
    finally:
        client.stop()
    assert not job_dir.parent.exists()



def test_models_lists_the_installed_models(worker_env, capsys):
    assert headless.main(["models"]) == 0
    out = capsys.readouterr().out
    assert re.search(rf"^{MODEL_NAME} +ambiguous", out, re.MULTILINE)
    assert "device cpu" in out


def test_models_marks_the_default_models(capsys):
    """With the bundled models, `sdseg-slicer models` marks the ones a job without --model uses (as `sdseg models`):
    the general default and the defaults for CT and PET."""
    from sdseg.registry import DEFAULT_CT_MODEL, DEFAULT_MODEL, DEFAULT_PET_MODEL

    assert headless.main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [line.split() for line in lines]
    marks = {row[0]: " ".join(row[1:4]).split(")")[0] + ")"
             for row in rows if row[1:2] and row[1].startswith("(default")}
    assert marks == {DEFAULT_MODEL: "(default)", DEFAULT_CT_MODEL: "(default for CT)",
                     DEFAULT_PET_MODEL: "(default for PET)"}, rows
    listed = {name: line for line in lines for name in marks if line.startswith(f"{name} (")}
    kind_columns = {line.index("  sdseg ") for line in listed.values()}  # one column, however long the mark
    assert len(kind_columns) == 1, lines
    assert not any(line.split("  sdseg ")[1].strip().startswith(f"{name}:") for name, line in listed.items()), lines
