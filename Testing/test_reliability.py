"""Nothing lost, every error one clear line (issue: SIGTERM, kill, unwritable outputs): outputs checked before any
work and written whole or not at all; SIGTERM and SIGHUP cancel like Ctrl-C; a killed command leaves no worker and
no folder behind for long; worker start failures classified; every computed slice delivered before a cancel; a
damaged model refused before the job is accepted. Through the real command and worker, signals sent by PID."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from slicerlib_testing import CLI_TIMEOUT_S, MODEL_NAME, lesion_volume, read_seg_nrrd_with_slicerio

from SDSegSlicerLib import headless, outputs, temp_folders
from SDSegSlicerLib.atomic import atomic_output
from sdseg.checkpoint import save_model
from sdseg.models import build_model
from sdseg.worker import protocol, server


# --- outputs checked first, written atomically -------------------------------------------------------------------

def unwritable(tmp_path):
    """Outputs that cannot be written, with what the one line must say."""
    (tmp_path / "text.nrrd").write_text("a file")
    (tmp_path / "taken.seg.nrrd").mkdir()
    return [(tmp_path / "text.nrrd" / "x.seg.nrrd", "text.nrrd is a file, not a folder; choose another -o"),
            (Path("/sys/sdseg-test/x.seg.nrrd"), "cannot create the folder /sys/sdseg-test"),
            (tmp_path / "taken.seg.nrrd", "taken.seg.nrrd is a folder; choose another -o")]


def test_unwritable_outputs_are_one_line_before_any_work(tmp_path, capsys, worker_env):
    volume = lesion_volume(tmp_path / "ct.nrrd", (3, 8, 8))
    for output, message in unwritable(tmp_path):
        assert headless.main(["segment", str(volume), "-o", str(output), "--model", MODEL_NAME]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and "Starting the worker" not in err, err
        assert "ERR|" not in err and "Traceback" not in err


def test_too_little_space_is_found_before_any_work(tmp_path, capsys, monkeypatch, worker_env):
    volume = lesion_volume(tmp_path / "ct.nrrd", (3, 8, 8))
    monkeypatch.setattr(outputs.shutil, "disk_usage", lambda folder: type("Usage", (), {"free": 2 ** 20})())
    assert headless.main(["segment", str(volume), "-o", str(tmp_path / "o.seg.nrrd"), "--model", MODEL_NAME]) == 2
    err = capsys.readouterr().err
    assert "1 MB free in" in err and "free some space or choose another -o" in err
    assert not list(tmp_path.glob("o*"))


def test_an_output_is_replaced_whole_or_not_at_all(tmp_path):
    good = tmp_path / "result.seg.nrrd"
    good.write_text("the good result")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_output(good) as temporary:
            assert temporary.parent == tmp_path and temporary.name.endswith("result.seg.nrrd")
            temporary.write_text("half a fi")
            raise RuntimeError("disk full")
    assert good.read_text() == "the good result" and sorted(p.name for p in tmp_path.iterdir()) == [good.name]
    with atomic_output(good) as temporary:
        temporary.write_text("the new result")
    assert good.read_text() == "the new result" and sorted(p.name for p in tmp_path.iterdir()) == [good.name]


# --- signals and killed commands -------------------------------------------------------------------------------------

def children(pid: int) -> list[int]:
    """PIDs whose parent is ``pid`` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def gone(pid: int, within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1][:3]:
            return True
        time.sleep(0.2)
    return False


def start_long_run(tmp_path, env, *options):
    """The command on a 40-slice job (one 40-step pass per slice), started in its own temporary folder; returns it
    once its first slice is reported, with its worker's PID."""
    volume = lesion_volume(tmp_path / "long.nrrd", (40, 20, 20))
    (tmp_path / "tmp").mkdir(exist_ok=True)
    process = subprocess.Popen(
        [sys.executable, "-m", "SDSegSlicerLib.headless", "segment", str(volume), "-o", str(tmp_path / "long.seg.nrrd"),
         "--model", MODEL_NAME, "--samples", "2", "--steps", "40", "--batch-size", "2", "--device", "cpu", *options],
        env={**env, "TMPDIR": str(tmp_path / "tmp")}, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines = []
    for line in process.stderr:
        lines.append(line)
        if re.search(r"segmenting +\[[#-]+\] [1-9]\d*/40 slices", line):
            break
    workers = children(process.pid)
    assert len(workers) == 1, "".join(lines)
    return process, workers[0], lines


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_sigterm_and_sighup_cancel_like_ctrl_c(tmp_path, worker_env, signum):
    process, worker, lines = start_long_run(tmp_path, worker_env)
    process.send_signal(signum)
    try:
        stderr = "".join(lines) + process.communicate(timeout=CLI_TIMEOUT_S)[1]
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 128 + signum, stderr
    assert f"Cancelling ({signal.Signals(signum).name}" in stderr and "Cancelled after" in stderr
    summary = json.loads((tmp_path / "long_summary.json").read_text())
    assert summary["state"] == "cancelled" and 1 <= summary["slices_done"] < 40
    assert read_seg_nrrd_with_slicerio(tmp_path / "long.seg.nrrd")[0]["sample 1"].shape == (40, 20, 20)
    assert gone(worker, 10) and not list((tmp_path / "tmp").iterdir())  # no worker, no job folder left
    assert not list(tmp_path.glob(".partial-*"))


def test_a_killed_command_leaves_no_worker_and_its_folder_goes_with_the_next_run(tmp_path, worker_env):
    process, worker, _ = start_long_run(tmp_path, worker_env)
    process.kill()
    process.wait(CLI_TIMEOUT_S)
    assert gone(worker, 30), "the worker outlived its client"
    (orphan,) = (tmp_path / "tmp").glob("sdseg-jobs-*")
    assert (orphan / temp_folders.OWNER_FILE).read_text() == str(process.pid)
    result = subprocess.run([sys.executable, "-m", "SDSegSlicerLib.headless", "models"], capture_output=True,
                            text=True, timeout=CLI_TIMEOUT_S, env={**worker_env, "TMPDIR": str(tmp_path / "tmp")})
    assert result.returncode == 0, result.stderr
    assert not orphan.exists() and not list((tmp_path / "tmp").iterdir())


# --- worker start failures --------------------------------------------------------------------------------------

def test_worker_start_failures_are_one_line_each(tmp_path, worker_env, capsys):
    no_backend = Path(sys.base_prefix) / "bin" / "python3"  # this Python without the virtual environment's packages
    cases = [(["models", "--python", "/bin/false"],
              "The worker ended on start with exit code 1: '/bin/false' may not be a working Python 3 interpreter"),
             (["models", "--python", str(tmp_path / "nowhere" / "python")],
              f"no usable Python interpreter at '{tmp_path / 'nowhere' / 'python'}' (No such file or directory)"),
             (["models", "--python", str(no_backend)], f"'{no_backend}' lacks the backend (no module named '")]
    for args, message in cases:
        assert headless.main(args) == 1
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line != "Starting the worker ..."]
        assert len(lines) == 1 and message in lines[0] and "out of memory" not in err.lower(), err


# --- the worker: slices delivered before a cancel, damaged models refused before `accepted` --------------------------

class CancelDuringSecondPass(torch.nn.Module):
    """A real tiny model whose second forward pass asks the worker to cancel the job (as a client would while it
    runs)."""

    def __init__(self, model, cancel):
        super().__init__()
        self.model, self.cancel, self.config, self.kind = model, cancel, model.config, model.kind
        self.steps_config_key, self.passes = model.steps_config_key, 0

    def sample(self, image, num_samples, steps=None, generator=None, sampler=None):
        self.passes += 1
        if self.passes == 2:
            self.cancel()
        return self.model.sample(image, num_samples, steps, generator, sampler)


class Messages(list):
    def write(self, line):
        self.append(json.loads(line))

    def flush(self):
        pass


def test_every_computed_slice_is_delivered_before_a_cancel(tmp_path, monkeypatch):
    volume = lesion_volume(tmp_path / "ct.nrrd", (17, 16, 16))
    torch.manual_seed(0)
    sent = Messages()
    worker = server.Worker(sent)
    model = CancelDuringSecondPass(build_model("ambiguous", "tiny").eval(), lambda: worker._cancel.add("job"))
    monkeypatch.setattr(server.checkpoint, "load_model", lambda folder, device: model)
    save_model(model.model, tmp_path / "model")
    job = protocol.parse_request(json.dumps({"type": "segment", "job_id": "job", "volume": str(volume),
                                             "job_dir": str(tmp_path / "job"), "model": str(tmp_path / "model"),
                                             "samples": 2, "steps": 2, "batch_size": 16, "device": "cpu"}))
    worker._waiting.add("job")
    worker._run_job(job)
    slices = [m["index"] for m in sent if m["type"] == "slice"]
    # The first slice alone, then 8 in a pass during which the cancel came: those 8 are delivered, the third pass
    # never runs.
    assert model.passes == 2
    assert slices == list(range(9)) and sent[-1] == {"type": "cancelled", "job_id": "job", "slices": 9}


def test_a_truncated_weights_file_is_bad_model_instead_of_accepted(tmp_path):
    volume = lesion_volume(tmp_path / "ct.nrrd", (3, 8, 8))
    torch.manual_seed(0)
    folder = save_model(build_model("ambiguous", "tiny"), tmp_path / "damaged")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    sent = Messages()
    worker = server.Worker(sent)
    job = protocol.parse_request(json.dumps({"type": "segment", "job_id": "j", "volume": str(volume),
                                             "job_dir": str(tmp_path / "job"), "model": str(folder)}))
    worker._run_job(job)
    assert [m["type"] for m in sent] == ["error"] and sent[0]["code"] == protocol.BAD_MODEL
    assert "model.safetensors" in sent[0]["message"] and "truncated" in sent[0]["message"]
    assert not np.any([m["type"] == "accepted" for m in sent])
