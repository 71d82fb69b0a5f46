"""Server mode without freezing Slicer: the run's volume is uploaded in a thread (compressed, with progress), a
cancel never waits on the network, and a stalled server ends in a one-line error instead of a hang. The server is a
real HTTP server in this process that holds each job's POST until the test releases it (the real server's
end-to-end behaviour is in test_remote.py)."""

from __future__ import annotations

import http.server
import json
import threading
import time

import numpy as np
import pytest
import SimpleITK as sitk

from SDSegSlicerLib import remote_client
from SDSegSlicerLib.remote_client import RemoteWorkerClient

WAIT_TIMEOUT_S = 120


class HeldServer(http.server.ThreadingHTTPServer):
    """/hello, POST /jobs (answered once released), /jobs/<id>/events (one `done`), POST /jobs/<id>/cancel."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.release = threading.Event()
        self.received = []  # (headers, body) of each POST /jobs
        self.cancelled = []
        self.url = f"http://127.0.0.1:{self.server_address[1]}"


class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def answer(self, message):
        data = json.dumps(message).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/hello":
            self.answer({"type": "hello", "protocol": remote_client.PROTOCOL_VERSION, "models": []})
        else:
            job_id = self.path.split("/")[2]
            self.send_response(200)
            self.end_headers()
            self.wfile.write(json.dumps({"type": "done", "job_id": job_id}).encode() + b"\n")

    def do_POST(self):
        if self.path.endswith("/cancel"):
            self.server.cancelled.append(self.path.split("/")[2])
            self.answer({})
            return
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.received.append((dict(self.headers), body))
        if self.server.release.wait(WAIT_TIMEOUT_S):
            try:
                self.answer({"job_id": f"S{len(self.server.received)}"})
            except BrokenPipeError:  # the client stopped waiting (the stalled-server test)
                pass


@pytest.fixture
def server():
    server = HeldServer()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.release.set()
    server.shutdown()


@pytest.fixture
def volume(tmp_path):
    """A raw (uncompressed) NRRD, as the module writes the worker's copy: mostly background, a bright block."""
    voxels = np.zeros((20, 96, 96), np.float32)
    voxels[5:15, 30:60, 20:70] = np.arange(50, dtype=np.float32)
    path = tmp_path / "input.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(voxels), str(path), False)
    assert b"encoding: raw" in path.read_bytes()[:300]
    return path, voxels


def messages_until(client, job_id, last_type):
    messages, deadline = [], time.monotonic() + WAIT_TIMEOUT_S
    while not messages or messages[-1]["type"] != last_type:
        assert time.monotonic() < deadline, messages[-3:]
        messages += [m for m in client.poll(0.05) if m.get("job_id") == job_id]
    return messages


def test_the_upload_runs_in_a_thread_compressed_with_progress(server, volume, tmp_path):
    path, voxels = volume
    client = RemoteWorkerClient(server.url)
    client.start()
    job_id = client.submit_in_background({"volume": str(path), "model": "m"})  # returns while the server holds
    assert not server.release.is_set()
    progress = messages_until(client, job_id, "progress")
    assert progress[-1]["phase"].startswith("uploading the volume")
    server.release.set()
    messages = progress + messages_until(client, job_id, "done")
    assert [m["phase"] for m in messages if m["type"] == "progress"][-1] == "uploading the volume (100%)"

    headers, body = server.received[0]
    assert len(body) < path.stat().st_size / 10 and headers["X-SDSeg-Volume-Name"] == "input.nrrd"
    (tmp_path / "received.nrrd").write_bytes(body)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "received.nrrd"))), voxels)
    client.stop()


def test_a_cancel_during_the_upload_cancels_the_job_on_the_server(server, volume):
    client = RemoteWorkerClient(server.url)
    client.start()
    job_id = client.submit_in_background({"volume": str(volume[0]), "model": "m"})
    deadline = time.monotonic() + WAIT_TIMEOUT_S
    while not server.received:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    client.cancel(job_id)  # the server has not answered yet: nothing to wait for
    server.release.set()
    assert messages_until(client, job_id, "cancelled")[-1] == {"type": "cancelled", "job_id": job_id}
    deadline = time.monotonic() + WAIT_TIMEOUT_S
    while server.cancelled != ["S1"]:
        assert time.monotonic() < deadline, server.cancelled
        time.sleep(0.02)
    client.stop()


def test_a_stalled_server_ends_the_upload_with_one_line(server, volume, monkeypatch):
    monkeypatch.setattr(remote_client, "UPLOAD_TIMEOUT_S", 0.5)
    client = RemoteWorkerClient(server.url)
    client.start()
    job_id = client.submit_in_background({"volume": str(volume[0]), "model": "m"})
    error = messages_until(client, job_id, "error")[-1]
    assert error["code"] == "upload_failed" and "\n" not in error["message"]
    assert "Cannot reach the server" in error["message"], error["message"]
    client.stop()
