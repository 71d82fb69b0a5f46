"""`sdseg-slicer segment` end to end with a REAL worker subprocess and a tiny real model (random weights): every
output with the input's geometry, while the MRML side's process never imports torch; bad command lines and worker
errors are one clear line. (Ctrl-C, a killed worker and `models`: test_headless_worker.py.)"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import SimpleITK as sitk
from slicerlib_testing import (BRIGHT_CT_MODEL_NAME, BRIGHT_MODEL_NAME, BRIGHT_MODEL_SIZE, CLI_TIMEOUT_S, MODEL_NAME,
                               RAS_TO_LPS,
                               lesion_volume, oblique_ijk_to_ras, read_seg_nrrd_with_sitk,
                               read_seg_nrrd_with_slicerio, sitk_ijk_to_lps, write_volume_file)

from SDSegSlicerLib import headless

SAMPLE_DIR = Path(__file__).resolve().parents[1] / "Resources" / "SampleData"


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "error" in line.lower()]


# Runs `sdseg-slicer ARGS` after importing every module of SDSegSlicerLib, and prints at exit the torch /
# diffusers modules that the MRML side's process imported (the worker, a separate process, imports torch).
TORCH_PROBE = """
import atexit, importlib, pkgutil, runpy, sys, SDSegSlicerLib
for module in pkgutil.iter_modules(SDSegSlicerLib.__path__):
    importlib.import_module("SDSegSlicerLib." + module.name)
atexit.register(lambda: print("LIB MODULES", len([m for m in sys.modules if m.startswith("SDSegSlicerLib.")]),
                              "TORCH MODULES", sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "diffusers"))))
sys.argv = ["sdseg-slicer", *sys.argv[1:]]
runpy.run_module("SDSegSlicerLib.headless", run_name="__main__")
"""


def test_segment_writes_every_output_with_the_input_geometry_without_torch(tmp_path, worker_env, capsys):
    volume = lesion_volume(tmp_path / "ct.nrrd", (5, 20, 24))
    output = tmp_path / "out" / "ct.seg.nrrd"
    roi = [3, 2, 1, 21, 18, 4]
    args = ["segment", volume, "-o", output, "--whole-volume", "--roi", ",".join(map(str, roi)), "--model",
            MODEL_NAME, "--samples", 2, "--steps", 2, "--device", "cpu"]
    result = subprocess.run([sys.executable, "-c", TORCH_PROBE, *map(str, args)], env=worker_env,
                            capture_output=True, text=True, timeout=CLI_TIMEOUT_S)
    assert result.returncode == 0, result.stderr
    modules = re.search(r"LIB MODULES (\d+) TORCH MODULES (.*)", result.stdout)
    assert int(modules.group(1)) >= 8 and modules.group(2) == "[]"
    assert "Traceback" not in result.stderr and "Done: 3 slices" in result.stderr
    assert re.search(r"segmenting +\[[#-]+\] \d/3 slices +ETA", result.stderr)

    input_image = sitk.ReadImage(str(volume))
    masks, ijk_to_lps = read_seg_nrrd_with_slicerio(output)
    np.testing.assert_allclose(ijk_to_lps, sitk_ijk_to_lps(input_image), atol=1e-6)
    np.testing.assert_allclose(ijk_to_lps, RAS_TO_LPS @ oblique_ijk_to_ras(), atol=1e-6)
    assert list(masks) == ["consensus", "sample 1", "sample 2"]
    sitk_masks, sitk_lps = read_seg_nrrd_with_sitk(output)
    np.testing.assert_allclose(sitk_lps, ijk_to_lps, atol=1e-6)
    outside = np.ones((5, 20, 24), dtype=bool)
    outside[roi[2]:roi[5], roi[1]:roi[4], roi[0]:roi[3]] = False
    for name, mask in masks.items():
        assert mask.shape == (5, 20, 24)
        np.testing.assert_array_equal(sitk_masks[name], mask)
        assert not mask[outside].any(), f"{name} has voxels outside the ROI"
    samples = np.array([masks["sample 1"], masks["sample 2"]])
    np.testing.assert_array_equal(masks["consensus"], samples.mean(axis=0) >= 0.5)

    variance = sitk.ReadImage(str(tmp_path / "out" / "ct_variance.nrrd"))
    assert variance.GetPixelID() == sitk.sitkFloat32
    np.testing.assert_allclose(sitk_ijk_to_lps(variance), ijk_to_lps, atol=1e-6)
    p = samples.mean(axis=0)
    np.testing.assert_allclose(sitk.GetArrayFromImage(variance), p * (1 - p), atol=1e-6)

    summary = json.loads((tmp_path / "out" / "ct_summary.json").read_text())
    assert summary["state"] == "done" and summary["slices_done"] == summary["slices_total"] == 3
    assert summary["model"] == MODEL_NAME and summary["roi_ijk"] == roi and summary["slice_axis"] == 2
    assert "lesions[].variance_mean" in summary["definitions"]  # the worker's per-lesion fields: a prompt's only
    assert not {"lesions[].scale", "lesions[].stops"} & set(summary["definitions"])
    voxel_ml = np.prod(input_image.GetSpacing()) / 1000
    volumes = [segment["volume_ml"] for segment in summary["segments"]]
    np.testing.assert_allclose(volumes, [masks[name].sum() * voxel_ml for name in masks], rtol=1e-5)  # 6 digits
    sizes = samples.sum(axis=(1, 2, 3))
    both = (samples[0] & samples[1]).sum()
    assert summary["lesions"][0]["dice_between_samples"][0][1] == pytest.approx(
        2 * both / sizes.sum() if sizes.sum() else 1.0, rel=1e-5)
    csv_lines = (tmp_path / "out" / "ct_summary.csv").read_text().splitlines()
    assert len(csv_lines) == 4 and csv_lines[0].startswith("segment,lesion,volume_ml")
    assert matplotlib.image.imread(tmp_path / "out" / "ct_preview.png").shape[2] in (3, 4)

    before = output.stat().st_mtime_ns
    assert headless.main(["segment", str(volume), "-o", str(output), "--model", MODEL_NAME]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert output.stat().st_mtime_ns == before


@pytest.mark.parametrize("slice_axis", [0, 1, 2])
def test_mask_voxels_land_on_the_bright_voxels_for_every_slice_axis(tmp_path, worker_env, slice_axis):
    """Where the masks fall, not only the headers: a bright 3 x 5 x 7 box (no symmetry hides a transposed or
    mirrored axis) off-centre in an oblique, mirrored, anisotropic volume whose IJK axis `slice_axis` is the one
    closest to superior. The threshold model (normalised intensity > 0, square inputs of the slice size, so no
    resizing) segments exactly the bright voxels; through the real worker and MRML writer every consensus and
    sample voxel must come back on them."""
    size = BRIGHT_MODEL_SIZE
    rng = np.random.default_rng(slice_axis)
    voxels = rng.normal(20.0, 4.0, (size, size, size)).astype(np.float32)  # (K, J, I)
    bright = np.zeros(voxels.shape, dtype=bool)
    bright[9:12, 2:7, 5:12] = True  # K 3, J 5, I 7 voxels
    voxels[bright] += 100.0
    volume = write_volume_file(tmp_path / "box.nrrd", voxels, oblique_ijk_to_ras(superior_axis=slice_axis))
    output = tmp_path / "box.seg.nrrd"
    result = subprocess.run(
        [sys.executable, "-m", "SDSegSlicerLib.headless", "segment", str(volume), "-o", str(output), "--model",
         BRIGHT_MODEL_NAME, "--samples", "3", "--device", "cpu"],
        env=worker_env, capture_output=True, text=True, timeout=CLI_TIMEOUT_S)
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "box_summary.json").read_text())
    assert summary["slice_axis"] == slice_axis and summary["slices_done"] == size
    masks, ijk_to_lps = read_seg_nrrd_with_slicerio(output)
    np.testing.assert_allclose(ijk_to_lps, sitk_ijk_to_lps(sitk.ReadImage(str(volume))), atol=1e-6)
    assert list(masks) == ["consensus", "sample 1", "sample 2", "sample 3"]
    for name, mask in masks.items():
        np.testing.assert_array_equal(mask, bright, err_msg=f"{name} is not on the bright voxels")
    variance = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "box_variance.nrrd")))
    assert not variance.any()  # identical samples


def test_a_warning_about_the_input_is_said_when_the_job_is_accepted_and_again_at_the_end(tmp_path, worker_env):
    """A model for CT only on a volume with no negative value (an MR's values), a real worker: the warning comes
    before the job's first progress line, not only in the summary at the end."""
    voxels = np.abs(np.random.default_rng(0).normal(40.0, 10.0, (4, 16, 16))).astype(np.float32)
    volume = write_volume_file(tmp_path / "mr.nrrd", voxels, oblique_ijk_to_ras())
    result = subprocess.run(
        [sys.executable, "-m", "SDSegSlicerLib.headless", "segment", str(volume), "-o", str(tmp_path / "mr.seg.nrrd"),
         "--whole-volume", "--model", BRIGHT_CT_MODEL_NAME, "--samples", "2", "--device", "cpu"],
        env=worker_env, capture_output=True, text=True, timeout=CLI_TIMEOUT_S)
    lines = result.stderr.splitlines()
    warned = [n for n, line in enumerate(lines) if line.startswith("Warning: this model was trained on CT only")]
    # the job's progress lines (its slice count known once accepted; a fast job may end before "segmenting" shows)
    progress = [n for n, line in enumerate(lines) if re.search(r"\] \d+/[1-9]\d* slices", line)]
    assert result.returncode == 0 and len(warned) == 2 and progress, lines
    assert warned[0] < progress[0] and warned[1] > progress[-1], lines
    assert lines[progress[-1]].startswith("done") and "#" * headless.PROGRESS_BAR_WIDTH in lines[progress[-1]], lines


def test_a_label_map_given_as_the_image_is_warned_about_at_acceptance(tmp_path, worker_env):
    """The bundled sample's tumour label where its image belongs, a real worker: a warning line at once and in the
    summary's warnings."""
    output = tmp_path / "label.seg.nrrd"
    result = subprocess.run(
        [sys.executable, "-m", "SDSegSlicerLib.headless", "segment", str(SAMPLE_DIR / "sample_label.nrrd"), "-o",
         str(output), "--point-ijk", "45,31,16", "--model", MODEL_NAME, "--samples", "1", "--device", "cpu"],
        env=worker_env, capture_output=True, text=True, timeout=CLI_TIMEOUT_S)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    warned = [n for n, line in enumerate(lines)
              if line.startswith("Warning: this volume has only 2 distinct values (0, 1): it looks like a label map")]
    progress = [n for n, line in enumerate(lines) if re.search(r"\] \d+ slices \(at most", line)]
    assert len(warned) == 2 and progress and warned[0] < progress[0], lines  # at acceptance, again at the end
    warnings = json.loads((tmp_path / "label_summary.json").read_text())["warnings"]
    assert len(warnings) == 1 and "looks like a label map" in warnings[0]


def test_a_terminal_keeps_its_bar_below_a_line_said_while_it_runs():
    """On a terminal, a line said while the bar is drawn (a warning) takes the bar's place and the bar is drawn again
    after it; in a log it is a line of its own."""
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    progress = {"phase": "segmenting", "done": 1, "total": 4, "eta_s": 3.0}
    for stream in (Terminal(), io.StringIO()):
        bar = headless.ProgressBar(stream)
        bar.update(progress)
        bar.say("Warning: look")
        bar.close()
        shown = stream.getvalue()
        if stream.isatty():
            bar_text = shown.split("\r\033[K")[1]
            assert shown == "\r\033[K" + bar_text + "\r\033[K" + "Warning: look\n" + bar_text + "\n"
        else:
            assert shown.splitlines()[1] == "Warning: look" and shown.splitlines()[0].startswith("segmenting")


def test_a_log_gets_a_line_per_phase_and_the_first_slice_at_once_then_one_per_interval(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(headless.time, "monotonic", lambda: clock[0])
    stream = io.StringIO()  # not a terminal
    bar = headless.ProgressBar(stream)
    for phase, done, advance in [("loading model", 0, 0.1), ("segmenting", 0, 0.1), ("segmenting", 1, 0.1),
                                 ("segmenting", 2, 0.1), ("segmenting", 3, headless.LOG_INTERVAL_S),
                                 ("segmenting", 4, 0.1)]:
        clock[0] += advance
        bar.update({"phase": phase, "done": done, "total": 10, "eta_s": 5.0})
    reported = [(line.split("  ")[0].split("[")[0].strip(), re.search(r"(\d+)/10", line).group(1))
                for line in stream.getvalue().splitlines()]
    assert reported == [("loading model", "0"), ("segmenting", "0"), ("segmenting", "1"), ("segmenting", "3")]


def test_a_done_run_shows_a_full_bar_also_where_its_total_was_a_bound_and_no_eta():
    stream = io.StringIO()
    bar = headless.ProgressBar(stream)
    bar.update({"phase": "segmenting", "done": 7, "total": 25, "eta_s": 1.0})
    bar.update({"phase": "done", "done": 7, "total": 25, "eta_s": None})
    running, done = stream.getvalue().splitlines()
    assert "#" * headless.PROGRESS_BAR_WIDTH not in running and "#" * headless.PROGRESS_BAR_WIDTH in done
    assert "ETA" in running and "ETA" not in done


def test_the_bar_waits_for_a_slice_count_before_it_is_drawn():
    stream = io.StringIO()
    bar = headless.ProgressBar(stream)
    bar.update({"phase": "waiting for the worker", "done": 0, "total": 0, "eta_s": None})
    assert stream.getvalue() == "waiting for the worker ...\n"


def test_bad_volume_from_the_worker_is_one_line(tmp_path, worker_env, capsys):
    (tmp_path / "text.nrrd").write_text("not a volume")
    code = headless.main(["segment", str(tmp_path / "text.nrrd"), "-o", str(tmp_path / "new" / "text.seg.nrrd"),
                          "--model", MODEL_NAME])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert len(error_lines(err)) == 1 and err.count("sdseg-slicer: error:") == 1
    assert "text.nrrd" in error_lines(err)[0]
    assert not (tmp_path / "new").exists()  # the output folder made for the run is gone with nothing in it


def test_steps_over_the_models_training_steps_is_one_line_before_any_work(tmp_path, worker_env, monkeypatch, capsys):
    from sdseg.checkpoint import save_model
    from sdseg.models import build_model

    save_model(build_model("sdseg", "tiny"), tmp_path / "models" / "tiny-sdseg")  # discrete: 1000 timesteps
    monkeypatch.setenv("SDSEG_MODELS_PATH", str(tmp_path / "models"))
    volume = lesion_volume(tmp_path / "ct.nrrd", (3, 16, 16))
    code = headless.main(["segment", str(volume), "-o", str(tmp_path / "out" / "ct.seg.nrrd"), "--model",
                          "tiny-sdseg", "--steps", "100000", "--whole-volume", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err and "report" not in err
    (line,) = error_lines(err)
    assert "'steps' 100000 is more than model tiny-sdseg was trained with (1000 timesteps)" in line


@pytest.mark.parametrize("args, message", [  # exit 2 (before any worker is started) unless noted
    (["segment", "missing.nrrd", "-o", "out.seg.nrrd"], "no such file or folder"),
    (["segment", "{volume}.txt", "-o", "out.seg.nrrd"], "ct.nrrd.txt: unsupported file type; give a volume file"),
    (["segment", "{volume}", "-o", "out.nii.gz"], "must be a .seg.nrrd file"),
    (["segment", "{volume}", "-o", "out.seg.nrrd", "--roi", "1,2,3,1,5,6"], "I0 < I1"),
    (["segment", "{volume}", "-o", "out.seg.nrrd", "--samples", "0"], "argument --samples: '0' is not an integer "
                                                                       "from 1 to 256"),
    (["segment", "{volume}", "-o", "out.seg.nrrd", "--samples", "10000"], "argument --samples: '10000' is not"),
    (["segment", "{volume}", "-o", "out.seg.nrrd", "--steps", "0"], "argument --steps: '0' is not an integer >= 1"),
    (["segment", "{volume}", "-o", "out.seg.nrrd", "--seed", "-3"], "argument --seed: '-3' is not an integer >= 0"),
    (["segment", "{volume}", "-o", "out.seg.nrrd", "--point", "1,2"], "argument --point: '1,2' is not three numbers"),
    (["segment", "{volume}", "-o", "out.seg.nrrd", "--point-ijk", "1,2,3", "--whole-volume"], "--whole-volume"),
    (["segment", "{volume}", "-o", "out.seg.nrrd", "--roi", "-1,2,3,4,5,6"], "argument --roi: '-1,2,3,4,5,6'"),
    (["segment", "{volume}", "-o", "out.seg.nrrd", "--python", "/nonexistent/python"], "Cannot start the worker"),
    (["segment", "M\udcfcller.nrrd", "-o", "out.seg.nrrd"], "M\\udcfcller.nrrd: the file name is not valid UTF-8"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_command_lines_are_one_clear_line(tmp_path, capsys, monkeypatch, args, message):
    volume = lesion_volume(tmp_path / "ct.nrrd", (2, 6, 6))
    (tmp_path / "ct.nrrd.txt").write_text("notes, not a volume")
    monkeypatch.chdir(tmp_path)
    code = headless.main([a.format(volume=volume) for a in args])
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("sdseg-slicer: error:") == 1
    if "--python" in args:  # the worker could not start
        assert code == headless.EXIT_ERROR
    else:
        assert code == headless.EXIT_USAGE and "Starting the worker" not in err
    assert not (tmp_path / "out.seg.nrrd").exists()


def test_an_output_that_is_the_input_is_refused_even_with_overwrite(tmp_path, capsys):
    volume = lesion_volume(tmp_path / "ct_variance.nrrd", (2, 6, 6))  # where -o ct.seg.nrrd puts the variance
    content = volume.read_bytes()
    assert headless.main(["segment", str(volume), "-o", str(tmp_path / "ct.seg.nrrd"), "--overwrite"]) == 2
    assert "ct_variance.nrrd is the input volume, which is never replaced" in capsys.readouterr().err
    assert volume.read_bytes() == content


def test_points_and_boxes_are_lesions_in_the_order_given_and_may_be_negative():
    args = headless.build_parser().parse_args(headless.attach_negative_values(
        ["segment", "ct.nrrd", "-o", "out.seg.nrrd", "--point-ijk", "25,20,9", "--point", "-43.4,-19.9,26",
         "--point", "-0.5,2,3", "--box", "1,2,3,4,5,6", "--point-ijk=1,2,3"]))
    assert args.lesions == [{"point_ijk": [25.0, 20.0, 9.0]}, {"point_ras": [-43.4, -19.9, 26.0]},
                            {"point_ras": [-0.5, 2.0, 3.0]}, {"box_ijk": [1, 2, 3, 4, 5, 6]},
                            {"point_ijk": [1.0, 2.0, 3.0]}]


class _RunTakingTwoSignals:
    """A run whose first wait for messages receives two SIGTERMs that Python's handler sees as one: the main thread
    blocks SIGTERM and waits in a join (no Python code runs there, so no Python handler) while other threads send and
    take both (the C-level handler runs in the takers, twice; Python runs its handler once, in the main thread,
    afterwards). A second wait means the second signal was missed."""
    state, progress = "running", {"phase": "segmenting", "done": 1, "total": 40, "eta_s": 9.0}
    accepted = None  # not accepted yet: no notes to say

    def __init__(self):
        self.waits, self.cancels = 0, 0

    def process_messages(self, timeout_s):
        self.waits += 1
        assert self.waits == 1, "still waiting after the second signal"
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        try:
            sender = threading.Thread(target=send_twice_to_other_threads, args=(signal.SIGTERM,))
            sender.start()
            sender.join()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
        return "running"

    def cancel(self):
        self.cancels += 1


def send_twice_to_other_threads(signum: int, takers: int = 2) -> None:
    """From a thread that blocks ``signum``: send it to this process twice, each taken by one of ``takers`` idle
    threads that do not block it. The second is sent once the first has left the pending set (sigpending, seen from
    this thread): two sent while one is pending would be merged by the kernel into one delivery."""
    ready, done = threading.Barrier(takers + 1), threading.Event()

    def take():
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signum})
        ready.wait()
        done.wait()

    threads = [threading.Thread(target=take) for _ in range(takers)]
    try:
        for thread in threads:
            thread.start()
        ready.wait()
        for _ in range(2):
            os.kill(os.getpid(), signum)
            deadline = time.monotonic() + CLI_TIMEOUT_S
            while signum in signal.sigpending() and time.monotonic() < deadline:
                time.sleep(0.001)
    finally:
        done.set()
        for thread in threads:
            thread.join()


def test_two_signals_that_python_handles_as_one_still_stop_the_wait_at_once():
    run = _RunTakingTwoSignals()
    assert headless.wait_for_run(run, headless.ProgressBar(io.StringIO())) == signal.SIGTERM
    assert run.waits == 1 and run.cancels == 0


def test_the_preview_title_names_the_input_model_samples_and_what_each_lesion_gave():
    accepted = {"model": "sdseg-small", "samples": 8}
    lesions = [{"volume_ml": 11.2473}, {"volume_ml": 0.0}]
    assert headless.preview_title("sample.nrrd", accepted, lesions, True) == (
        "sample.nrrd: sdseg-small, 8 samples; lesion 1: 11.25 ml; lesion 2: nothing found")
    assert headless.preview_title("ct.nrrd", accepted, lesions, False).endswith("; whole volume: 11.25 ml")
