"""Client of the segmentation worker (`python -m sdseg.worker`, protocol version 2, see docs/protocol.md).

The worker runs in its own process with stdin/stdout pipes; a reader thread turns its stdout lines into messages
on a queue, so poll() never blocks the Slicer GUI (call it from a QTimer). A worker that exits or closes its
stdout is reported as an `error` message with code `worker_crashed` and the end of its stderr.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Callable

from .temp_folders import owned_temp_folder

PROTOCOL_VERSION = 2
WORKER_MODULE = "sdseg.worker"
STDERR_LINES_KEPT = 200
CRASH_REPORT_LINES = 6
STOP_TIMEOUT_S = 10.0
UNRESPONSIVE_STOP_TIMEOUT_S = 1.0
CRASH_EXIT_WAIT_S = 30.0  # how long the reader thread waits for the exit code of a worker that closed its stdout
WAIT_POLL_S = 0.05
JOBS_FOLDER_PREFIX = "sdseg-jobs-"
TERMINAL_MESSAGES = ("done", "cancelled", "error")  # the message types that end a job
DUPLICATE_JOB = "duplicate_job"  # the error code of a refused job_id in use (sdseg.worker.protocol; not an end)
WORKER_CRASHED = "worker_crashed"  # the error code this client reports for a worker that ended (sdseg.worker.protocol)
# Environment variables of Slicer's own Python that would break another interpreter.
FOREIGN_PYTHON_VARIABLES = ("PYTHONHOME", "PYTHONPATH")


log = logging.getLogger(__name__)


# The images a model of the worker's hello can be the default for (sdseg.registry.default_model_name, by the tests of
# sdseg.modality_check): the hello's flag, the short name of listings, the image as the status line says it, and
# how the worker tells it (the model selector's card).
DEFAULT_IMAGE_KINDS = (("default_for_ct", "CT", "a CT in Hounsfield units", "with air or fat below -100 HU"),
                       ("default_for_pet", "PET", "a PET in SUV", "fractional values, 99.9 % of them at most 50"))


def default_for(model: dict) -> tuple[str, str] | None:
    """(short name, image) of what a model of the worker's hello is the default for, else None (a worker before the
    CT or PET default sends no ``default_for_ct`` / ``default_for_pet``)."""
    return next(((kind, image) for key, kind, image, _ in DEFAULT_IMAGE_KINDS if model.get(key)), None)


def default_label(model: dict) -> str:
    """'(default)', '(default for CT)', '(default for PET)' or '' of a model of the worker's hello (sdseg.registry
    marks its own listing alike)."""
    image = default_for(model)
    return f"(default for {image[0]})" if image else "(default)" if model.get("default") else ""


class WorkerError(RuntimeError):
    """The worker could not be started or reached; the message says what to do."""


class JobIdInUse(WorkerError):
    """:meth:`WorkerClient.submit` refused a job_id whose job has not ended or whose folder was not discarded: the
    worker itself is fine (the code of this refusal is DUPLICATE_JOB, as the worker's own)."""


_END_OF_OUTPUT = object()


def default_python_executable() -> str:
    """This process's Python. Inside the 3D Slicer application, whose sys.executable may be Slicer itself (which
    must never be launched as the worker: it would open a second Slicer), Slicer's own interpreter PythonSlicer:
    on the PATH Slicer sets, or in the application's bin folder; a WorkerError says what to do when neither has it."""
    slicer_module = sys.modules.get("slicer")
    app = getattr(slicer_module, "app", None)
    if app is None:
        return sys.executable
    name = "PythonSlicer.exe" if os.name == "nt" else "PythonSlicer"
    candidates = [shutil.which("PythonSlicer"), os.path.join(os.path.dirname(sys.executable), name)]
    if hasattr(app, "slicerHome"):
        candidates.append(os.path.join(app.slicerHome, "bin", name))
    for candidate in candidates:
        if candidate and os.path.isfile(candidate):
            return candidate
    if Path(sys.executable).name.lower().startswith("python"):
        return sys.executable
    raise WorkerError("Cannot find Slicer's Python interpreter (PythonSlicer): set the path of a Python interpreter "
                      "that has the SDSegSlicer backend in the 'Python' field of the module's backend section.")


def backend_root() -> Path | None:
    """Folder holding the `sdseg` backend package as source: the module folder of an installed extension
    (sdseg/ beside SDSegSlicerLib/) or the repository root. None when sdseg is installed in site-packages."""
    lib_dir = Path(__file__).resolve().parent
    for root in (lib_dir.parent, lib_dir.parent.parent):
        if (root / "sdseg" / "worker").is_dir() and root.name not in ("site-packages", "dist-packages"):
            return root
    return None


def drain(messages: queue.Queue, timeout: float) -> list:
    """Everything in ``messages`` now, waiting up to ``timeout`` s for the first item when it is empty."""
    items = []
    try:
        items.append(messages.get(timeout=timeout) if timeout > 0 else messages.get_nowait())
        while True:
            items.append(messages.get_nowait())
    except queue.Empty:
        pass
    return items


def jobs_folder() -> Path:
    """A new temporary folder for the jobs' slice files (old ones of crashed runs removed); WorkerError if the
    temporary folder cannot be written."""
    try:
        return owned_temp_folder(JOBS_FOLDER_PREFIX)
    except OSError as error:
        raise WorkerError(f"Cannot create a folder in the temporary folder {tempfile.gettempdir()} "
                          f"({error.strerror or error}): free some disk space or check its permissions.") from None


def wait_for_exit(process: subprocess.Popen, timeout: float, on_wait: Callable[[], None] | None = None) -> bool:
    """Wait up to ``timeout`` s for ``process`` to exit, calling ``on_wait()`` about every WAIT_POLL_S; whether it
    exited."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        try:
            process.wait(remaining if on_wait is None else max(0.0, min(remaining, WAIT_POLL_S)))
            return True
        except subprocess.TimeoutExpired:
            if remaining <= 0:
                return False
        if on_wait is not None:
            on_wait()


def worker_environment(env: dict | None, external_interpreter: bool) -> dict:
    """Environment of the worker process: `env` (default: this process's), without Slicer's Python variables
    for an external interpreter, the backend folder first on PYTHONPATH, unbuffered UTF-8 pipes."""
    result = dict(os.environ if env is None else env)
    if external_interpreter:
        for name in FOREIGN_PYTHON_VARIABLES:
            result.pop(name, None)
    root = backend_root()
    if root is not None:
        result["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), result.get("PYTHONPATH", "")) if p)
    result["PYTHONUNBUFFERED"] = "1"
    result["PYTHONIOENCODING"] = "utf-8"
    return result


class WorkerClient:
    """One worker process; jobs are submitted to it and its messages polled."""

    def __init__(self, python_executable: str | None = None, env: dict | None = None):
        try:
            default = default_python_executable()
        except WorkerError:
            if not python_executable:
                raise
            default = None  # an interpreter was given: Slicer's own is not needed
        self.python_executable = python_executable or default
        external = default is None or (os.path.realpath(shutil.which(self.python_executable) or
                                                        self.python_executable) != os.path.realpath(default))
        self._env = worker_environment(env, external)
        self._process = None
        self._messages: queue.Queue = queue.Queue()
        self._stderr = collections.deque(maxlen=STDERR_LINES_KEPT)
        self._threads: list[threading.Thread] = []
        self._write_lock = threading.Lock()
        self._jobs_root = None
        self._active_jobs: list[str] = []
        self._stopping = False
        self._crash_reported = False
        self._exit_code = None
        self.hello = None

    # --- process ----------------------------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None and not self._stopping

    def start(self, timeout: float = 120.0, on_wait: Callable[[], None] | None = None) -> dict:
        """Start the worker and wait for its `hello` (models, device); raises WorkerError with a clear message.
        ``on_wait()`` is called about every ``WAIT_POLL_S`` while waiting (a GUI passes its event processing, so
        it stays responsive while the worker imports PyTorch)."""
        self.launch()
        return self.wait_ready(timeout, on_wait)

    def launch(self) -> None:
        """Start the worker process without waiting for it: it imports PyTorch while the user does something
        else (a warm start); wait_ready() or poll_ready() then take its hello."""
        if self._process is not None:
            raise WorkerError("The worker is already started: stop it before starting it again.")
        self._jobs_root = jobs_folder()  # first: a failure here leaves no worker running
        try:
            self._process = subprocess.Popen(
                [self.python_executable, "-m", WORKER_MODULE],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                text=True, encoding="utf-8", errors="replace", bufsize=1, env=self._env,
                # Own process group: Ctrl-C in a terminal reaches the client, which cancels the job cleanly.
                start_new_session=os.name != "nt",
                creationflags=(subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_NO_WINDOW)
                if os.name == "nt" else 0)
        except OSError as error:
            shutil.rmtree(self._jobs_root, ignore_errors=True)
            self._jobs_root = None
            raise WorkerError(f"Cannot start the worker: no usable Python interpreter at '{self.python_executable}' "
                              f"({error.strerror}); choose a Python 3 interpreter that has the backend.") from None
        self._threads = [threading.Thread(target=self._read_stdout, daemon=True),
                         threading.Thread(target=self._read_stderr, daemon=True)]
        for thread in reversed(self._threads):  # stderr's first: the stdout reader joins it at the end
            thread.start()

    def wait_ready(self, timeout: float = 120.0, on_wait: Callable[[], None] | None = None) -> dict:
        """The launched worker's hello, waiting up to ``timeout`` s for it (at once when it came already); a
        WorkerError (the worker stopped) when it ends first, answers something else or does not answer in time."""
        deadline = time.monotonic() + timeout
        while self.hello is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                tail = self.stderr_tail(CRASH_REPORT_LINES)
                self.stop(timeout=UNRESPONSIVE_STOP_TIMEOUT_S)  # it did not answer so far: no long grace
                raise WorkerError(f"The worker did not start within {timeout:.0f} s"
                                  + (f" (last output: {tail})" if tail else "")
                                  + ": check the Python interpreter and try again.")
            if self.poll_ready(remaining if on_wait is None else min(remaining, WAIT_POLL_S)) is None \
                    and on_wait is not None:
                on_wait()
        return self.hello

    def poll_ready(self, timeout: float = 0.0) -> dict | None:
        """The launched worker's hello if it came (waiting up to ``timeout`` s for it), else None; a WorkerError
        (the worker stopped) when the worker ended before it or is not an SDSegSlicer worker of this protocol."""
        if self.hello is not None:
            return self.hello
        for message in self.poll(timeout=timeout):  # nothing but the hello comes before a job is submitted
            if message.get("type") == "error":
                self.stop()
                raise WorkerError(self._start_failure(message))
            if message.get("type") != "hello":
                self.stop()
                raise WorkerError(f"The worker sent '{message.get('type')}' before its hello: "
                                  "it is not an SDSegSlicer worker.")
            if message.get("protocol") != PROTOCOL_VERSION:
                self.stop()
                raise WorkerError(f"The worker speaks protocol {message.get('protocol')} but this module "
                                  f"speaks {PROTOCOL_VERSION}: update SDSegSlicer and its backend together.")
            self.hello = message
        return self.hello

    def _start_failure(self, crash: dict) -> str:
        """One line on why the worker ended before its hello (its output goes to the log): the interpreter lacks
        the backend, or it crashed."""
        tail = list(self._stderr)
        log.info("the worker (%s) ended before it was ready, exit code %s; its last output:\n%s",
                 self.python_executable, crash.get("exit_code"), "\n".join(tail[-STDERR_LINES_KEPT:]))
        missing = next((match.group(1) for line in reversed(tail)
                        if (match := re.search(r"No module named '([^']+)'", line))), None)
        if missing is not None:
            return (f"The Python interpreter '{self.python_executable}' lacks the backend (no module named "
                    f"'{missing}'): install it there (in 3D Slicer: 'Install backend'; elsewhere: pip install torch "
                    "and SDSegSlicer), or choose an interpreter that has it.")
        return (f"The worker ended on start with exit code {crash.get('exit_code')}: '{self.python_executable}' may "
                "not be a working Python 3 interpreter with the backend; its output is in the log.")

    def stop(self, timeout: float = STOP_TIMEOUT_S, on_wait: Callable[[], None] | None = None) -> None:
        """Ask the worker to exit (kill it if it does not within ``timeout`` s, or UNRESPONSIVE_STOP_TIMEOUT_S
        before its hello: it reads no request while it imports, and has nothing to finish), and delete the job
        folders. ``on_wait()`` is called about every ``WAIT_POLL_S`` while the worker exits (a GUI processes its
        events)."""
        if self.hello is None:
            timeout = min(timeout, UNRESPONSIVE_STOP_TIMEOUT_S)
        process = self._process
        if process is not None and not self._stopping:
            self._stopping = True
            if process.poll() is None:
                try:
                    self._send({"type": "shutdown"})
                    process.stdin.close()
                except (OSError, ValueError):  # the worker is already gone
                    pass
                if not wait_for_exit(process, timeout, on_wait):
                    process.kill()
                    process.wait()
            for thread in self._threads:
                thread.join(timeout=2.0)
            for stream in (process.stdin, process.stdout, process.stderr):
                try:
                    stream.close()
                except (OSError, ValueError):
                    pass
        if self._jobs_root is not None:
            shutil.rmtree(self._jobs_root, ignore_errors=True)
            self._jobs_root = None

    # --- pipes ------------------------------------------------------------------------------------------------

    def _read_stdout(self):
        for line in self._process.stdout:
            line = line.strip()
            if not line:
                continue
            try:
                message = json.loads(line)
            except ValueError:
                message = None
            if isinstance(message, dict):
                self._messages.put(message)
            else:
                self._stderr.append(f"(not a protocol message on stdout) {line}")
        # The end of the output: the exit code and the end of stderr explain a crash. They are waited for here,
        # never in poll() (the GUI thread).
        try:
            self._exit_code = self._process.wait(timeout=CRASH_EXIT_WAIT_S)
        except subprocess.TimeoutExpired:
            self._exit_code = None
        self._threads[1].join(timeout=2.0)
        self._messages.put(_END_OF_OUTPUT)

    def _read_stderr(self):
        for line in self._process.stderr:
            if line.strip():
                self._stderr.append(line.rstrip())

    def stderr_tail(self, lines: int = 20) -> str:
        """The last `lines` lines the worker wrote to stderr, joined by ' | ' (one line)."""
        return " | ".join(list(self._stderr)[-lines:])

    def _send(self, message: dict) -> None:
        with self._write_lock:
            self._process.stdin.write(json.dumps(message) + "\n")
            self._process.stdin.flush()

    # --- jobs -------------------------------------------------------------------------------------------------

    def submit(self, job: dict) -> str:
        """Send a `segment` job; fills `job_id` (if missing) and `job_dir` (a new folder). Returns the job ID. A
        `job_id` of a job still running, or of one whose folder was not discarded, is refused (JobIdInUse); a worker
        that is not running, WorkerError."""
        if not self.is_running():
            raise WorkerError("The worker is not running: restart it and try again.")
        job_id = str(job.get("job_id") or uuid.uuid4().hex[:12])
        if job_id in self._active_jobs:
            raise JobIdInUse(f"Job {job_id} is still running: give the new job another job_id.")
        job_dir = self.job_dir(job_id)
        if job_dir.exists():
            raise JobIdInUse(f"The files of an earlier job {job_id} are still there: discard that job first or give "
                             "the new job another job_id.")
        job_dir.mkdir()
        message = {**job, "type": "segment", "job_id": job_id, "job_dir": str(job_dir)}
        try:
            self._send(message)
        except OSError:
            raise WorkerError("The worker stopped before it received the job: restart it and try again.") from None
        self._active_jobs.append(job_id)
        return job_id

    submit_in_background = submit  # a line written to the worker's pipe: nothing to wait for

    def cancel(self, job_id: str) -> None:
        """Ask the worker to stop a job; it answers `cancelled`. A dead worker is reported by poll()."""
        try:
            self._send({"type": "cancel", "job_id": job_id})
        except (OSError, ValueError):
            pass

    def job_dir(self, job_id: str) -> Path:
        """The folder where the worker writes a job's slice files (inside a temporary folder deleted by stop())."""
        if self._jobs_root is None:
            raise WorkerError("The worker is not started: start it first.")
        return self._jobs_root / job_id

    def discard_job(self, job_id: str) -> None:
        """Delete the folder of a finished job (its slice files were read)."""
        if self._jobs_root is not None:
            shutil.rmtree(self.job_dir(job_id), ignore_errors=True)

    def poll(self, timeout: float = 0.0) -> list[dict]:
        """Messages received so far (waits up to `timeout` s for the first one). A worker that died gives an
        `error` message with code `worker_crashed` for each unfinished job (one with job_id None if none)."""
        result = []
        for message in drain(self._messages, timeout):
            if message is _END_OF_OUTPUT:
                result += self._crash_messages()
                continue
            if message.get("type") in TERMINAL_MESSAGES and message.get("job_id") in self._active_jobs \
                    and message.get("code") != DUPLICATE_JOB:  # refuses a second request; the job goes on
                self._active_jobs.remove(message["job_id"])
            result.append(message)
        return result

    def _crash_messages(self) -> list[dict]:
        if self._stopping or self._crash_reported:
            return []
        self._crash_reported = True
        exit_code = self._exit_code
        tail = self.stderr_tail(CRASH_REPORT_LINES)
        text = (f"The segmentation worker stopped unexpectedly (exit code {exit_code})"
                + (f"; its last output: {tail}" if tail else "")
                + ". Results received so far are kept: restart the worker to continue"
                + " (if it happens again, try fewer samples, a smaller region or the CPU device).")
        job_ids = self._active_jobs or [None]
        self._active_jobs = []
        return [{"type": "error", "job_id": job_id, "code": WORKER_CRASHED, "message": text,
                 "exit_code": exit_code, "stderr_tail": tail} for job_id in job_ids]
