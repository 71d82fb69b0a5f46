"""The worker process (docs/protocol.md): reads requests on stdin, runs one job at a time, streams results.

A reader thread parses requests as they arrive (so ``cancel``, ``ping`` and ``shutdown`` are handled while a job
runs); the main thread runs the queued ``segment`` jobs in order. The loaded model is cached across jobs. Every
failure becomes an ``error`` message with a code and a human message; tracebacks go to the log (stderr) only.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from pathlib import Path

import numpy as np
import torch

from sdseg import checkpoint, inference, propagation, registry
from sdseg.device import DeviceUnavailable, free_memory_bytes, resolve_device
from sdseg.modality_check import label_map_warnings, modality_warnings
from sdseg.volume_io import VolumeError, check_roi, choose_slice_axis, read_volume
from sdseg.prompt_maps import takes_previous_masks
from sdseg.worker import protocol

PROGRESS_INTERVAL_S = 1.0  # at most one batch-progress message per second (slices report their own progress)

log = logging.getLogger("sdseg.worker")


class JobError(Exception):
    """A job failure with its protocol error code and human message."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def _model_key(folder: Path, device: torch.device) -> tuple:
    stamps = tuple((folder / name).stat().st_mtime_ns if (folder / name).exists() else None
                   for name in (checkpoint.CONFIG_FILE, checkpoint.WEIGHTS_FILE))
    return str(folder), str(device), stamps


def _model_folder(name_or_path: str) -> tuple[Path, dict]:
    """(folder, config) of a model by name or folder; JobError if it does not exist or is invalid."""
    try:
        folder = registry.resolve_model(name_or_path)
        return folder, checkpoint.read_config(folder)["config"]
    except registry.UnknownModelError as error:
        raise JobError(protocol.UNKNOWN_MODEL, str(error)) from error
    except checkpoint.CheckpointError as error:
        raise JobError(protocol.BAD_MODEL, str(error)) from error


def _write_npz(path: Path, **arrays) -> None:
    """Write ``path`` atomically: the client never sees a partial file."""
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as handle:
        np.savez_compressed(handle, **arrays)
    os.replace(partial, path)


def _out_of_memory_message(device: torch.device, job: dict) -> str:
    return (f"Out of memory on {device.type} even with one image per forward pass ({job['samples']} samples "
            "requested). Use fewer samples, a smaller batch size, a smaller ROI or model, close other programs "
            "using the GPU, or choose device 'cpu'.")


def _check_steps(model, name: str, job: dict) -> None:
    """A discrete-time model samples at most its training timesteps (continuous-time models take any number)."""
    most = getattr(model, "num_train_timesteps", None)
    if job["steps"] is not None and most is not None and job["steps"] > most:
        raise JobError(protocol.BAD_REQUEST, f"'steps' {job['steps']} is more than model {name} was trained with "
                                             f"({most} timesteps); give steps from 1 to {most}")


class JobProgress:
    """Slices delivered and ETA of the running job; sends at most one batch ``progress`` per PROGRESS_INTERVAL_S."""

    def __init__(self, send, job_id: str, total: int):
        self._send, self.job_id, self.total = send, job_id, total
        self.delivered, self.eta_s = 0, None
        self._since = self._last_message = time.monotonic()

    def on_batch(self, images_done: int, images_total: int) -> None:
        now = time.monotonic()
        self.eta_s = (now - self._since) / images_done * max(0, images_total - images_done)
        if now - self._last_message >= PROGRESS_INTERVAL_S:
            self._send(protocol.progress(self.job_id, "segmenting", self.delivered, self.total, self.eta_s))
            self._last_message = now

    def slice_delivered(self, index: int, path: Path, lesion: int | None = None, box_ijk=None) -> None:
        self.delivered += 1
        self._send(protocol.slice_message(self.job_id, index, str(path), self.delivered, self.total, self.eta_s,
                                          lesion, box_ijk))
        self._last_message = time.monotonic()


class Worker:
    def __init__(self, out_stream):
        self._out = out_stream
        self._out_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._jobs: queue.Queue = queue.Queue()
        self._waiting: set[str] = set()  # queued or running job ids
        self._cancel: set[str] = set()
        self._stopping = threading.Event()
        self._model_key, self._model = None, None

    # --- output ------------------------------------------------------------------------------------------------
    def send(self, message: dict) -> None:
        line = protocol.encode(message)
        with self._out_lock:
            try:
                self._out.write(line)
                self._out.flush()
            except (OSError, ValueError) as error:  # the client closed the pipe: nobody to work for any more
                log.warning("cannot write to the client (%s); stopping", error)
                self._stopping.set()

    # --- input (reader thread) ---------------------------------------------------------------------------------
    def read_requests(self, in_stream) -> None:
        """Parse request lines until ``shutdown`` or end of input, then tell the main loop to stop."""
        for raw in iter(in_stream.readline, b""):
            if not raw.strip():
                continue
            try:
                request = protocol.parse_request(raw.decode("utf-8"))
            except (protocol.ProtocolError, UnicodeDecodeError) as error:
                job_id = getattr(error, "job_id", None)
                self.send(protocol.error(job_id, protocol.BAD_REQUEST, f"invalid request: {error}"))
                continue
            if request["type"] == "shutdown":
                log.info("shutdown requested")
                break
            self._handle(request)
        else:
            log.info("input closed; stopping")
        self._stopping.set()
        self._jobs.put(None)

    def _handle(self, request: dict) -> None:
        kind = request["type"]
        if kind == "ping":
            self.send(protocol.pong(request["id"]))
        elif kind == "cancel":
            with self._state_lock:
                if request["job_id"] in self._waiting:
                    self._cancel.add(request["job_id"])
                else:
                    log.info("cancel for job %s that is not queued or running: ignored", request["job_id"])
        else:
            with self._state_lock:
                duplicate = request["job_id"] in self._waiting
                if not duplicate:
                    self._waiting.add(request["job_id"])
            if duplicate:
                self.send(protocol.error(request["job_id"], protocol.DUPLICATE_JOB,
                                         f"job {request['job_id']} is already queued or running; use a new job_id"))
            else:
                self._jobs.put(request)

    def client_gone(self, reason: str) -> None:
        """The client died (its process is gone): stop the running job at its next sampling step, answer
        nothing more, and let run() return."""
        log.warning("%s; stopping", reason)
        self._stopping.set()
        self._jobs.put(None)

    def _should_stop(self, job_id: str) -> bool:
        return self._stopping.is_set() or job_id in self._cancel

    # --- jobs (main thread) ------------------------------------------------------------------------------------
    def run(self) -> int:
        """Run queued jobs until the reader thread stops; returns the exit status."""
        while True:
            job = self._jobs.get()
            if job is None:
                return 0
            self._run_job(job)

    def _run_job(self, job: dict) -> None:
        job_id, started = job["job_id"], time.monotonic()
        progress = None
        try:
            if self._should_stop(job_id):
                self._end(job_id, protocol.cancelled(job_id, 0))
                return
            folder, device, volume, roi, slice_axis, prompts = self._prepare(job)
            model, model_cached = self._model_for(folder, device, job)
            _check_steps(model, folder.name, job)
            total = (propagation.slices_at_most(prompts, volume.array_kji.shape, slice_axis, roi,
                                                job["prompt"]["max_slices"]) if prompts
                     else roi[slice_axis + 3] - roi[slice_axis])
            progress = JobProgress(self.send, job_id, total)
            finished, lesions = self._segment(job, model, folder, device, volume, roi, slice_axis, prompts,
                                              progress)
            if not finished:  # stopped early: cancelled, shutdown or the client went away
                self._end(job_id, protocol.cancelled(job_id, progress.delivered))
            else:
                self._end(job_id, protocol.done(job_id, progress.delivered, time.monotonic() - started,
                                                job["samples"], folder.name, device.type, model_cached, lesions))
        except JobError as error:
            self._end(job_id, protocol.error(job_id, error.code, str(error)))
        except Exception as error:  # noqa: BLE001 - the worker must survive any job failure
            log.exception("job %s failed", job_id)
            delivered = progress.delivered if progress else 0
            self._end(job_id, protocol.error(job_id, protocol.INTERNAL,
                                             f"unexpected error ({type(error).__name__}: {error}) after {delivered} "
                                             "slice(s); the worker log (stderr) has the details. Please report it."))

    def _end(self, job_id: str, message: dict) -> None:
        """Free the job's ID, then send its last message: a client may submit a new job with that ID as soon as
        it reads the message (the ID was once freed after sending, and such a job was refused as a duplicate)."""
        with self._state_lock:
            self._waiting.discard(job_id)
            self._cancel.discard(job_id)
        self.send(message)

    def _load_model(self, folder: Path, device: torch.device):
        """(model, cached): the model of ``folder`` on ``device``, loaded unless it is the cached one (same folder,
        device and file modification times)."""
        key = _model_key(folder, device)
        cached = key == self._model_key
        if not cached:
            self._model_key, self._model = None, None
            if device.type == "cuda":
                torch.cuda.empty_cache()
            started = time.monotonic()
            self._model = checkpoint.load_model(folder, device)
            self._model_key = key
            log.info("loaded model %s on %s in %.1f s", folder, device, time.monotonic() - started)
        return self._model, cached

    def _model_for(self, folder: Path, device: torch.device, job: dict):
        """(model, cached) of a job, loaded (its weights checked) before the job is accepted; every failure is a
        JobError with its code."""
        try:
            return self._load_model(folder, device)
        except checkpoint.CheckpointError as error:
            raise JobError(protocol.BAD_MODEL, str(error)) from error
        except (RuntimeError, MemoryError) as error:
            if inference.is_out_of_memory(error):
                raise JobError(protocol.OUT_OF_MEMORY, _out_of_memory_message(device, job)) from error
            if "CUDA" in str(error):
                raise JobError(protocol.DEVICE_UNAVAILABLE,
                               f"the GPU could not be used ({error}); choose device 'cpu', or install a PyTorch "
                               "build that supports this GPU") from error
            raise

    def _prepare(self, job: dict):
        """Check everything that can be checked before any work -> (model folder, device, volume, roi, slice_axis,
        prompts (a list of propagation.Prompt, empty for a whole-ROI job))."""
        if job["model"]:  # a model the job names is checked before the volume is read; the default depends on it
            folder, config = _model_folder(job["model"])
        try:
            device = resolve_device(job["device"])
        except DeviceUnavailable as error:
            raise JobError(protocol.DEVICE_UNAVAILABLE, str(error)) from None
        try:  # at most what the job allows (a server's upload limit) and the memory available, known from headers
            limit = free_memory_bytes(torch.device("cpu"))
            if job["max_volume_bytes"] is not None:
                limit = min(limit, job["max_volume_bytes"])
            volume = read_volume(job["volume"], limit, job["allow_irregular_slices"])
        except VolumeError as error:
            raise JobError(protocol.BAD_VOLUME, str(error)) from error
        if not job["model"]:
            folder, config = _model_folder(registry.default_model_name(volume.array_kji, bool(job["prompt"])))
        shape = volume.array_kji.shape
        try:
            roi = check_roi(job["roi_ijk"], shape)
        except ValueError as error:
            raise JobError(protocol.BAD_REQUEST, str(error)) from error
        slice_axis = job["slice_axis"]
        if slice_axis is None:
            slice_axis = choose_slice_axis(volume.ijk_to_ras, "axial", shape)
        lesions = (job["prompt"] or {}).get("lesions", [])
        ras_to_ijk = np.linalg.inv(volume.ijk_to_ras)
        for lesion in lesions:  # a point in mm: the worker has the geometry; accepted echoes both
            if "point_ras" in lesion:
                lesion["point_ijk"] = [round(float(v), 4) for v in (ras_to_ijk @ [*lesion["point_ras"], 1.0])[:3]]
        prompts = [propagation.Prompt(point_ijk=tuple(lesion["point_ijk"])) if "point_ijk" in lesion
                   else propagation.Prompt(box_ijk=tuple(lesion["box_ijk"])) for lesion in lesions]
        try:
            propagation.check_prompts(prompts, shape, slice_axis, roi)
        except ValueError as error:
            given = "; ".join(f"lesion {n}: {lesion['point_ras']}" for n, lesion in enumerate(lesions, start=1)
                              if "point_ras" in lesion)
            raise JobError(protocol.BAD_REQUEST, f"{error}" + (f" (points given in mm, RAS: {given})" if given
                                                                else "")) from error
        try:
            inference.check_model_fits_volume(config)
        except inference.ModelMismatchError as error:
            raise JobError(protocol.MODEL_MISMATCH, f"model {folder.name}: {error}") from error
        try:
            Path(job["job_dir"]).mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise JobError(protocol.BAD_REQUEST, f"cannot create the job folder {job['job_dir']} ({error}); "
                                                 "choose a writable folder") from error
        return folder, device, volume, roi, slice_axis, prompts

    def _segment(self, job: dict, model, folder: Path, device: torch.device, volume, roi: list[int],
                 slice_axis: int, prompts: list, progress: JobProgress) -> tuple[bool, list[dict] | None]:
        """Send ``accepted`` (with the resolved parameters), stream the slices; returns early when the job must
        stop. Every slice computed is delivered, also after a cancel. Returns (whether the job ran to its end, the
        lesions' summary of a prompt job)."""
        job_id = job["job_id"]
        steps = job["steps"] if job["steps"] is not None else model.config.get(model.steps_config_key)
        self.send(protocol.accepted(job_id, volume.array_kji.shape, volume.ijk_to_ras, slice_axis, roi, folder.name,
                                    device.type, progress.total, job["prompt"],
                                    {"samples": job["samples"], "steps": steps, "seed": job["seed"],
                                     "sampler": model.config.get("sampler"),
                                     "samples_are": protocol.samples_are(
                                         bool(prompts) and takes_previous_masks(model.config)),
                                     **propagation.rules_of(model.config, job["prompt"])},
                                    volume.warnings + modality_warnings(model.config, volume.array_kji)
                                    + label_map_warnings(volume.array_kji)))
        stopped = False

        def should_stop() -> bool:
            nonlocal stopped
            stopped = stopped or self._should_stop(job_id)
            return stopped

        if should_stop():
            return False, None
        self.send(protocol.progress(job_id, "segmenting", 0, progress.total, None))
        lesions = [{"slices": 0, "found_slices": 0} for _ in prompts]

        def on_report(report) -> None:  # a lesion's scale is chosen (sent at once), or the lesion is done
            lesions[report.lesion].update(report.as_dict())
            if not report.stops:
                self.send(protocol.progress(job_id, "segmenting", progress.delivered, progress.total,
                                            progress.eta_s, report.as_dict()))

        if prompts:
            results = propagation.propagate(
                model, volume.array_kji, volume.ijk_to_ras, slice_axis, prompts, roi, job["samples"], job["steps"],
                job["seed"], job["batch_size"], job["prompt"]["stop_after_empty"], job["prompt"]["max_slices"],
                should_stop, progress.on_batch, job["prompt"]["scale"], on_report=on_report)
        else:
            results = inference.segment_slices(model, volume.array_kji, roi, slice_axis, job["samples"],
                                               job["steps"], job["seed"], job["batch_size"], should_stop,
                                               progress.on_batch)
        job_dir = Path(job["job_dir"]).resolve()
        try:
            for result in results:  # a stop request ends the generator at its next sampling step
                lesion = getattr(result, "lesion", None)
                name = f"slice_{result.index:05d}.npz" if lesion is None else f"lesion{lesion:02d}_{result.index:05d}.npz"
                _write_npz(job_dir / name, samples=result.samples, consensus=result.consensus,
                           variance=result.variance)
                if lesion is not None:
                    if lesions[lesion]["slices"] == 0 and prompts[lesion].point_ijk is not None:  # its clicked slice
                        lesions[lesion]["found_on_clicked_slice"] = bool(result.consensus.any())  # comes first
                    lesions[lesion]["slices"] += 1
                    lesions[lesion]["found_slices"] += int(result.consensus.any())
                progress.slice_delivered(result.index, job_dir / name, lesion, getattr(result, "box_ijk", None))
        except inference.OutOfMemory as error:
            raise JobError(protocol.OUT_OF_MEMORY, _out_of_memory_message(device, job)) from error
        except OSError as error:
            raise JobError(protocol.BAD_REQUEST, f"cannot write results into {job['job_dir']} ({error}); check "
                                                 "the disk space and that the folder still exists") from error
        finally:
            results.close()
        finished = not stopped and (bool(prompts) or progress.delivered == progress.total)
        return finished, lesions if prompts else None
