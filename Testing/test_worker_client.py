"""How SDSegSlicerLib.worker_client chooses the worker's interpreter and environment, outside and (with the
application object that only the 3D Slicer application gives the real `slicer` module) inside Slicer."""

from __future__ import annotations

import os
import sys
import time
import types

import pytest
import slicer

from SDSegSlicerLib import worker_client
from SDSegSlicerLib.worker_client import WorkerClient, WorkerError, default_python_executable, worker_environment

PYTHON_SLICER = "PythonSlicer.exe" if os.name == "nt" else "PythonSlicer"


@pytest.fixture()
def inside_slicer(tmp_path, monkeypatch):
    """The application object of Slicer installed in tmp_path/Slicer (sys.executable = its launcher, no
    PythonSlicer on the PATH); returns the installation's bin folder."""
    home = tmp_path / "Slicer"
    (home / "bin").mkdir(parents=True)
    launcher = home / "Slicer"
    launcher.write_text("")
    monkeypatch.setattr(slicer, "app", types.SimpleNamespace(slicerHome=str(home)), raising=False)
    monkeypatch.setattr(sys, "executable", str(launcher))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    return home / "bin"


def test_outside_slicer_the_worker_runs_in_this_python():
    assert getattr(slicer, "app", None) is None  # slicer-core: MRML without the application
    assert default_python_executable() == sys.executable


def test_inside_slicer_the_worker_runs_in_python_slicer_never_in_slicer_itself(inside_slicer):
    with pytest.raises(WorkerError, match="Cannot find Slicer's Python interpreter"):
        default_python_executable()
    python_slicer = inside_slicer / PYTHON_SLICER
    python_slicer.write_text("")
    assert default_python_executable() == str(python_slicer)


def test_an_interpreter_set_in_the_panel_needs_no_python_slicer(inside_slicer, tmp_path):
    with pytest.raises(WorkerError, match="'Python' field"):
        WorkerClient()
    client = WorkerClient(python_executable=str(tmp_path / "venv" / "bin" / "python"))
    assert client.python_executable == str(tmp_path / "venv" / "bin" / "python")


def test_an_external_interpreter_gets_none_of_slicers_python_variables():
    env = {"PYTHONHOME": "/slicer/lib/Python", "PYTHONPATH": "/slicer/lib/site-packages", "KEEP": "1"}
    external = worker_environment(env, external_interpreter=True)
    assert "PYTHONHOME" not in external and external["KEEP"] == "1"
    assert "/slicer/lib/site-packages" not in external.get("PYTHONPATH", "")
    own = worker_environment(env, external_interpreter=False)
    assert own["PYTHONHOME"] == env["PYTHONHOME"] and env["PYTHONPATH"] in own["PYTHONPATH"].split(os.pathsep)
    root = worker_client.backend_root()
    if root is not None:  # a source checkout: the backend comes first on the worker's path
        assert own["PYTHONPATH"].split(os.pathsep)[0] == str(root) == external["PYTHONPATH"]
    assert own["PYTHONUNBUFFERED"] == "1" and own["PYTHONIOENCODING"] == "utf-8"


def test_client_and_worker_agree_on_the_protocol_version_and_defaults():
    from sdseg.worker import protocol

    from SDSegSlicerLib import prompts, run

    assert worker_client.PROTOCOL_VERSION == protocol.PROTOCOL_VERSION
    assert worker_client.DUPLICATE_JOB == protocol.DUPLICATE_JOB
    assert worker_client.WORKER_CRASHED == protocol.WORKER_CRASHED
    assert (run.DEFAULT_SAMPLES, run.MAX_SAMPLES) == (protocol.SEGMENT_DEFAULTS["samples"], protocol.MAX_SAMPLES)
    assert run.DEVICES == protocol.DEVICES
    assert prompts.DEFAULT_STOP_AFTER_EMPTY == protocol.PROMPT_DEFAULTS["stop_after_empty"]


def test_client_copies_of_the_workers_file_types_and_default_rules_agree():
    """The client cannot import sdseg: the file types it refuses early, the rules its texts state and its voxel
    volume are copies."""
    from sdseg import geometry, modality_check, registry, volume_io

    from SDSegSlicerLib import batch, stats

    assert set(batch.VOLUME_SUFFIXES) == set(volume_io.FILE_SUFFIXES)
    assert [(key, kind) for key, kind, _, _ in worker_client.DEFAULT_IMAGE_KINDS] == [
        (key, kind) for _, _, key, kind in registry.IMAGE_DEFAULTS]
    rules = {kind: rule for _, kind, _, rule in worker_client.DEFAULT_IMAGE_KINDS}
    assert f"below {modality_check.CT_AIR_OR_FAT_HU:g} HU" in rules["CT"]
    assert f"at most {modality_check.PET_MAX_SUV:g}" in rules["PET"]
    sheared = [[0.7, 0.1, 0.0, 5.0], [0.0, -0.8, 0.2, 1.0], [0.0, 0.0, 2.5, -3.0], [0.0, 0.0, 0.0, 1.0]]
    assert stats.voxel_volume_ml(sheared) == pytest.approx(geometry.voxel_ml(sheared)) == 0.7 * 0.8 * 2.5 / 1000.0


def test_a_job_id_still_in_use_is_refused_in_one_line(worker_env, tmp_path):
    """The client refuses an ID whose job has not ended (before, the folder's mkdir raised FileExistsError and the
    worker's refusal ended the running job's bookkeeping), and one whose folder was not discarded; once discarded
    the ID is free again."""
    client = WorkerClient()
    try:
        client.start(120)
        job = {"job_id": "same", "volume": str(tmp_path / "missing.nrrd")}
        assert client.submit(job) == "same"
        with pytest.raises(WorkerError, match="^Job same is still running: give the new job another job_id.$"):
            client.submit(job)  # its error is not yet polled: the job has not ended for the client
        messages, deadline = [], time.monotonic() + 120
        while not any(m.get("type") == "error" for m in messages) and time.monotonic() < deadline:
            messages += client.poll(1.0)
        assert [m["job_id"] for m in messages if m.get("type") == "error"] == ["same"]  # its end (no volume)
        with pytest.raises(WorkerError, match="files of an earlier job same are still there"):
            client.submit(job)
        client.discard_job("same")
        assert client.submit(job) == "same"
    finally:
        client.stop()
