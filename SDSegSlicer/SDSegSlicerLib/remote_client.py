"""A worker on another machine, reached through `sdseg-slicer serve` (docs/protocol.md, "Over HTTP"), with the same
methods as WorkerClient, so SegmentationRun, the module and the headless command use it unchanged.

A job's volume is uploaded once, compressed (a raw NRRD as a gzip-encoded NRRD, a DICOM folder as a zip);
submit_in_background() (what SegmentationRun uses) uploads in a thread, reporting `progress` messages, so a GUI
never waits on the network; no request waits for ever. Its messages stream back on one HTTP response, read by a
thread into the queue poll() empties; each slice's inline npz is written into a local job folder and the message
given its path, as a local worker would. A connection that breaks mid-job becomes an `error` message with code
`connection_lost`: the slices that arrived stay.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import os
import queue
import shutil
import threading
import uuid
import zipfile
from pathlib import Path
from typing import Callable
from urllib.parse import quote

import requests

from .worker_client import PROTOCOL_VERSION, TERMINAL_MESSAGES, WAIT_POLL_S, WorkerError, drain, jobs_folder

CONNECT_TIMEOUT_S = 10.0
UPLOAD_TIMEOUT_S = 300.0  # the longest silence while uploading (a stalled server), and for the job's answer
UPLOAD_CHUNK_BYTES = 1 << 20  # progress is reported per chunk sent
GZIP_LEVEL = 1  # fast: a 150 MB CT compresses in seconds, to about a third
TOKEN_ENVIRONMENT_VARIABLE = "SDSEG_TOKEN"
DETACHED_HEADER_SUFFIXES = (".nhdr", ".mhd")  # their voxels are in another file


def compress_nrrd(data: bytes) -> bytes | None:
    """A NRRD file with an attached header and raw voxels, gzip-encoded (the header's `encoding: gzip`); None for
    any other NRRD (already compressed, or its voxels elsewhere)."""
    end = data.find(b"\n\n")
    header = data[:end + 1] if end >= 0 else b""
    lines = header.split(b"\n")
    if not header.startswith(b"NRRD") or b"encoding: raw" not in lines or any(
            line.startswith(b"data file:") for line in lines):
        return None
    header = header.replace(b"\nencoding: raw\n", b"\nencoding: gzip\n")
    return header + b"\n" + gzip.compress(data[end + 2:], compresslevel=GZIP_LEVEL)


def volume_upload(path) -> tuple[str, bytes]:
    """(file name, percent-encoded for its HTTP header; bytes) to upload for a volume file or a DICOM folder
    (zipped), compressed (a raw NRRD gzip-encoded, a .nii gzipped). A detached header (.nhdr, .mhd) names another
    file, which a server does not take: WorkerError."""
    path = Path(path)
    if path.name.lower().endswith(DETACHED_HEADER_SUFFIXES):
        raise WorkerError(f"{path.name} keeps its voxels in another file, which cannot be sent to a server: save "
                          "the volume as .nrrd or .nii.gz and try again")
    if not path.is_dir():
        data = path.read_bytes()
        if path.name.lower().endswith(".nii"):
            return quote(path.name + ".gz"), gzip.compress(data, compresslevel=GZIP_LEVEL)
        if path.name.lower().endswith(".nrrd"):
            return quote(path.name), compress_nrrd(data) or data
        return quote(path.name), data
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            archive.write(file, file.relative_to(path).as_posix())
    return quote(f"{path.name or 'series'}.zip"), buffer.getvalue()


class UploadCancelled(Exception):
    """The job was cancelled while its volume was being uploaded."""


class UploadBody:
    """A request body read in chunks: ``on_chunk(sent, total)`` after each (it may raise UploadCancelled)."""

    def __init__(self, data: bytes, on_chunk: Callable[[int, int], None]):
        self._data, self._sent, self._on_chunk = data, 0, on_chunk

    def __len__(self):
        return len(self._data)

    def read(self, size: int = -1) -> bytes:
        size = UPLOAD_CHUNK_BYTES if size is None or size < 0 else min(size, UPLOAD_CHUNK_BYTES)
        chunk = self._data[self._sent:self._sent + size]
        self._sent += len(chunk)
        if chunk:
            self._on_chunk(self._sent, len(self._data))
        return chunk


def call_in_thread(function, on_wait: Callable[[], None] | None):
    """function() in a thread, calling ``on_wait()`` about every WAIT_POLL_S until it returns; its result, or
    what it raised."""
    if on_wait is None:
        return function()
    outcome = []

    def run():
        try:
            outcome.append((function(), None))
        except BaseException as error:  # noqa: BLE001 - raised again on the caller's thread
            outcome.append((None, error))
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    while thread.is_alive():
        on_wait()
        thread.join(WAIT_POLL_S)
    result, error = outcome[0]
    if error is not None:
        raise error
    return result


class RemoteWorkerClient:
    """The worker protocol through a server at ``url``; ``token`` (default $SDSEG_TOKEN) is sent with every
    request and never logged."""

    def __init__(self, url: str, token: str | None = None):
        self.url = url.rstrip("/")
        self._token = token if token is not None else os.environ.get(TOKEN_ENVIRONMENT_VARIABLE) or None
        self._session = self._new_session()
        self._client_id = uuid.uuid4().hex[:12]
        self._messages: queue.Queue = queue.Queue()
        self._jobs_root: Path | None = None
        self._streams: dict[str, tuple] = {}  # open event streams and their sessions; closed by whoever takes one out
        self._streams_lock = threading.Lock()
        self._opening: dict[str, bool] = {}  # job ID whose stream is being opened -> discarded meanwhile
        self._uploads: dict[str, str | None] = {}  # local job ID of submit_in_background -> server job ID
        self._cancelled: set[str] = set()
        self._stopping = False
        self.python_executable = None
        self.hello = None

    @property
    def pid(self):
        return None

    def is_running(self) -> bool:
        return self.hello is not None and not self._stopping

    def poll_ready(self, timeout: float = 0.0) -> dict | None:
        """The server's hello (start() waited for it), as WorkerClient.poll_ready gives a launched worker's."""
        return self.hello

    def _new_session(self) -> requests.Session:
        session = requests.Session()
        if self._token:
            session.headers["Authorization"] = f"Bearer {self._token}"
        return session

    def _request(self, method: str, path: str, session: requests.Session | None = None,
                 **kwargs) -> requests.Response:
        try:
            response = (session or self._session).request(method, self.url + path,
                                                          timeout=kwargs.pop("timeout", CONNECT_TIMEOUT_S), **kwargs)
        except requests.RequestException as error:
            raise WorkerError(f"Cannot reach the server {self.url} ({type(error).__name__}): check the address and "
                              "that `sdseg-slicer serve` runs there.") from None
        if response.status_code == 401:
            raise WorkerError(self._token_refusal())
        if response.status_code >= 400:
            try:
                reason = response.json().get("error")
            except ValueError:
                reason = response.reason
            raise WorkerError(f"The server {self.url} refused the request ({response.status_code}: {reason}).")
        return response

    def _token_refusal(self) -> str:
        """Why the server answered 401 (it has a token): none was sent, or another one."""
        started_with = (f"the one `sdseg-slicer serve` was started with there (its --token or "
                        f"${TOKEN_ENVIRONMENT_VARIABLE})")
        if self._token:
            return f"The server {self.url} refused the token given: give {started_with}."
        return f"The server {self.url} needs a token and none was given: give {started_with}."

    def start(self, timeout: float = CONNECT_TIMEOUT_S, on_wait: Callable[[], None] | None = None) -> dict:
        """Ask the server for its worker's hello (models, device); raises WorkerError with a clear message.
        ``on_wait()`` is called while waiting for the answer."""
        hello = call_in_thread(lambda: self._request("GET", "/hello", timeout=timeout).json(), on_wait)
        if hello.get("protocol") != PROTOCOL_VERSION:
            raise WorkerError(f"The server speaks protocol {hello.get('protocol')} but this module speaks "
                              f"{PROTOCOL_VERSION}: update SDSegSlicer on both sides.")
        self._jobs_root = jobs_folder()
        self.hello = hello
        return hello

    def submit(self, job: dict) -> str:
        """Upload the job's volume and start its job; returns the server's job ID (waits for the upload)."""
        if not self.is_running():
            raise WorkerError("Not connected to the server: connect again and retry.")
        upload = self._upload_request(job)
        job_id = self._post_job(*upload)
        self._follow(job_id, job_id)
        return job_id

    def submit_in_background(self, job: dict) -> str:
        """Start the job without waiting: its volume is uploaded in a thread (`progress` messages say how far);
        returns a local job ID, which every message of the job carries. A detached header or an unreadable file is
        refused here (WorkerError)."""
        if not self.is_running():
            raise WorkerError("Not connected to the server: connect again and retry.")
        upload = self._upload_request(job)
        local_id = uuid.uuid4().hex[:12]
        self._uploads[local_id] = None  # server job ID once known
        threading.Thread(target=self._upload_and_follow, args=(local_id, upload), daemon=True).start()
        return local_id

    def _upload_request(self, job: dict) -> tuple[dict, bytes]:
        fields = {k: v for k, v in job.items() if k not in ("volume", "job_dir", "job_id", "type")}
        headers = {"X-SDSeg-Job": json.dumps(fields), "Content-Type": "application/octet-stream"}
        data = b""
        if not fields.get("server_volume"):  # a volume of the server's --data-root needs no upload
            try:
                headers["X-SDSeg-Volume-Name"], data = volume_upload(job["volume"])
            except OSError as error:
                raise WorkerError(f"Cannot read the volume to upload ({error}).") from None
        return headers, data

    def _post_job(self, headers: dict, data: bytes, on_chunk=None) -> str:
        body = UploadBody(data, on_chunk or (lambda sent, total: None))
        return self._request("POST", f"/jobs?client={self._client_id}", data=body, headers=headers,
                             timeout=(CONNECT_TIMEOUT_S, UPLOAD_TIMEOUT_S)).json()["job_id"]

    def _upload_and_follow(self, local_id: str, upload: tuple[dict, bytes]) -> None:
        def on_chunk(sent, total):
            if local_id in self._cancelled:
                raise UploadCancelled()
            self._messages.put({"type": "progress", "job_id": local_id, "done": 0, "total": 0,
                                "phase": f"uploading the volume ({100 * sent // max(total, 1)}%)"})
        try:
            server_id = self._post_job(*upload, on_chunk=on_chunk)
        except (UploadCancelled, WorkerError) as error:
            if local_id in self._cancelled or self._stopping:
                self._messages.put({"type": "cancelled", "job_id": local_id})
            else:
                self._messages.put({"type": "error", "job_id": local_id, "code": "upload_failed",
                                    "message": f"The volume could not be sent: {error}"})
            return
        self._uploads[local_id] = server_id
        if local_id in self._cancelled or self._stopping:
            self._cancel_on_server(server_id)
            self._messages.put({"type": "cancelled", "job_id": local_id})
            return
        try:
            self._follow(server_id, local_id)
        except WorkerError as error:
            self._messages.put({"type": "error", "job_id": local_id, "code": "connection_lost", "message": str(error)})

    def _follow(self, server_id: str, job_id: str) -> None:
        """Open the job's event stream on a connection of its own (its session: a stream closed by another thread
        while it is read cannot disturb the connections of other requests); a thread reads it, its messages
        carrying ``job_id``."""
        self.job_dir(job_id).mkdir()
        session = self._new_session()
        with self._streams_lock:
            self._opening[job_id] = False
        try:
            stream = self._request("GET", f"/jobs/{server_id}/events", session=session, stream=True,
                                   timeout=(CONNECT_TIMEOUT_S, None))
        except WorkerError:
            with self._streams_lock:
                self._opening.pop(job_id, None)
            session.close()
            raise
        with self._streams_lock:
            dropped = self._opening.pop(job_id) or self._stopping  # discarded or stopped while it was opened
            if not dropped:
                self._streams[job_id] = (stream, session)
        if dropped:  # nobody reads it: closed at once (the server cancels a job whose reader went away)
            stream.close()
            session.close()
            return
        threading.Thread(target=self._read, args=(job_id, stream), daemon=True).start()

    def _read(self, job_id: str, stream: requests.Response) -> None:
        delivered, ended = 0, False
        try:
            for line in stream.iter_lines():
                if not line:
                    continue
                message = {**json.loads(line), "job_id": job_id}
                if message.get("type") == "slice":
                    path = self.job_dir(job_id) / f"{delivered:05d}.npz"
                    path.write_bytes(base64.b64decode(message.pop("payload")))
                    message["file"] = str(path)
                    delivered += 1
                self._messages.put(message)
                if message.get("type") in TERMINAL_MESSAGES:
                    ended = True
                    break
        except Exception as error:  # noqa: BLE001 - any failure of the stream (closed under us by stop(), too)
            reason = type(error).__name__
        else:
            reason = "the stream ended early"
        closed_under_us = not self._close_stream(job_id)  # by discard_job or stop
        if not ended and not self._stopping and not closed_under_us:
            self._messages.put({"type": "error", "job_id": job_id, "code": "connection_lost",
                                "message": f"The connection to the server {self.url} was lost ({reason}) after "
                                           f"{delivered} slice(s); they are kept. Check the server and run again."})

    def cancel(self, job_id: str) -> None:
        """Ask the server to stop a job (in a thread: never waits); one still uploading stops uploading."""
        self._cancelled.add(job_id)
        server_id = self._uploads.get(job_id, job_id)
        if server_id is not None:
            threading.Thread(target=self._cancel_on_server, args=(server_id,), daemon=True).start()

    def _cancel_on_server(self, server_id: str) -> None:
        try:
            self._request("POST", f"/jobs/{server_id}/cancel")
        except WorkerError:
            pass  # a lost connection is reported by the job's stream

    def job_dir(self, job_id: str) -> Path:
        if self._jobs_root is None:
            raise WorkerError("Not connected to the server: connect first.")
        return self._jobs_root / job_id

    def _close_stream(self, job_id: str) -> bool:
        """Close the job's event stream unless another thread did; whether this call closed it. A stream is closed
        once only: two closes of one response (its reader's and discard_job's) could hand its connection back to
        the session's pool twice, and two later requests would then share one socket."""
        with self._streams_lock:
            stream, session = self._streams.pop(job_id, (None, None))
        if stream is not None:
            stream.close()
            session.close()
        return stream is not None

    def discard_job(self, job_id: str) -> None:
        with self._streams_lock:
            if job_id in self._opening:
                self._opening[job_id] = True
        self._close_stream(job_id)  # before its folder goes: its reader may be writing a slice there
        if self._jobs_root is not None:
            shutil.rmtree(self.job_dir(job_id), ignore_errors=True)

    def poll(self, timeout: float = 0.0) -> list[dict]:
        return drain(self._messages, timeout)

    def stop(self, timeout: float = 0.0, on_wait: Callable[[], None] | None = None) -> None:
        """Close the connections (the server cancels the jobs still running) and delete the local job folders."""
        self._stopping = True
        with self._streams_lock:
            open_jobs = list(self._streams)
        for job_id in open_jobs:
            self._close_stream(job_id)
        self._session.close()
        if self._jobs_root is not None:
            shutil.rmtree(self._jobs_root, ignore_errors=True)
            self._jobs_root = None
