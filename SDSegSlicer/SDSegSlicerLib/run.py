"""One segmentation run: submits a job to the worker and turns its messages into result nodes and progress.

The same loop serves the Slicer module (process_messages() from a QTimer) and the headless command (a loop).
States: "idle" (not started), "running", then one of "done", "cancelled", "error". A cancelled or failed run
keeps every slice that arrived.
"""

from __future__ import annotations

import time
from pathlib import Path

from .worker_client import default_for

# The worker's default and largest number of samples and its devices (sdseg.worker.protocol; a test keeps them
# equal): the module's, the web app's and the command's default, limit and choices.
DEFAULT_SAMPLES = 8
MAX_SAMPLES = 256
DEVICES = ("auto", "cuda", "cpu")
VOLUME_SUFFIXES = (".seg.nrrd", ".nii.gz", ".nrrd", ".nhdr", ".nii", ".mha", ".mhd")


def volume_display_name(path: str) -> str:
    """A volume file or DICOM folder path -> a short name: 'ct.nii.gz' -> 'ct', '/data/series1/' -> 'series1'."""
    name = Path(str(path).rstrip("/\\")).name
    for suffix in VOLUME_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def remaining_seconds(done: int, total: int, elapsed_s: float) -> float | None:
    """Time left at the average rate so far: elapsed * (total - done) / done (None before the first item)."""
    if done <= 0 or total <= done:
        return None if done <= 0 else 0.0
    return elapsed_s * (total - done) / done


def slices_text(progress: dict) -> str:
    """'3/25 slices', or for a prompt job, whose total is only a bound (it stops where the lesions end),
    '3 slices (at most 25)'."""
    done, total = progress["done"], progress["total"]
    return f"{done} slices (at most {total})" if progress.get("total_is_bound") else f"{done}/{total} slices"


def format_duration(seconds: float | None) -> str:
    """'m:ss' or 'h:mm:ss' of a duration or ETA in seconds; '--:--' when unknown (None)."""
    if seconds is None:
        return "--:--"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class SegmentationRun:
    """Ties a WorkerClient and a StreamedSegmentationWriter together for one job."""

    def __init__(self, scene, client, job: dict, reference_volume_node=None):
        self.scene = scene
        self.client = client
        self.job = dict(job)
        self.reference_volume_node = reference_volume_node
        self.state = "idle"
        self.progress = {"phase": "waiting for the worker", "done": 0, "total": 0, "eta_s": None}
        self.error_message = None
        self.error_code = None
        self.job_id = None
        self.accepted = None
        self.result = None
        self.writer = None
        self._started_at = None
        self._cancel_requested = False

    @property
    def worker_lesions(self) -> list[dict]:
        """The `done` summary's lesions (scale, stops, ... per lesion of a prompt job); empty before `done`."""
        return ((self.result or {}).get("summary") or {}).get("lesions") or []

    @property
    def note_lines(self) -> list[str]:
        """What the worker's ``accepted`` says that the user must read (none before it): the model it chose for a job
        that names none (the default depends on the volume: sdseg.registry.default_model_name), then 'Warning: ...'
        for each of its warnings about the input."""
        if self.accepted is None:
            return []
        chosen = [] if self.job.get("model") else [f"Model: {self.accepted['model']} ({self._default_reason()})."]
        return chosen + [f"Warning: {warning}" for warning in self.accepted.get("warnings", [])]

    def _default_reason(self) -> str:
        """Why the worker chose the accepted model for a job that named none, from the worker's hello."""
        models = (getattr(self.client, "hello", None) or {}).get("models") or []
        image = next((default_for(model) for model in models if model.get("name") == self.accepted["model"]), None)
        return f"the default for this volume, {image[1]}" if image else "the default for this volume"

    @property
    def segmentation_node(self):
        return self.writer.segmentation_node if self.writer is not None else None

    @property
    def variance_node(self):
        return self.writer.variance_node if self.writer is not None else None

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self._started_at if self._started_at is not None else 0.0

    def start(self) -> str:
        """Submit the job without waiting for a server's upload (raises worker_client.WorkerError if the worker is
        gone). Returns the job ID."""
        self.job_id = self.client.submit_in_background(self.job)
        self.state = "running"
        self._started_at = time.monotonic()
        return self.job_id

    def cancel(self) -> None:
        """Ask the worker to stop; the run becomes "cancelled" when it confirms (within one batch)."""
        if self.state == "running" and not self._cancel_requested:
            self._cancel_requested = True
            self.progress["phase"] = "cancelling"
            self.client.cancel(self.job_id)

    def abandon(self) -> None:
        """Stop following a running job without waiting for the worker (one that does not answer a cancel):
        the run becomes "cancelled" and keeps the slices that arrived."""
        if self.state == "running":
            if self.writer is not None:
                self.writer.flush()
            self._finish("cancelled")
            self.client.discard_job(self.job_id)

    def process_messages(self, timeout: float = 0.0) -> str:
        """Handle the messages that arrived (waiting up to `timeout` s for one), push new slices into MRML,
        and return the state."""
        if self.state != "running":
            return self.state
        for message in self.client.poll(timeout):
            if message.get("job_id") not in (self.job_id, None) or self.state != "running":
                continue
            try:
                self._handle(message)
            except (OSError, ValueError, KeyError, TypeError) as error:
                self.client.cancel(self.job_id)
                self._finish("error", f"Cannot use the worker's result ({type(error).__name__}: {error}).",
                             code="bad_result")
        if self.writer is not None:
            self.writer.flush()
        if self.state != "running":
            self.client.discard_job(self.job_id)
        return self.state

    def _handle(self, message: dict) -> None:
        kind = message.get("type")
        if kind == "accepted":
            self.accepted = message
            self.progress.update(total=int(message["total"]), phase="starting",
                                 total_is_bound=bool(message.get("prompt")))
            volume_name = (self.reference_volume_node.GetName() if self.reference_volume_node is not None
                           else volume_display_name(self.job["volume"]))
            from .segmentation_writer import StreamedSegmentationWriter  # MRML: not imported by --help

            self.writer = StreamedSegmentationWriter(
                self.scene, message, f"{volume_name} {message.get('model', 'segmentation')}",
                int(message["samples"]), self.reference_volume_node)  # as the worker resolved it
        elif kind == "progress":
            self._update_progress(message, message.get("phase", self.progress["phase"]))
        elif kind == "slice":
            if self.writer is None:
                raise ValueError("The worker sent a slice before accepting the job.")
            self.writer.add_slice(message)
            self._update_progress(message, "segmenting")
        elif kind == "done":
            self.result = message
            self._finish("done")
        elif kind == "cancelled":
            self._finish("cancelled")
        elif kind == "error":
            self._finish("error", message.get("message") or "The worker reported an error.", message.get("code"))

    def _update_progress(self, message: dict, phase: str) -> None:
        if self._cancel_requested:
            phase = "cancelling"
        done, total = int(message.get("done", 0)), int(message.get("total", self.progress["total"]))
        eta = message.get("eta_s")
        if eta is None:
            eta = remaining_seconds(done, total, self.elapsed_s)
        self.progress.update(phase=phase, done=done, total=total, eta_s=eta)

    def _finish(self, state: str, message: str | None = None, code: str | None = None) -> None:
        self.state = state
        self.error_message, self.error_code = message, code
        self.progress.update(phase=state, eta_s=None)
        if self.writer is not None:
            self.progress["done"] = self.writer.slices_received
