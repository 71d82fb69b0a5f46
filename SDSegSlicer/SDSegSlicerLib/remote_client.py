"""A worker on another machine, reached through `sdseg-slicer serve` (docs/protocol.md, "Over HTTP"), with the same
methods as WorkerClient, so SegmentationRun, the module and the headless command use it unchanged.

A job's volume is uploaded once (a DICOM folder as a zip); its messages stream back on one HTTP response, read by a
thread into the queue poll() empties; each slice's inline npz is written into a local job folder and the message
given its path, as a local worker would. A connection that breaks mid-job becomes an `error` message with code
`connection_lost`: the slices that arrived stay.
"""

from __future__ import annotations

import base64
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

from .worker_client import PROTOCOL_VERSION, TERMINAL_MESSAGES, WorkerError, drain, jobs_folder

CONNECT_TIMEOUT_S = 10.0
TOKEN_ENVIRONMENT_VARIABLE = "SDSEG_TOKEN"
DETACHED_HEADER_SUFFIXES = (".nhdr", ".mhd")  # their voxels are in another file


def volume_upload(path) -> tuple[str, bytes]:
    """(file name, percent-encoded for its HTTP header; bytes) to upload for a volume file or a DICOM folder
    (zipped). A detached header (.nhdr, .mhd) names another file, which a server does not take: WorkerError."""
    path = Path(path)
    if path.name.lower().endswith(DETACHED_HEADER_SUFFIXES):
        raise WorkerError(f"{path.name} keeps its voxels in another file, which cannot be sent to a server: save "
                          "the volume as .nrrd or .nii.gz and try again")
    if not path.is_dir():
        return quote(path.name), path.read_bytes()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            archive.write(file, file.relative_to(path).as_posix())
    return quote(f"{path.name or 'series'}.zip"), buffer.getvalue()


class RemoteWorkerClient:
    """The worker protocol through a server at ``url``; ``token`` (default $SDSEG_TOKEN) is sent with every
    request and never logged."""

    def __init__(self, url: str, token: str | None = None):
        self.url = url.rstrip("/")
        self._token = token if token is not None else os.environ.get(TOKEN_ENVIRONMENT_VARIABLE) or None
        self._session = requests.Session()
        if self._token:
            self._session.headers["Authorization"] = f"Bearer {self._token}"
        self._client_id = uuid.uuid4().hex[:12]
        self._messages: queue.Queue = queue.Queue()
        self._jobs_root: Path | None = None
        self._streams: dict[str, requests.Response] = {}
        self._stopping = False
        self.python_executable = None
        self.hello = None

    @property
    def pid(self):
        return None

    def is_running(self) -> bool:
        return self.hello is not None and not self._stopping

    def _request(self, method: str, path: str, **kwargs) -> requests.Response:
        try:
            response = self._session.request(method, self.url + path, timeout=kwargs.pop("timeout", CONNECT_TIMEOUT_S),
                                             **kwargs)
        except requests.RequestException as error:
            raise WorkerError(f"Cannot reach the server {self.url} ({type(error).__name__}): check the address and "
                              "that `sdseg-slicer serve` runs there.") from None
        if response.status_code == 401:
            raise WorkerError(f"The server {self.url} refused the token: set the token it was started with.")
        if response.status_code >= 400:
            try:
                reason = response.json().get("error")
            except ValueError:
                reason = response.reason
            raise WorkerError(f"The server {self.url} refused the request ({response.status_code}: {reason}).")
        return response

    def start(self, timeout: float = CONNECT_TIMEOUT_S, on_wait: Callable[[], None] | None = None) -> dict:
        """Ask the server for its worker's hello (models, device); raises WorkerError with a clear message."""
        hello = self._request("GET", "/hello", timeout=timeout).json()
        if hello.get("protocol") != PROTOCOL_VERSION:
            raise WorkerError(f"The server speaks protocol {hello.get('protocol')} but this module speaks "
                              f"{PROTOCOL_VERSION}: update SDSegSlicer on both sides.")
        self._jobs_root = jobs_folder()
        self.hello = hello
        return hello

    def submit(self, job: dict) -> str:
        """Upload the job's volume and start its job; returns the server's job ID."""
        if not self.is_running():
            raise WorkerError("Not connected to the server: connect again and retry.")
        fields = {k: v for k, v in job.items() if k not in ("volume", "job_dir", "job_id", "type")}
        headers = {"X-SDSeg-Job": json.dumps(fields), "Content-Type": "application/octet-stream"}
        data = b""
        if not fields.get("server_volume"):  # a volume of the server's --data-root needs no upload
            headers["X-SDSeg-Volume-Name"], data = volume_upload(job["volume"])
        job_id = self._request("POST", f"/jobs?client={self._client_id}", data=data, timeout=None,
                               headers=headers).json()["job_id"]
        self.job_dir(job_id).mkdir()
        stream = self._request("GET", f"/jobs/{job_id}/events", stream=True, timeout=(CONNECT_TIMEOUT_S, None))
        self._streams[job_id] = stream
        threading.Thread(target=self._read, args=(job_id, stream), daemon=True).start()
        return job_id

    def _read(self, job_id: str, stream: requests.Response) -> None:
        delivered, ended = 0, False
        try:
            for line in stream.iter_lines():
                if not line:
                    continue
                message = json.loads(line)
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
        finally:
            stream.close()
        if not ended and not self._stopping:
            self._messages.put({"type": "error", "job_id": job_id, "code": "connection_lost",
                                "message": f"The connection to the server {self.url} was lost ({reason}) after "
                                           f"{delivered} slice(s); they are kept. Check the server and run again."})

    def cancel(self, job_id: str) -> None:
        try:
            self._request("POST", f"/jobs/{job_id}/cancel")
        except WorkerError:
            pass  # a lost connection is reported by the job's stream

    def job_dir(self, job_id: str) -> Path:
        if self._jobs_root is None:
            raise WorkerError("Not connected to the server: connect first.")
        return self._jobs_root / job_id

    def discard_job(self, job_id: str) -> None:
        if self._jobs_root is not None:
            shutil.rmtree(self.job_dir(job_id), ignore_errors=True)
        stream = self._streams.pop(job_id, None)
        if stream is not None:
            stream.close()

    def poll(self, timeout: float = 0.0) -> list[dict]:
        return drain(self._messages, timeout)

    def stop(self, timeout: float = 0.0, on_wait: Callable[[], None] | None = None) -> None:
        """Close the connections (the server cancels the jobs still running) and delete the local job folders."""
        self._stopping = True
        for stream in list(self._streams.values()):
            stream.close()
        self._streams.clear()
        self._session.close()
        if self._jobs_root is not None:
            shutil.rmtree(self._jobs_root, ignore_errors=True)
            self._jobs_root = None
