"""`sdseg-slicer batch` over a small cohort with a tiny real model: a local process pool and a local Ray cluster
(started by the test), prompts per volume, a corrupt volume recorded without stopping the others, and resuming."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from slicerlib_testing import CLI_TIMEOUT_S, MODEL_NAME, lesion_volume, read_seg_nrrd_with_slicerio

from SDSegSlicerLib import batch, headless, preview
from SDSegSlicerLib.prompts import WHOLE_VOLUME_WARNING

OPTIONS = ["--model", MODEL_NAME, "--samples", "2", "--steps", "2", "--device", "cpu"]


@pytest.fixture
def cohort(tmp_path):
    folder = tmp_path / "cohort"
    folder.mkdir()
    lesion_volume(folder / "alpha.nrrd", (3, 16, 16), seed=1)
    lesion_volume(folder / "beta.nii.gz", (4, 16, 16), seed=2)
    (folder / "broken.nrrd").write_text("NRRD0004\nnot a volume\n")
    prompts = tmp_path / "prompts.csv"
    prompts.write_text("\ufeffid,kind,value\nbeta,point_ijk,8 8 2\nbeta,point_ijk,3;3;1\nbeta,box_ijk,0 0 0 16 16 4\n",
                       encoding="utf-8")  # a spreadsheet's "CSV UTF-8" (byte-order mark); a box is a lesion too
    return folder, prompts


def summary(out):
    with open(out / "summary.csv", newline="") as stream:
        return {row["id"]: row for row in csv.DictReader(stream)}


def check_cohort(out):
    rows = summary(out)
    assert rows["alpha"]["status"] == "done" and rows["beta"]["status"] == "done"
    assert rows["broken"]["status"] == "error" and "broken.nrrd" in rows["broken"]["error"]
    assert not rows["broken"]["error"].startswith("sdseg-slicer: error:"), rows["broken"]["error"]
    assert rows["beta"]["lesions"] == "3" and len(rows["beta"]["lesion_volumes_ml"].split(";")) == 3
    assert rows["alpha"]["lesions"] == "1"  # whole volume: one set of segments
    masks, _ = read_seg_nrrd_with_slicerio(out / "beta.seg.nrrd")
    assert "lesion 3 sample 2" in masks and masks["lesion 1 consensus"].shape == (4, 16, 16)
    return rows


def test_a_cohort_on_a_local_pool_records_failures_and_resumes(cohort, tmp_path, worker_env, capsys):
    folder, prompts = cohort
    out = folder / "results"  # inside the inputs folder: never an input itself
    arguments = ["batch", "--inputs", str(folder), "--out", str(out), "--prompts", str(prompts), "--workers", "2",
                 *OPTIONS]
    assert headless.main(arguments) == 1  # one volume failed
    err = capsys.readouterr().err
    assert "2 of 3 volumes done" in err and "broken: error: " in err
    (broken_line,) = [line for line in err.splitlines() if line.startswith("broken:")]
    assert broken_line.count("error:") == 1, broken_line  # not "broken: error: sdseg-slicer: error: ..."
    first = check_cohort(out)
    stamp = (out / "alpha.seg.nrrd").stat().st_mtime_ns
    stale = out / "broken_summary.json"  # left by an earlier run: not this run's figures
    stale.write_text(json.dumps({"state": "cancelled", "lesions": [{"volume_ml": 4.32}], "variance_mean": 0.1}))
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    assert headless.main(arguments) == 1
    again = summary(out)
    assert list(again) == ["alpha", "beta", "broken"] and again["broken"]["lesions"] == ""
    assert again["alpha"]["status"] == again["beta"]["status"] == "skipped (done before)"
    assert again["alpha"]["lesion_volumes_ml"] == first["alpha"]["lesion_volumes_ml"]
    assert (out / "alpha.seg.nrrd").stat().st_mtime_ns == stamp and again["broken"]["status"] == "error"


def test_a_cohort_on_a_local_ray_cluster(cohort, tmp_path, worker_env, capsys):
    ray = pytest.importorskip("ray")
    folder, prompts = cohort
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        assert headless.main(["batch", "--inputs", str(folder), "--out", str(tmp_path / "ray"), "--prompts",
                              str(prompts), "--ray", "local", *OPTIONS]) == 1
        check_cohort(tmp_path / "ray")
    finally:
        ray.shutdown()


def test_bad_cohorts_are_one_line(tmp_path, capsys):
    (tmp_path / "list.csv").write_text("path\nx.nrrd\n")
    (tmp_path / "empty").mkdir()
    (tmp_path / "p.csv").write_text("input,kind,value\nnope.nrrd,point_ijk,1 2 3\n")
    (tmp_path / "one").mkdir()
    lesion_volume(tmp_path / "one" / "one.nrrd", (2, 8, 8))
    for arguments, message in [
        (["--inputs", str(tmp_path / "list.csv")], "a CSV needs an 'input' column"),
        (["--inputs", str(tmp_path / "empty")], "no volume found"),
        (["--inputs", str(tmp_path / "one" / "one.nrrd")], "no such folder or .csv file"),
        (["--inputs", str(tmp_path / "one"), "--prompts", str(tmp_path / "p.csv")],
         "line 2: 'nope.nrrd' is not one of the inputs (an id, or a path relative to this CSV's folder); the ids: one"),
    ]:
        assert headless.main(["batch", "--out", str(tmp_path / "o"), *arguments]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    (tmp_path / "one" / "out").mkdir()
    assert headless.main(["batch", "--inputs", str(tmp_path / "one"), "--out", str(tmp_path / "one")]) == 2
    assert "is the --inputs folder" in capsys.readouterr().err


def test_prompt_paths_are_relative_to_the_prompts_csv_and_an_unknown_one_lists_the_ids(tmp_path, capsys):
    """A prompts CSV's `input` is relative to its own folder, not to --inputs; a row naming no input lists the ids
    (the first MAX_LISTED and how many more), in one line."""
    (tmp_path / "cohort").mkdir()
    (tmp_path / "lists").mkdir()
    (tmp_path / "cohort.csv").write_text("id,input\n" + "".join(f"v{n:02d},cohort/v{n:02d}.nrrd\n" for n in range(12)))
    tasks = batch.read_inputs(str(tmp_path / "cohort.csv"), tmp_path / "out")
    assert tasks[3].input == str((tmp_path / "cohort" / "v03.nrrd").resolve())  # relative to the inputs CSV
    prompts = tmp_path / "lists" / "prompts.csv"
    prompts.write_text("input,kind,value\n../cohort/v03.nrrd,point_ijk,1 2 3\nv05,box_ijk,0 0 0 4 4 2\n")
    batch.add_prompts(tasks, str(prompts))
    assert tasks[3].prompt_options == ["--point-ijk", "1,2,3"] and tasks[5].prompt_options == ["--box", "0,0,0,4,4,2"]
    prompts.write_text("input,kind,value\ncohort/v03.nrrd,point_ijk,1 2 3\n")  # relative to --inputs' folder: no
    assert headless.main(["batch", "--inputs", str(tmp_path / "cohort.csv"), "--out", str(tmp_path / "out"),
                          "--prompts", str(prompts)]) == 2
    err = capsys.readouterr().err
    assert "line 2: 'cohort/v03.nrrd' is not one of the inputs" in err and err.count("\n") == 1, err
    assert "the ids: v00, v01, v02, v03, v04, v05, v06, v07, v08, v09 and 2 more" in err and "v10" not in err


def test_the_batch_help_says_where_relative_paths_start(capsys):
    with pytest.raises(SystemExit):
        headless.main(["batch", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "a relative input is relative to this CSV's folder, not to --inputs" in help_text


def test_a_stopped_cohort_starts_no_further_volume_and_lists_every_one(tmp_path, monkeypatch):
    tasks = [batch.Task(f"v{n}", str(tmp_path / f"v{n}.nrrd")) for n in range(4)]
    started = []

    def run_task(arguments, threads, cancel):
        started.append(arguments[1])
        return 0, "", 0.5

    monkeypatch.setattr(batch, "run_task", run_task)
    # the stop is asked for while the second volume runs (a signal, in the command)
    rows = batch.run_batch(tasks, tmp_path / "out", [], workers=1, stop=lambda: len(started) >= 2)
    assert started == [tasks[0].input, tasks[1].input]  # v2, v3 were queued: never started
    listed = summary(tmp_path / "out")
    assert [row["id"] for row in rows] == list(listed) == ["v0", "v1", "v2", "v3"]
    assert [row["status"] for row in listed.values()] == ["done", "done"] + ["not finished (interrupted)"] * 2


def test_a_signal_handed_to_a_pool_thread_is_seen_there_at_once():
    """The kernel may hand a signal to any thread; Python runs the handler in the main thread only when that thread
    next runs Python code (here: once the pool thread ends). The pool thread, about to start the next volume, must
    know already: SignalRequests.arrived(n) counts the signal numbers the C-level handler wrote to the wakeup
    socket, ours only (another signal with a Python handler writes there too)."""
    import threading

    seen, handler, user_handler = [], signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGUSR1)
    signal.signal(signal.SIGUSR1, lambda signum, frame: None)
    try:
        with headless.signals_as_requests() as received:
            def pool_thread():
                for signum in (signal.SIGUSR1, signal.SIGTERM, signal.SIGTERM):
                    signal.pthread_kill(threading.get_ident(), signum)  # delivered to this thread before returning
                    seen.append((received.arrived(), received.arrived(2)))

            thread = threading.Thread(target=pool_thread)
            thread.start()
            thread.join()
            assert seen == [(False, False), (True, False), (True, True)]
            assert received.arrived(2) and set(received) == {signal.SIGTERM}  # Python's handler may run once for both
    finally:
        signal.signal(signal.SIGUSR1, user_handler)
    assert signal.getsignal(signal.SIGTERM) is handler and signal.set_wakeup_fd(-1) == -1  # both given back


def test_an_exception_while_waiting_still_lists_every_volume(tmp_path, monkeypatch):
    """An exception reaching the batch while it waits (here from a volume's thread) stops it; the summary is written
    all the same, every volume listed."""
    tasks = [batch.Task(f"v{n}", str(tmp_path / f"v{n}.nrrd")) for n in range(3)]
    started = []

    def run_task(arguments, threads, cancel):
        started.append(arguments[1])
        if arguments[1] == tasks[1].input:
            raise KeyboardInterrupt  # re-raised in the main thread by future.result()
        return 0, "", 0.5

    monkeypatch.setattr(batch, "run_task", run_task)
    with pytest.raises(KeyboardInterrupt):
        batch.run_batch(tasks, tmp_path / "out", [], workers=1)
    rows = summary(tmp_path / "out")
    assert list(rows) == ["v0", "v1", "v2"] and rows["v0"]["status"] == "done"
    assert rows["v1"]["status"] == "not finished (interrupted)"
    # v2 may have run in the pool thread before the main thread saw v1's exception; if it did not, it is unfinished
    assert rows["v2"]["status"] == "not finished (interrupted)" or tasks[2].input in started


def test_a_volume_whose_process_was_killed_says_so(tmp_path, monkeypatch):
    suicide = tmp_path / "python"
    suicide.write_text("#!/bin/sh\nkill -9 $$\n")
    suicide.chmod(0o755)
    monkeypatch.setattr(batch.sys, "executable", str(suicide))
    status, error, _ = batch.run_task(["segment"], 1)
    assert status == -9 and error == "the segment process ended with exit status -9 (killed by signal 9)"


def test_a_resumed_cohort_removes_the_files_a_killed_run_left_half_written(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    partial = out / ".partial-0123abcd-v0_preview.png"  # a `segment` killed while writing its preview
    partial.write_bytes(b"half a png")
    (out / "v0_summary.json").write_text(json.dumps({"state": "done", "lesions": []}))
    rows = batch.run_batch([batch.Task("v0", str(tmp_path / "v0.nrrd"))], out, [])
    assert rows[0]["status"] == "skipped (done before)" and not partial.exists()


def test_the_summary_that_marks_a_volume_done_is_written_after_every_other_output(tmp_path, worker_env,
                                                                                  monkeypatch):
    """An interrupt while the preview is written (the last output but the summary) leaves the volume not done, so
    that a resumed batch segments it again instead of keeping it without a preview."""
    volume = lesion_volume(tmp_path / "ct.nrrd", (3, 16, 16))

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(preview, "write_preview", interrupted)  # headless imports it when it writes the outputs
    out = tmp_path / "out"
    assert headless.main(["segment", str(volume), "-o", str(out / "ct.seg.nrrd"), "--whole-volume",
                          *OPTIONS]) == 128 + signal.SIGINT
    assert (out / "ct.seg.nrrd").is_file() and (out / "ct_variance.nrrd").is_file()
    assert not (out / "ct_summary.json").exists() and not batch.is_done(out, batch.Task("ct", str(volume)))


def children(pid: int) -> list[str]:
    """The command lines (arguments joined by spaces) of the child processes of ``pid``, started by any of its
    threads; a child that ended meanwhile is left out."""
    commands = []
    for child in (c for task in Path(f"/proc/{pid}/task").iterdir() for c in (task / "children").read_text().split()):
        try:
            commands.append(Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:
            pass
    return commands


def batch_running_its_first_volume(tmp_path, worker_env) -> tuple[subprocess.Popen, Path, float]:
    """A `batch` of volumes a and b, one at a time, once a's `segment` runs: (the process, --out, the deadline)."""
    folder = tmp_path / "cohort"
    folder.mkdir()
    lesion_volume(folder / "a.nrrd", (3, 16, 16), seed=1)
    lesion_volume(folder / "b.nrrd", (3, 16, 16), seed=2)
    out = tmp_path / "out"
    process = subprocess.Popen([sys.executable, "-m", "SDSegSlicerLib.headless", "batch", "--inputs", str(folder),
                                "--out", str(out), "--workers", "1", *OPTIONS], env=worker_env,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + CLI_TIMEOUT_S
    while not any(str(folder / "a.nrrd") in command for command in children(process.pid)):
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.05)
    return process, out, deadline


def test_a_volume_that_finishes_after_the_interrupt_is_listed_done(tmp_path, worker_env):
    """SIGTERM to the batch alone (a scheduler): the running volume's `segment` goes on to its end and is done; the
    volume not started is not."""
    process, out, _ = batch_running_its_first_volume(tmp_path, worker_env)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=CLI_TIMEOUT_S)
    assert process.returncode == 128 + signal.SIGTERM and "Traceback" not in stderr
    rows = summary(out)
    assert rows["a"]["status"] == "done" and rows["a"]["lesions"] == "1" and batch.is_done(out, batch.Task("a", ""))
    assert rows["b"]["status"] == "not finished (interrupted)"


def test_a_second_signal_cancels_the_running_volume(tmp_path, worker_env):
    """SIGTERM twice to the batch alone: the running volume's `segment` gets SIGTERM in turn, cancels and is listed
    cancelled (whether or not it had its handlers yet); the volume not started is not; exit 143."""
    process, out, deadline = batch_running_its_first_volume(tmp_path, worker_env)
    process.send_signal(signal.SIGTERM)
    said = ""
    while "signal again to cancel them" not in said:  # handled (a second signal sent at once may merge with it)
        said += process.stderr.readline()
        assert time.monotonic() < deadline and process.poll() is None
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=CLI_TIMEOUT_S)
    assert "cancelling the running volumes" in stderr
    assert process.returncode == 128 + signal.SIGTERM and "Traceback" not in stderr
    rows = summary(out)
    assert rows["a"]["status"] == "cancelled" and not batch.is_done(out, batch.Task("a", ""))
    assert rows["b"]["status"] == "not finished (interrupted)"


def test_a_cohort_passes_allow_irregular_slices_on(tmp_path, worker_env, capsys):
    from test_volume_io import write_dicom_series

    folder = tmp_path / "cohort"
    folder.mkdir()
    image = np.random.default_rng(0).integers(0, 1000, (5, 16, 16)).astype(np.int16)  # an image, not a label map
    write_dicom_series(folder / "gap", image, np.eye(3), (1.0, 1.0, 3.0), (0, 0, 0))
    (folder / "gap" / "slice002.dcm").unlink()
    arguments = ["batch", "--inputs", str(folder), "--out", str(tmp_path / "out"), *OPTIONS]
    assert headless.main(arguments) == 1
    assert "slice001.dcm (3.00 mm) and slice003.dcm (9.00 mm)" in summary(tmp_path / "out")["gap"]["error"]
    assert headless.main([*arguments, "--allow-irregular-slices"]) == 0
    assert summary(tmp_path / "out")["gap"]["status"] == "done"
    warnings = json.loads((tmp_path / "out" / "gap_summary.json").read_text())["warnings"]
    assert warnings[0] == WHOLE_VOLUME_WARNING and len(warnings) == 2 and "slice001.dcm" in warnings[1]
