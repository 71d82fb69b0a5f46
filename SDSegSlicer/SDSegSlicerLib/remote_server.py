"""`sdseg-slicer serve`: the worker protocol over HTTP, for clients on other machines (docs/protocol.md, "Over HTTP").

Why HTTP with a streamed response rather than WebSocket: a client needs only `requests`, which 3D Slicer ships (no
package to add to Slicer's Python), the server only the standard library, and any HTTP reverse proxy can add TLS.

One local worker process (one model cache) serves every client. Jobs wait in one queue per client; the next job is
the oldest one of the client served longest ago (round robin), so that a client with many jobs does not starve the
others. A job's volume is uploaded once (a volume file, or a DICOM folder as a zip), or named by a path inside the
server's --data-root; its messages stream back on GET /jobs/<id>/events as JSON lines, each slice's npz inline
(base64) instead of a file path. A client that disconnects from its events stream cancels its job.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import hmac
import http.server
import ipaddress
import itertools
import json
import logging
import queue
import shutil
import socket
import socketserver
import sys
import threading
import time
import uuid
import zipfile
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse, urlsplit

from .temp_folders import owned_temp_folder
from .worker_client import (DUPLICATE_JOB, TERMINAL_MESSAGES, WORKER_CRASHED, JobIdInUse, WorkerClient,
                            WorkerError)

DEFAULT_PORT = 8765
MAX_JOB_HEADER_BYTES = 32 * 1024  # below http.server's 64 KiB limit on a header line (over it: 431)
DEFAULT_CONNECTION_TIMEOUT_S = 60  # a connection that sends or takes nothing for this long is closed
DEFAULT_MAX_CONNECTIONS = 32  # open at once; one more is answered 503 and closed
DRAIN_S = 2.0  # after a refusal, the rest of the request is read and dropped for at most this long, then closed
UPLOAD_SUFFIXES = (".nrrd", ".nii", ".nii.gz", ".mha", ".zip")  # one file each: no header naming another file
POLL_S = 0.2
UPLOADS_FOLDER_PREFIX = "sdseg-uploads-"

log = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and 'localhost'."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_binding(host: str, token: str | None) -> None:
    """A ValueError unless ``host`` is loopback or there is a token (`serve` and `web` alike)."""
    if not token and not is_loopback(host):
        raise ValueError(f"--host {host} is reachable from other machines: give a --token (or $SDSEG_TOKEN)")


class RequestError(Exception):
    """An HTTP request the server refuses: ``status`` and a one-line message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class Job:
    """A job of one client: the request for the worker, its uploaded files, and the messages for its client."""

    def __init__(self, client: str, request: dict, folder: Path):
        self.id, self.client, self.request, self.folder = uuid.uuid4().hex[:12], client, request, folder
        self.started = False
        self.messages: queue.Queue = queue.Queue()
        self.events_claimed = False  # the messages go to one reader (GET /jobs/<id>/events), once
        self.claim_lock = threading.Lock()
        self.finished = False
        self.result: dict | None = None  # its last message (done, cancelled or error)

    def state(self) -> dict:
        """GET /jobs/<id>: waiting, running or finished (with how it ended)."""
        if self.result is not None:
            return {"state": "finished", "result": self.result["type"], "slices": self.result.get("slices")}
        return {"state": "running" if self.started else "waiting"}


class Dispatcher:
    """Runs the jobs of every client on one local worker, in turn per client, and routes the worker's messages."""

    def __init__(self, worker: WorkerClient):
        self.worker = worker
        self.jobs: dict[str, Job] = {}
        self.waiting: dict[str, collections.deque] = collections.defaultdict(collections.deque)  # not started yet
        self.starts = itertools.count()
        self.last_start: dict[str, int] = {}  # client -> when its last job started (in starts)
        self.running: Job | None = None
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.wakeup = threading.Event()  # set by add(): a job is waiting
        self.thread = threading.Thread(target=self._loop, name="dispatcher", daemon=True)

    def add(self, job: Job) -> None:
        with self.lock:
            self.jobs[job.id] = job
            self.waiting[job.client].append(job)
        self.wakeup.set()

    def cancel(self, job_id: str) -> None:
        with self.lock:
            job = self.jobs.get(job_id)
            if job is None or job.finished:
                return
            if job is self.running:
                self.worker.cancel(job.id)
                return
            self.waiting[job.client].remove(job)
        self._finish(job, {"type": "cancelled", "job_id": job.id, "slices": 0})

    def _next(self) -> Job | None:
        """The next job: the oldest one of the client whose last job started longest ago (never: first)."""
        with self.lock:
            clients = [client for client, jobs in self.waiting.items() if jobs]
            if not clients:
                return None
            client = min(clients, key=lambda c: self.last_start.get(c, -1))
            self.last_start[client] = next(self.starts)
            job = self.running = self.waiting[client].popleft()
            job.started = True
            return job

    def _loop(self) -> None:
        while not self.stopping.is_set():
            if self.running is None:
                job = self._next()
                if job is None:  # idle: wait for a job (add() wakes this at once), routing any late message
                    self.wakeup.wait(POLL_S)
                    self.wakeup.clear()
                    for message in self.worker.poll():
                        self._route(message)
                    continue
                self._start(job)
            for message in self.worker.poll(POLL_S):
                self._route(message)

    def _start(self, job: Job) -> None:
        try:
            self.worker.submit({**job.request, "job_id": job.id})
        except WorkerError as error:
            self.running = None
            in_use = isinstance(error, JobIdInUse)  # the worker is fine: only this job is refused
            self._finish(job, {"type": "error", "job_id": job.id, "code": DUPLICATE_JOB if in_use else WORKER_CRASHED,
                               "message": str(error)})
            if not in_use:
                self._restart_worker()

    def _restart_worker(self) -> None:
        """A new worker, in place once it has said hello: requests meanwhile see the last one's hello (models)."""
        log.warning("restarting the worker")
        self.worker.stop()
        worker = WorkerClient(python_executable=self.worker.python_executable)
        worker.start()
        self.worker = worker

    def _route(self, message: dict) -> None:
        job = self.jobs.get(message.get("job_id"))
        if job is None:  # a message for no job: the worker crashed between jobs, so start another for the next
            if message.get("code") == WORKER_CRASHED:
                self._restart_worker()
            return
        if message.get("type") == "slice":
            message = dict(message)
            path = Path(message.pop("file"))
            message["payload"] = base64.b64encode(path.read_bytes()).decode("ascii")
            path.unlink(missing_ok=True)
        if message.get("type") in TERMINAL_MESSAGES:
            self.worker.discard_job(job.id)
            if message.get("code") == WORKER_CRASHED:
                self._restart_worker()
            self.running = None
            self._finish(job, message)
        else:
            job.messages.put(message)

    def _finish(self, job: Job, message: dict) -> None:
        job.result = message  # before `finished`: whoever sees a finished job finds how it ended
        job.finished = True
        job.messages.put(message)
        shutil.rmtree(job.folder, ignore_errors=True)


def host_name(host_header: str) -> str:
    """The host name of a Host header ('127.0.0.1:8765' -> '127.0.0.1', '[::1]:80' -> '::1'; malformed: '')."""
    try:
        return urlsplit("//" + host_header).hostname or ""
    except ValueError:  # e.g. an unclosed '[' of an IPv6 address
        return ""


def json_response(status: int, body: dict, close: bool) -> tuple[bytes, list[tuple[str, str]]]:
    """(body bytes, headers) of a JSON answer; ``close``: the server closes the connection after it."""
    data = (json.dumps(body) + "\n").encode()
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
    return data, headers + ([("Connection", "close")] if close else [])


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    """One thread per connection, at most ``max_connections`` at once; each closed after ``connection_timeout``
    seconds without a byte in either direction."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, dispatcher: Dispatcher, token: str | None, max_upload_bytes: int,
                 data_root: Path | None, uploads: Path, connection_timeout: float = DEFAULT_CONNECTION_TIMEOUT_S,
                 max_connections: int = DEFAULT_MAX_CONNECTIONS):
        super().__init__(address, Handler)
        self.dispatcher, self.token, self.max_upload_bytes = dispatcher, token, max_upload_bytes
        self.data_root, self.uploads = data_root, uploads
        self.connection_timeout, self.max_connections = connection_timeout, max_connections
        self.connection_slots = threading.BoundedSemaphore(max_connections)

    def process_request(self, request, client_address):
        """A connection over ``max_connections`` is answered 503 at once and closed (this runs in the accepting
        thread: the answer is one small send)."""
        if not self.connection_slots.acquire(blocking=False):
            log.warning("%s: refused, %d connections open already", client_address[0], self.max_connections)
            data, headers = json_response(503, {"error": f"the server has {self.max_connections} connections open "
                                                         "already; try again later"}, close=True)
            head = "".join(f"{name}: {value}\r\n" for name, value in headers)
            with contextlib.suppress(OSError):
                request.settimeout(DRAIN_S)
                request.sendall(f"HTTP/1.1 503 Service Unavailable\r\n{head}\r\n".encode() + data)
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.connection_slots.release()

    def handle_error(self, request, client_address):
        """One log line per failed request, no traceback. A connection that the client closed or reset (a client
        that ends after its job's last message resets it) or that stayed idle is routine: logged at DEBUG only."""
        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionError, TimeoutError)):
            log.debug("%s: connection closed (%s)", client_address[0], type(error).__name__)
        else:
            log.error("%s: request failed: %s: %s", client_address[0], type(error).__name__, error)


class Handler(http.server.BaseHTTPRequestHandler):
    server: Server
    protocol_version = "HTTP/1.1"

    def setup(self):
        self.timeout = self.server.connection_timeout  # every read and write of the connection (idle, slow)
        super().setup()

    def log_message(self, format, *args):  # the access log goes to the logger, not stderr
        log.info("%s %s", self.address_string(), format % args)

    # --- plumbing -------------------------------------------------------------------------------------------

    def _authorised(self) -> None:
        """The token when there is one; without one (loopback only), a Host header naming this machine: a web page
        of another site that points its own host name at 127.0.0.1 (DNS rebinding) is refused."""
        token = self.server.token
        if token is None:
            host = self.headers.get("Host")
            if host is not None and not is_loopback(host_name(host)):
                raise RequestError(403, f"Host {host!r} is not a loopback name: this server (no token) answers "
                                        "requests to 127.0.0.1, ::1 or localhost only")
            return
        given = self.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            raise RequestError(401, "missing or wrong token: send 'Authorization: Bearer <token>'")

    def _reply(self, status: int, body: dict, close: bool = False) -> None:
        data, headers = json_response(status, body, close)
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _refuse(self, status: int, message: str) -> None:
        """Answer ``{error}`` and close the connection: the rest of the refused request (a body not read) must
        never be taken for the next request. It is read and dropped for at most DRAIN_S first, so that the client,
        still sending, gets the answer instead of a reset connection."""
        self.close_connection = True
        self._reply(status, {"error": message}, close=True)
        deadline = time.monotonic() + DRAIN_S
        with contextlib.suppress(OSError):
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_WR)
            while time.monotonic() < deadline:
                self.connection.settimeout(max(0.01, deadline - time.monotonic()))
                if not self.rfile.read1(1 << 16):
                    break

    def send_error(self, code, message=None, explain=None):
        """http.server's own refusals (a header line over 64 KiB, more than 100 headers, a malformed request line,
        an unknown method) as one-line JSON too."""
        self._refuse(code, message or self.responses.get(code, ("error",))[0])

    def _handle(self, method) -> None:
        try:
            self._authorised()
            method()
        except RequestError as error:
            self._refuse(error.status, str(error))
        except (BrokenPipeError, ConnectionResetError):
            pass

    def do_GET(self):
        self._handle(self._get)

    def do_POST(self):
        self._handle(self._post)

    # --- routes ---------------------------------------------------------------------------------------------

    def _get(self) -> None:
        parts = urlparse(self.path).path.strip("/").split("/")
        if parts == ["hello"]:
            self._reply(200, {**self.server.dispatcher.worker.hello,
                              "server": {"max_upload_bytes": self.server.max_upload_bytes,
                                         "data_root": self.server.data_root is not None}})
        elif len(parts) == 3 and parts[0] == "jobs" and parts[2] == "events":
            self._events(self._job(parts[1]))
        elif len(parts) == 2 and parts[0] == "jobs":
            self._reply(200, self._job(parts[1]).state())
        else:
            raise RequestError(404, f"no such resource {self.path}")

    def _post(self) -> None:
        url = urlparse(self.path)
        parts = url.path.strip("/").split("/")
        if parts == ["jobs"]:
            client = parse_qs(url.query).get("client", [self.client_address[0]])[0]
            job = self._new_job(client)
            self.server.dispatcher.add(job)
            self._reply(202, {"job_id": job.id})
        elif len(parts) == 3 and parts[0] == "jobs" and parts[2] == "cancel":
            self.server.dispatcher.cancel(self._job(parts[1]).id)
            self._reply(202, {"job_id": parts[1]})
        else:
            raise RequestError(404, f"no such resource {self.path}")

    def _job(self, job_id: str) -> Job:
        job = self.server.dispatcher.jobs.get(job_id)
        if job is None:
            raise RequestError(404, f"no job {job_id}")
        return job

    def _new_job(self, client: str) -> Job:
        """The job of a POST /jobs: its fields from X-SDSeg-Job, its volume from the body (or --data-root)."""
        header = self.headers.get("X-SDSeg-Job", "")
        if len(header) > MAX_JOB_HEADER_BYTES:
            raise RequestError(400, f"X-SDSeg-Job is over {MAX_JOB_HEADER_BYTES} bytes")
        try:
            fields = json.loads(header or "{}")
        except (ValueError, RecursionError):
            raise RequestError(400, "X-SDSeg-Job is not JSON (or is nested too deeply): send the job's fields as one "
                                    "flat JSON object") from None
        if not isinstance(fields, dict):
            raise RequestError(400, "X-SDSeg-Job must be a JSON object")
        models = [model["name"] for model in self.server.dispatcher.worker.hello["models"]]
        if fields.get("model") is not None and fields["model"] not in models:  # never a folder of the server
            raise RequestError(400, f"model {str(fields['model'])[:100]!r} is not one of this server's models: "
                                    f"{', '.join(models) or 'none installed'}")
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0:
            raise RequestError(400, "Content-Length must be the body's size in bytes")
        if length > self.server.max_upload_bytes:
            raise RequestError(413, f"the upload ({length} bytes) is over this server's limit of "
                                    f"{self.server.max_upload_bytes} bytes")
        folder = Path(self.server.uploads) / uuid.uuid4().hex[:12]
        folder.mkdir()
        try:
            server_volume = fields.pop("server_volume", None)
            volume = self._volume(server_volume, length, folder)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        request = {**fields, "type": "segment", "volume": str(volume)}
        request.pop("job_dir", None)
        request.pop("max_volume_bytes", None)
        if server_volume is None:  # an upload: its voxels too, decompressed, within the upload limit
            request["max_volume_bytes"] = self.server.max_upload_bytes
        return Job(client, request, folder)

    def _volume(self, server_volume, length: int, folder: Path) -> Path:
        if server_volume is not None:
            root = self.server.data_root
            if root is None:
                raise RequestError(400, "this server takes uploads only (it was started without --data-root)")
            path = (root / str(server_volume)).resolve()
            if not path.is_relative_to(root):
                raise RequestError(400, f"server_volume {server_volume!r} is outside the server's data root")
            return path
        name = Path(unquote(self.headers.get("X-SDSeg-Volume-Name", ""))).name
        if "\x00" in name:
            raise RequestError(400, "X-SDSeg-Volume-Name holds a NUL character; send the file's own name")
        if not name.lower().endswith(UPLOAD_SUFFIXES) or length == 0:
            raise RequestError(400, "upload the volume in the body with its file name in X-SDSeg-Volume-Name "
                                    f"(one of {', '.join(UPLOAD_SUFFIXES)}; a DICOM folder as a .zip)")
        path = folder / name
        with open(path, "wb") as out:
            remaining = length
            while remaining:
                chunk = self.rfile.read(min(remaining, 1 << 20))
                if not chunk:
                    raise RequestError(400, "the upload ended before Content-Length bytes")
                out.write(chunk)
                remaining -= len(chunk)
        if name.lower().endswith(".zip"):
            return self._unzip(path, folder / "series", self.server.max_upload_bytes)
        return path

    @staticmethod
    def _unzip(path: Path, into: Path, max_bytes: int) -> Path:
        """Unpack a zipped DICOM folder: no path outside ``into``, at most ``max_bytes`` unpacked (the upload limit;
        zipfile never unpacks a member beyond its recorded size)."""
        try:
            with zipfile.ZipFile(path) as archive:
                members = archive.infolist()
                for member in members:
                    target = (into / member.filename).resolve()
                    if not target.is_relative_to(into.resolve()):
                        raise RequestError(400, f"the zip holds a path outside it: {member.filename}")
                unpacked = sum(member.file_size for member in members)
                if unpacked > max_bytes:
                    raise RequestError(413, f"the zip unpacks to {unpacked} bytes, over this server's limit of "
                                            f"{max_bytes} bytes")
                archive.extractall(into)
        except zipfile.BadZipFile:
            raise RequestError(400, "the upload is not a valid zip of a DICOM folder") from None
        path.unlink()
        return into

    def _events(self, job: Job) -> None:
        """The job's messages as JSON lines (chunked), until its last one; a client that goes away cancels it. One
        reader takes them: a second one (or one after the last message was sent) is refused, not left waiting."""
        with job.claim_lock:
            if job.events_claimed:
                raise RequestError(409, f"the messages of job {job.id} are being or were read by another request; "
                                        f"GET /jobs/{job.id} gives its state")
            job.events_claimed = True
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            while True:
                message = job.messages.get()
                data = (json.dumps(message) + "\n").encode()
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()
                if message.get("type") in TERMINAL_MESSAGES:
                    break
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError, OSError):
            log.info("the client of job %s went away: cancelling it", job.id)
            self.server.dispatcher.cancel(job.id)


def serve(host: str, port: int, token: str | None, python: str | None, max_upload_bytes: int,
          data_root: Path | None, on_ready=None, connection_timeout: float = DEFAULT_CONNECTION_TIMEOUT_S,
          max_connections: int = DEFAULT_MAX_CONNECTIONS) -> None:
    """Run the server until interrupted (KeyboardInterrupt): start the worker, then answer requests."""
    check_binding(host, token)
    worker = WorkerClient(python_executable=python)
    worker.start()
    uploads = owned_temp_folder(UPLOADS_FOLDER_PREFIX)
    dispatcher = Dispatcher(worker)
    dispatcher.thread.start()
    server = None
    try:
        try:
            server = Server((host, port), dispatcher, token, max_upload_bytes,
                            data_root.resolve() if data_root else None, uploads, connection_timeout, max_connections)
        except OSError as error:
            raise ValueError(f"cannot listen on {host}:{port} ({error.strerror}); choose another --port or "
                             "--host") from None
        if on_ready is not None:
            on_ready(server.server_address)
        server.serve_forever(poll_interval=0.2)
    finally:
        if server is not None:
            server.server_close()
        dispatcher.stopping.set()
        dispatcher.worker.stop()
        shutil.rmtree(uploads, ignore_errors=True)
