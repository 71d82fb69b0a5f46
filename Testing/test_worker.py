"""A real `python -m sdseg.worker` subprocess with real tiny models (saved with save_model into $SDSEG_MODELS_PATH):
hello, ping, a job end to end on the CPU (checked against in-process inference), streaming order, cancel, a
killed worker, typed errors, shutdown and end of input. Every stdout line must be a protocol message.

Starting a worker costs seconds (importing torch), so one worker serves the tests that leave it alive; the tests
that end a worker start their own."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from sdseg import inference, propagation, registry
from sdseg.checkpoint import load_model, save_model
from sdseg.models import build_model
from sdseg.volume_io import read_volume
from slicerlib_testing import CLI_TIMEOUT_S

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = float(CLI_TIMEOUT_S)  # waits for a state: generous, so that a loaded machine passes too
# Stored sagittally and tilted 15 degrees (LPS columns: I ~anterior, J inferior, K ~right): axial slices are J planes.
SAGITTAL_LPS = np.array([[np.sin(np.radians(15)), 0.0, -np.cos(np.radians(15))],
                         [-np.cos(np.radians(15)), 0.0, -np.sin(np.radians(15))],
                         [0.0, -1.0, 0.0]])


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    save_model(build_model("ambiguous", "tiny", steps=2), folder / "tiny-ambiguous", card="# Tiny ambiguous test model")
    save_model(build_model("sdseg", "tiny"), folder / "tiny-sdseg", card="# Tiny SDSeg test model")
    save_model(build_model("sdseg", "tiny", image_channels=3), folder / "tiny-colour", card="# Colour model")
    save_model(build_model("sdseg", "tiny", modalities=["CT"]), folder / "tiny-ct", card="# CT only (test model)")
    # Crops of 32 voxels, the model's input size: its masks are exactly the voxels above the normalised threshold.
    save_model(build_model("threshold", "tiny", crop={"in_plane_voxels": 32, "lesion_margin": 1.2}),
               folder / "bright", card="# Bright voxels (test model)")
    return folder


@pytest.fixture(scope="module")
def volume_path(tmp_path_factory):
    rng = np.random.default_rng(0)
    array = rng.normal(50.0, 20.0, size=(6, 9, 11)).astype(np.float32)  # (K, J, I)
    array[2:5, 3:7, 4:9] += 150.0
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.9, 1.4, 2.2))
    image.SetOrigin((5.0, -7.0, 11.0))
    image.SetDirection(SAGITTAL_LPS.ravel().tolist())
    path = tmp_path_factory.mktemp("volumes") / "sagittal.nrrd"
    sitk.WriteImage(image, str(path))
    return path


class WorkerProcess:
    """The worker subprocess with a thread that parses every stdout line (a non-JSON line fails the test)."""

    def __init__(self, models_dir: Path, log_path: Path):
        env = dict(os.environ, PYTHONPATH=str(REPO), SDSEG_MODELS_PATH=str(models_dir), OMP_NUM_THREADS="1")
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.process = subprocess.Popen([sys.executable, "-m", "sdseg.worker"], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=self._log, env=env, cwd=str(log_path.parent))
        self.messages: queue.Queue = queue.Queue()
        self.bad_lines: list[bytes] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.process.stdout:
            try:
                self.messages.put(json.loads(line))
            except ValueError:
                self.bad_lines.append(line)
        self.messages.put(None)  # end of output

    def send(self, message: dict) -> None:
        self.process.stdin.write((json.dumps(message) + "\n").encode())
        self.process.stdin.flush()

    def next(self, timeout: float = TIMEOUT):
        return self.messages.get(timeout=timeout)

    def until(self, types, timeout: float = TIMEOUT) -> list[dict]:
        """Messages up to and including the first one whose type is in ``types``."""
        received, deadline = [], time.monotonic() + timeout
        while True:
            message = self.next(max(0.1, deadline - time.monotonic()))
            assert message is not None, f"worker output ended; received {received}"
            received.append(message)
            if message["type"] in types:
                return received

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def close(self):
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(TIMEOUT)
        self._log.close()
        assert not self.bad_lines, f"non-protocol output on stdout: {self.bad_lines[:3]}"


@pytest.fixture(scope="module")
def shared(models_dir, tmp_path_factory):
    """One worker for the tests that leave it running; its hello is kept in ``shared.hello``."""
    process = WorkerProcess(models_dir, tmp_path_factory.mktemp("shared") / "worker.log")
    process.hello = process.next()
    yield process
    process.close()


@pytest.fixture
def own_worker(models_dir, tmp_path):
    process = WorkerProcess(models_dir, tmp_path / "worker.log")
    assert process.next()["type"] == "hello"
    yield process
    process.close()


def segment(job_id, volume, job_dir, **fields):
    return {"type": "segment", "job_id": job_id, "volume": str(volume), "job_dir": str(job_dir), **fields}


def long_job(job_id, volume, job_dir):
    """A job of 9 slices, 18 forward passes of one image and 100 steps (~0.6 s each here): long enough that a
    request sent after its first slice arrives while it runs, however slow the machine."""
    return segment(job_id, volume, job_dir, model="tiny-ambiguous", samples=2, steps=100, batch_size=1)


def test_hello_ping_and_bad_requests(shared, models_dir):
    hello = shared.hello
    assert hello["type"] == "hello" and hello["protocol"] == 2
    assert hello["torch"] == torch.__version__ and hello["cuda"] == torch.version.cuda
    assert hello["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    names = {m["name"]: m for m in hello["models"]}
    assert {"tiny-ambiguous", "tiny-sdseg"} <= names.keys()
    assert names["tiny-sdseg"]["kind"] == "sdseg" and names["tiny-sdseg"]["path"] == str(models_dir / "tiny-sdseg")
    shared.send({"type": "ping", "id": 41})
    assert shared.next() == {"type": "pong", "id": 41}
    shared.process.stdin.write(b"this is not json\n")
    shared.send({"type": "segment", "job_id": "j", "volume": "v.nrrd"})  # no job_dir
    shared.send({"type": "segment", "job_id": "k", "volume": "v.nrrd", "job_dir": "d", "samples": 0})
    shared.send({"type": "dance"})
    errors = [shared.next() for _ in range(4)]
    assert [e["type"] for e in errors] == ["error"] * 4
    assert [e["code"] for e in errors] == ["bad_request"] * 4
    assert [e["job_id"] for e in errors] == [None, "j", "k", None]
    assert "job_dir" in errors[1]["message"] and "samples" in errors[2]["message"]
    shared.send({"type": "ping", "id": "still alive"})
    assert shared.next()["id"] == "still alive"


def test_any_bad_line_is_a_bad_request_and_the_worker_still_listens(shared):
    shared.process.stdin.write(b"[" * 100000 + b"\n")  # json.loads: RecursionError
    shared.process.stdin.write(b'{"type": "segment", "job_id": "nest", "prompt": ' + b"[" * 20000 + b"\n")
    shared.send({"type": "ping", "id": "after the nesting"})
    errors = [shared.next(), shared.next()]
    assert [(e["type"], e["code"]) for e in errors] == [("error", "bad_request")] * 2
    assert "nested too deeply" in errors[0]["message"]
    assert shared.next() == {"type": "pong", "id": "after the nesting"}


def test_a_volume_name_that_is_not_utf8_is_bad_volume(own_worker, volume_path, tmp_path):
    """ITK's readers abort the process (SIGABRT) on such a name; the worker refuses it and goes on."""
    latin1 = Path(os.fsdecode(bytes(tmp_path) + b"/caf\xe9.nrrd"))
    latin1.write_bytes(volume_path.read_bytes())
    own_worker.send(segment("latin1", latin1, tmp_path / "job", model="tiny-sdseg", samples=1))
    error = own_worker.next()
    assert (error["type"], error["code"]) == ("error", "bad_volume") and "not valid UTF-8" in error["message"]
    own_worker.send({"type": "ping", "id": 1})
    assert own_worker.next() == {"type": "pong", "id": 1}


def test_an_irregular_dicom_series_is_refused_unless_allowed_then_warned(shared, tmp_path):
    from test_volume_io import write_dicom_series

    series = tmp_path / "series"
    write_dicom_series(series, np.zeros((6, 8, 8), np.int16), np.eye(3), (1.0, 1.0, 3.0), (0.0, 0.0, 0.0))
    (series / "slice003.dcm").unlink()
    shared.send(segment("gap", series, tmp_path / "gap", model="tiny-sdseg", samples=1))
    error = shared.next()
    assert (error["type"], error["code"]) == ("error", "bad_volume")
    assert "slice002.dcm (6.00 mm) and slice004.dcm (12.00 mm) are 6.00 mm apart" in error["message"]
    shared.send(segment("gap anyway", series, tmp_path / "gap2", model="tiny-sdseg", samples=1,
                        allow_irregular_slices=True))
    messages = shared.until({"done", "error"})
    assert messages[-1]["type"] == "done" and "slice002.dcm" in messages[0]["warnings"][0]


def test_a_ct_only_model_warns_about_a_volume_that_does_not_look_like_ct(shared, volume_path, tmp_path):
    """A model trained on CT only (config["modalities"]) runs on any volume, but one with no negative value (the
    test volume with its few values below 0 clipped, as an MR's) is answered with a warning in ``accepted``; the same
    volume with a row of air (-1000 HU) and a model for any modality are not."""
    image = sitk.ReadImage(str(volume_path))
    paths = {}
    for name, change in (("mr", lambda a: np.clip(a, 0, None)), ("ct", lambda a: np.concatenate(
            [np.full_like(a[:, :1], -1000.0), a[:, 1:]], axis=1))):
        changed = sitk.GetImageFromArray(change(sitk.GetArrayFromImage(image)))
        changed.CopyInformation(image)
        paths[name] = tmp_path / f"{name}.nrrd"
        sitk.WriteImage(changed, str(paths[name]))
    warned = {}
    for job_id, model, volume in (("mr", "tiny-ct", paths["mr"]), ("ct", "tiny-ct", paths["ct"]),
                                  ("any", "tiny-sdseg", paths["mr"])):
        shared.send(segment(job_id, volume, tmp_path / job_id, model=model, samples=1))
        messages = shared.until({"done", "error"})
        assert messages[0]["type"] == "accepted" and messages[-1]["type"] == "done", messages[-1]
        warned[job_id] = messages[0]["warnings"]
    assert len(warned["mr"]) == 1 and "trained on CT only" in warned["mr"][0]
    assert warned["ct"] == [] and warned["any"] == []


def test_a_job_without_a_model_gets_the_ct_or_pet_default_there_and_the_general_default_otherwise(shared, tmp_path):
    """The default model depends on the volume (sdseg.registry.default_model_name): the bundled CT model on the real
    sarcoma cut's CT (Testing/Data, STS_019, in Hounsfield units), the PET model on its PET (in SUV), the general
    default on the same patient's MR T1 with a click, and there without a prompt (whole slices) the model trained
    without prompts; ``accepted`` and ``done`` name the model that ran, and no CT-only warning is sent."""
    cut = REPO / "Testing" / "Data" / "ibsi-sts" / "ibsi_validation" / "nifti" / "STS_019"
    click = {"lesions": [{"point_ijk": [56.0, 55.0, 2.0]}]}  # the tumour's centre
    ran = {}
    for modality, prompt in (("CT", None), ("MR_T1", None), ("MR_T1", click), ("PET", None)):
        job_id = f"{modality}-{'click' if prompt else 'whole'}"  # one id per job: the worker refuses one in use
        shared.send(segment(job_id, cut / f"{modality}_image.nii.gz", tmp_path / job_id, samples=1, prompt=prompt))
        messages = shared.until({"done", "error"})
        assert messages[0]["type"] == "accepted" and messages[-1]["type"] == "done", messages[-1]
        assert messages[0]["warnings"] == [] and messages[-1]["summary"]["model"] == messages[0]["model"]
        ran[modality, bool(prompt)] = messages[0]["model"]
    assert ran == {("CT", False): registry.DEFAULT_CT_MODEL, ("MR_T1", False): registry.DEFAULT_WHOLE_VOLUME_MODEL,
                   ("MR_T1", True): registry.DEFAULT_MODEL, ("PET", False): registry.DEFAULT_PET_MODEL}


def test_job_end_to_end_streams_every_slice_in_order(shared, models_dir, volume_path, tmp_path):
    job_dir = tmp_path / "job"
    roi = [1, 0, 1, 10, 9, 5]  # I 1..9, J all 9 (the slice axis), K 1..4
    shared.send(segment("e2e", volume_path, job_dir, model="tiny-ambiguous", samples=3, seed=5, device="auto",
                        roi_ijk=roi))
    messages = shared.until({"done", "error"})
    assert messages[-1]["type"] == "done", messages[-1]
    accepted = messages[0]
    volume = read_volume(volume_path)
    assert accepted["type"] == "accepted" and accepted["job_id"] == "e2e"
    assert accepted["volume"]["shape_kji"] == [6, 9, 11]
    np.testing.assert_allclose(accepted["volume"]["ijk_to_ras"], volume.ijk_to_ras)
    assert accepted["volume"]["slice_axis"] == 1  # J is the axis closest to S
    assert accepted["volume"]["roi_ijk"] == roi
    assert accepted["model"] == "tiny-ambiguous" and accepted["device"] == "cpu" and accepted["total"] == 9
    phases = [m["phase"] for m in messages if m["type"] == "progress"]
    assert phases[0] == "segmenting"  # the model was loaded (and its weights checked) before `accepted`
    assert (accepted["samples"], accepted["steps"], accepted["seed"], accepted["sampler"]) == (3, 2, 5, "ddpm")

    slices = [m for m in messages if m["type"] == "slice"]
    assert [m["index"] for m in slices] == list(range(9))
    assert [m["done"] for m in slices] == list(range(1, 10)) and {m["total"] for m in slices} == {9}
    assert slices[-1]["eta_s"] == 0
    assert messages[-1]["slices"] == 9 and messages[-1]["summary"] == {"samples": 3, "model": "tiny-ambiguous",
                                                                       "device": "cpu", "model_cached": False}
    torch.set_num_threads(1)
    model = load_model(models_dir / "tiny-ambiguous")
    expected = list(inference.segment_slices(model, volume.array_kji, roi, 1, 3, seed=5, batch_size=1))
    assert [r.index for r in expected] == [m["index"] for m in slices]
    for message, reference in zip(slices, expected):
        assert Path(message["file"]).parent == job_dir.resolve()
        with np.load(message["file"]) as arrays:
            assert arrays["samples"].dtype == np.uint8 and arrays["samples"].shape == (3, 4, 9)  # (N, K, I)
            np.testing.assert_array_equal(arrays["samples"], reference.samples)
            np.testing.assert_array_equal(arrays["consensus"], reference.consensus)
            np.testing.assert_array_equal(arrays["variance"], reference.variance)


def test_model_is_loaded_once_across_jobs(shared, volume_path, tmp_path, models_dir):
    """The first job loads the model (the previous test used another one), the next ones reuse it; touching the
    weights file (a retrained model) makes the worker load it again."""
    def cached_flags(job_ids):
        flags = []
        for job_id in job_ids:
            shared.send(segment(job_id, volume_path, tmp_path / job_id, model="tiny-sdseg", samples=2,
                                roi_ijk=[0, 0, 0, 11, 2, 6]))
            done = shared.until({"done", "error"})[-1]
            assert done["type"] == "done", done
            flags.append(done["summary"]["model_cached"])
        return flags

    assert cached_flags(["first", "second", "third"]) == [False, True, True]
    weights = models_dir / "tiny-sdseg" / "model.safetensors"
    stamp = weights.stat().st_mtime_ns + 10**9
    os.utime(weights, ns=(stamp, stamp))
    assert cached_flags(["after-update", "again"]) == [False, True]


def test_a_job_id_is_free_again_as_soon_as_its_last_message_is_read(shared, volume_path, tmp_path):
    """A client may reuse a job ID once it has read that job's last message (the worker once freed the ID only
    after sending the message, and an ID sent back at once was refused as "already queued or running"). A
    refusal of a queued job's ID stays (the worker answers it with an error)."""
    for attempt in range(10):
        job_dir = tmp_path / f"run{attempt}"
        shared.send(segment("reused", volume_path, job_dir, model="tiny-sdseg", samples=1,
                            roi_ijk=[0, 0, 0, 11, 1, 6]))
        last = shared.until({"done", "error"})[-1]
        assert (last["type"], last["job_id"]) == ("done", "reused"), last
    job = segment("twice", volume_path, tmp_path / "twice", model="tiny-sdseg", samples=1, roi_ijk=[0, 0, 0, 11, 1, 6])
    shared.send(job)
    shared.send(job)  # read while the first is queued or running
    messages = shared.until({"done"})
    refusals = [m for m in messages if m["type"] == "error"]
    assert [(m["job_id"], m["code"]) for m in refusals] == [("twice", "duplicate_job")], messages
    assert "already queued or running" in refusals[0]["message"]


ERROR_CASES = [
    ({"model": "no-such-model"}, "unknown_model", "tiny-ambiguous"),  # the message lists the available models
    ({"model": "tiny-colour"}, "model_mismatch", "3 image channels"),
    ({"roi_ijk": [0, 0, 0, 99, 9, 6]}, "bad_request", "does not fit the volume"),
    ({"volume": "missing.nrrd"}, "bad_volume", "no such file"),
    ({"volume": "nan.nrrd"}, "bad_volume", "NaN"),
    ({"steps": 100000}, "bad_request", "trained with (1000 timesteps); give steps from 1 to 1000"),  # before accepted
    ({"max_volume_bytes": 6 * 9 * 11 * 4 - 1}, "bad_volume", "once decompressed"),
    ({"volume": "giant.nrrd"}, "bad_volume", "3814697.3 MiB once decompressed"),  # over the memory available
] + ([] if torch.cuda.is_available() else [({"device": "cuda"}, "device_unavailable", "device 'auto' or 'cpu'")])


def test_job_errors_are_typed_and_the_worker_survives(shared, volume_path, tmp_path):
    array = np.zeros((3, 8, 8), np.float32)
    array[1, 1, 1] = np.nan
    sitk.WriteImage(sitk.GetImageFromArray(array), str(tmp_path / "nan.nrrd"))
    (tmp_path / "giant.nrrd").write_bytes(b"NRRD0004\ntype: float\ndimension: 3\nsizes: 10000 10000 10000\n"
                                          b"endian: little\nencoding: gzip\n\n\x1f\x8b" + bytes(18))
    for number, (fields, code, phrase) in enumerate(ERROR_CASES):
        job = {**segment(f"bad{number}", volume_path, tmp_path / "job", model="tiny-sdseg"), **fields}
        if "volume" in fields:
            job["volume"] = str(tmp_path / fields["volume"])
        shared.send(job)
        error = shared.next()
        assert (error["type"], error["job_id"], error["code"]) == ("error", f"bad{number}", code), error
        assert phrase in error["message"] and "Traceback" not in error["message"]
    shared.send(segment("good", volume_path, tmp_path / "good", model="tiny-sdseg", samples=1,
                        roi_ijk=[0, 0, 0, 11, 1, 6]))
    assert shared.until({"done", "error"})[-1]["type"] == "done"


def test_cancel_is_honoured_before_the_end_and_keeps_delivered_slices(shared, volume_path, tmp_path):
    shared.send(long_job("long", volume_path, tmp_path / "long"))
    shared.send(segment("queued", volume_path, tmp_path / "queued", model="tiny-ambiguous"))
    shared.send(segment("queued", volume_path, tmp_path / "again", model="tiny-ambiguous"))  # job_id in use
    before_first = shared.until({"slice"})
    duplicate = [m for m in before_first if m["type"] == "error"]
    assert [(m["job_id"], m["code"]) for m in duplicate] == [("queued", "duplicate_job")]
    before_first = [m for m in before_first if m["type"] != "error"]
    assert before_first[0]["type"] == "accepted" and before_first[0]["total"] == 9
    shared.send({"type": "cancel", "job_id": "queued"})
    shared.send({"type": "cancel", "job_id": "long"})
    rest = shared.until({"cancelled"})
    delivered = [m for m in before_first + rest if m["type"] == "slice"]
    assert rest[-1] == {"type": "cancelled", "job_id": "long", "slices": len(delivered)}
    assert 1 <= len(delivered) < 9  # honoured before the end; what was delivered is kept
    for message in delivered:
        with np.load(message["file"]) as arrays:
            assert arrays["samples"].shape[0] == 2
    assert shared.next() == {"type": "cancelled", "job_id": "queued", "slices": 0}
    shared.send({"type": "ping", "id": 1})
    assert shared.next()["type"] == "pong"


@pytest.fixture(scope="module")
def blobs_path(tmp_path_factory):
    """48 x 48 x 12 voxels, axial K slices: a bright ellipsoid on slices 4..8 around (i 20, j 24, k 6) and a smaller
    one on slices 6..7 around (i 38, j 10)."""
    k, j, i = np.mgrid[0:12, 0:48, 0:48]
    blobs = (((i - 20) / 6.0) ** 2 + ((j - 24) / 5.0) ** 2 + ((k - 6) / 2.6) ** 2 < 1.0) | (
        ((i - 38) / 3.0) ** 2 + ((j - 10) / 3.0) ** 2 + ((k - 6.5) / 1.2) ** 2 < 1.0)
    array = (np.random.default_rng(1).normal(20.0, 3.0, k.shape) + 100.0 * blobs).astype(np.float32)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.8, 0.8, 3.0))
    path = tmp_path_factory.mktemp("blobs") / "blobs.nrrd"
    sitk.WriteImage(image, str(path))
    return path, blobs


def prompt_job(job_id, volume, job_dir, lesions, **fields):
    return segment(job_id, volume, job_dir, model="bright", samples=2,
                   prompt={"lesions": lesions, **fields.pop("prompt_fields", {})}, **fields)


def test_a_prompt_job_streams_outward_from_each_prompted_slice(shared, models_dir, blobs_path, tmp_path):
    path, blobs = blobs_path
    lesions = [{"point_ijk": [20.0, 24.0, 6.0]}, {"point_ijk": [38, 10, 7]}, {"point_ijk": [5.0, 40.0, 6.0]}]
    shared.send(prompt_job("prompted", path, tmp_path / "prompted", lesions, prompt_fields={"scale": 1}))
    messages = shared.until({"done", "error"})  # at the model's crop scale: exact masks (test_scale_search: search)
    assert messages[-1]["type"] == "done", messages[-1]
    accepted = messages[0]
    assert accepted["prompt"] == {"lesions": [{"point_ijk": [20.0, 24.0, 6.0]}, {"point_ijk": [38.0, 10.0, 7.0]},
                                              {"point_ijk": [5.0, 40.0, 6.0]}], "stop_after_empty": 2,
                                  "max_slices": None, "scale": 1}
    assert accepted["total"] == 3 * 12  # at most every slice for each lesion
    slices = [m for m in messages if m["type"] == "slice"]
    visits = [(m["lesion"], m["index"]) for m in slices]
    # Lesion 1 spans slices 4..8: outward, alternating, each direction ends after 2 empty slices.
    assert visits[:9] == [(0, 6), (0, 7), (0, 5), (0, 8), (0, 4), (0, 9), (0, 3), (0, 10), (0, 2)]
    assert visits[9:15] == [(1, 7), (1, 8), (1, 6), (1, 9), (1, 5), (1, 4)]  # lesion 2 on slices 6..7
    assert visits[15:] == [(2, 6), (2, 7), (2, 5)]  # nothing at the third point: its slice counts as empty
    assert [m["done"] for m in slices] == list(range(1, len(slices) + 1))
    assert messages[-1]["slices"] == len(slices) == 18
    assert [{key: lesion[key] for key in ("slices", "found_slices")} for lesion in messages[-1]["summary"]["lesions"]
            ] == [{"slices": 9, "found_slices": 5}, {"slices": 6, "found_slices": 2}, {"slices": 3, "found_slices": 0}]
    found = {0: np.zeros(blobs.shape, bool), 1: np.zeros(blobs.shape, bool)}
    for message in slices:
        i0, j0, k0, i1, j1, k1 = message["box_ijk"]
        assert (k0, k1) == (message["index"], message["index"] + 1) and Path(message["file"]).name.startswith(
            f"lesion{message['lesion']:02d}_")
        with np.load(message["file"]) as arrays:
            assert arrays["samples"].shape == (2, j1 - j0, i1 - i0)
            np.testing.assert_array_equal(arrays["samples"][0], arrays["consensus"])  # identical samples
            assert not arrays["variance"].any()
            if message["lesion"] in found:
                found[message["lesion"]][k0, j0:j1, i0:i1] |= arrays["consensus"] > 0
            else:
                assert not arrays["consensus"].any()
    first = np.zeros(blobs.shape, int)
    first[4:9, 12:37, 6:36] = 1  # lesion 1's component only (the prompt picks it), exactly its voxels
    np.testing.assert_array_equal(found[0], blobs & (first > 0))
    np.testing.assert_array_equal(found[1], blobs & (first == 0))


def test_prompt_results_equal_the_in_process_propagation(shared, models_dir, volume_path, tmp_path):
    """The tiny ambiguous model (random weights, real sampling) through the worker, bit-exact."""
    point = [6.0, 4.0, 3.0]
    shared.send(segment("same", volume_path, tmp_path / "same", model="tiny-ambiguous", samples=3, seed=4,
                        prompt={"lesions": [{"point_ijk": point}], "stop_after_empty": 1}))
    messages = shared.until({"done", "error"})
    assert messages[-1]["type"] == "done", messages[-1]
    slices = [m for m in messages if m["type"] == "slice"]
    torch.set_num_threads(1)
    volume = read_volume(volume_path)
    expected = list(propagation.propagate(load_model(models_dir / "tiny-ambiguous"), volume.array_kji,
                                          volume.ijk_to_ras, 1, [propagation.Prompt(point_ijk=tuple(point))],
                                          [0, 0, 0, 11, 9, 6], 3, seed=4, stop_after_empty=1))
    assert [(m["lesion"], m["index"], m["box_ijk"]) for m in slices] == [(r.lesion, r.index, r.box_ijk)
                                                                        for r in expected]
    for message, reference in zip(slices, expected):
        with np.load(message["file"]) as arrays:
            np.testing.assert_array_equal(arrays["samples"], reference.samples)
            np.testing.assert_array_equal(arrays["variance"], reference.variance)


PROMPT_ERRORS = [
    ({"lesions": []}, "a list of 1 to 64"),
    ({"lesions": [{"point_ijk": [1, 2]}]}, "3 finite numbers"),
    ({"lesions": [{"point_ijk": [1, 2, 3], "box_ijk": [0, 0, 0, 1, 1, 1]}]}, "exactly one of"),
    ({"lesions": [{"box_ijk": [0, 0, 0, 1, 1]}]}, "6 integers"),
    ({"lesions": [{"point_ijk": [1, 2, 3]}], "stop_after_empty": 0}, "'stop_after_empty' must be an integer >= 1"),
    ({"lesions": [{"point_ijk": [60.0, 2, 3]}]}, "lesion 1: the point [60.0, 2.0, 3.0] (IJK) is outside the volume"),
    ({"lesions": [{"point_ijk": [1, 2, 3]}, {"point_ras": [-500.0, 2.5, 3.0]}]},
     "(points given in mm, RAS: lesion 2: [-500.0, 2.5, 3.0])"),
    ({"lesions": [{"point_ijk": [1, 2, 3]}, {"box_ijk": [0, 0, 0, 49, 5, 5]}]}, "lesion 2: the box"),
]


def test_bad_prompts_are_refused_with_the_lesion_named(shared, blobs_path, tmp_path):
    path, _ = blobs_path
    for number, (prompt, phrase) in enumerate(PROMPT_ERRORS):
        shared.send(segment(f"badprompt{number}", path, tmp_path / "bad", model="bright", prompt=prompt))
        error = shared.next()
        assert (error["type"], error["code"], error["job_id"]) == ("error", "bad_request", f"badprompt{number}")
        assert phrase in error["message"], error["message"]
    shared.send(segment("outside-roi", path, tmp_path / "bad", model="bright", roi_ijk=[0, 0, 8, 48, 48, 12],
                        prompt={"lesions": [{"point_ijk": [20, 24, 6]}]}))
    error = shared.next()
    assert error["code"] == "bad_request" and "outside slices 8..11 of the region of interest" in error["message"]


def test_cancel_mid_propagation_keeps_the_delivered_slices(shared, blobs_path, tmp_path):
    path, _ = blobs_path
    shared.send(segment("propagating", path, tmp_path / "propagating", model="tiny-ambiguous", samples=2, steps=100,
                        batch_size=1, prompt={"lesions": [{"point_ijk": [20, 24, 6]}], "stop_after_empty": 12}))
    first = shared.until({"slice"})
    shared.send({"type": "cancel", "job_id": "propagating"})
    rest = shared.until({"cancelled"})
    delivered = [m for m in first + rest if m["type"] == "slice"]
    assert rest[-1] == {"type": "cancelled", "job_id": "propagating", "slices": len(delivered)}
    assert delivered[0]["index"] == 6 and 1 <= len(delivered) < 12
    for message in delivered:
        assert Path(message["file"]).is_file()


def test_killed_worker_is_detectable_and_delivered_files_stay_valid(own_worker, volume_path, tmp_path):
    own_worker.send(long_job("doomed", volume_path, tmp_path / "doomed"))
    first = own_worker.until({"slice"})[-1]
    own_worker.process.send_signal(signal.SIGKILL)
    while (message := own_worker.next()) is not None:  # output ends (EOF) after at most a few more messages
        assert message["type"] in ("slice", "progress")
    assert own_worker.process.wait(TIMEOUT) == -signal.SIGKILL
    with np.load(first["file"]) as arrays:
        assert arrays["consensus"].shape == (6, 11)


def test_end_of_input_exits_0(own_worker):
    own_worker.process.stdin.close()  # the client went away
    assert own_worker.process.wait(TIMEOUT) == 0
    assert own_worker.next() is None


def test_shutdown_during_a_job_cancels_it_and_exits_0(shared, volume_path, tmp_path):
    """Ends the shared worker, so it comes last in this file."""
    shared.send(long_job("busy", volume_path, tmp_path / "busy"))
    shared.until({"slice"})
    shared.send({"type": "shutdown"})
    assert shared.until({"cancelled"})[-1]["job_id"] == "busy"
    assert shared.process.wait(TIMEOUT) == 0
    assert shared.next() is None


# The client starts the worker, and a process that inherits (and so holds open) the worker's stdin; then the client
# is killed outright. Run by REAPER, which adopts the orphaned worker (a child subreaper) to read its exit status.
ORPHANING_CLIENT = """
import subprocess, sys, time
worker = subprocess.Popen([sys.executable, "-m", "sdseg.worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
holder = subprocess.Popen(["sleep", "60"], pass_fds=(worker.stdin.fileno(),))
worker.stdout.readline()  # hello
print(worker.pid, holder.pid, flush=True)
time.sleep(60)
"""
REAPER = """
import ctypes, os, signal, subprocess, sys, time
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER: orphaned descendants become this process's
client = subprocess.Popen([sys.executable, "-c", sys.argv[1]], stdout=subprocess.PIPE, text=True)
worker, holder = map(int, client.stdout.readline().split())
os.kill(client.pid, signal.SIGKILL)
client.wait()
deadline = time.monotonic() + 30
while time.monotonic() < deadline:
    pid, status = os.waitpid(worker, os.WNOHANG)
    if pid:
        print("signal" if os.WIFSIGNALED(status) else "exit", os.WTERMSIG(status) if os.WIFSIGNALED(status)
              else os.WEXITSTATUS(status))
        break
    time.sleep(0.2)
else:
    print("still running")
    os.kill(worker, signal.SIGKILL)
os.kill(holder, signal.SIGKILL)
"""


# As ORPHANING_CLIENT, the client killed while the worker is in one forward pass of 100,000 sampling steps (minutes).
ORPHANING_CLIENT_MID_PASS = ORPHANING_CLIENT.replace("worker.stdout.readline()  # hello", """worker.stdout.readline()
job = {"type": "segment", "job_id": "long", "volume": sys.argv[1], "job_dir": sys.argv[2], "model": "tiny-ambiguous",
       "samples": 1, "steps": 100000, "batch_size": 1, "roi_ijk": [0, 0, 0, 11, 9, 1]}
worker.stdin.write((json.dumps(job) + "\\n").encode())
worker.stdin.flush()
while json.loads(worker.stdout.readline())["type"] != "progress":  # the forward pass starts
    pass""").replace("import subprocess", "import json, subprocess")


def test_a_worker_whose_client_was_killed_mid_forward_pass_exits_without_finishing_it(models_dir, volume_path,
                                                                                          tmp_path):
    reaper = REAPER.replace('[sys.executable, "-c", sys.argv[1]]', '[sys.executable, "-c", *sys.argv[1:]]')
    result = subprocess.run([sys.executable, "-c", reaper, ORPHANING_CLIENT_MID_PASS, str(volume_path),
                             str(tmp_path / "job")], capture_output=True, text=True, cwd=REPO, timeout=CLI_TIMEOUT_S,
                            env=dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1",
                                     SDSEG_MODELS_PATH=str(models_dir)))
    assert result.stdout.strip() == "exit 0", result.stdout + result.stderr[-2000:]


def test_a_worker_whose_client_was_killed_exits_cleanly_while_its_stdin_is_held_open():
    result = subprocess.run([sys.executable, "-c", REAPER, ORPHANING_CLIENT], capture_output=True, text=True,
                            cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1"), timeout=CLI_TIMEOUT_S)
    assert result.stdout.strip() == "exit 0", result.stdout + result.stderr[-2000:]
