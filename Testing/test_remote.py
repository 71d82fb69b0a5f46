"""`sdseg-slicer serve` and its clients, on loopback, with REAL server and worker processes and tiny real models: the
token, request limits and malformed requests, the worker's own validation, two clients served in turn, a client
that goes away, results equal to a local worker's (the headless command), the module's logic through a server, and
a server that dies mid-job."""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import requests
import SimpleITK as sitk
import slicer
from slicerlib_testing import (CLI_TIMEOUT_S, MODEL_NAME, add_volume_node, lesion_volume, oblique_ijk_to_ras,
                               read_seg_nrrd_with_slicerio)

from SDSegSlicerLib.remote_client import RemoteWorkerClient
from SDSegSlicerLib.session import SegmentationSession
from SDSegSlicerLib.worker_client import WorkerError

TOKEN = "s3cret-token"
RUN_TIMEOUT_S = 120


class ServerProcess:
    """`sdseg-slicer serve` on a free loopback port."""

    def __init__(self, env, *options):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "SDSegSlicerLib.headless", "serve", "--port", "0", *options], env=env,
            stderr=subprocess.PIPE, text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        self.lines = []
        for line in self.process.stderr:
            self.lines.append(line)
            match = re.search(r"Serving on (http://\S+)", line)
            if match:
                self.url = match.group(1)
                threading.Thread(target=self.lines.extend, args=(self.process.stderr,), daemon=True).start()
                return
        raise AssertionError("the server did not start: " + "".join(self.lines))

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(CLI_TIMEOUT_S)


@pytest.fixture(scope="module")
def server(tiny_models_dir, tmp_path_factory):
    from slicerlib_testing import lib_python_path

    env = dict(os.environ, SDSEG_MODELS_PATH=str(tiny_models_dir), OMP_NUM_THREADS="1", PYTHONPATH=lib_python_path())
    data_root = tmp_path_factory.mktemp("data_root")
    lesion_volume(data_root / "on_server.nrrd", (3, 16, 16))
    running = ServerProcess(env, "--token", TOKEN, "--max-upload-mb", "1", "--data-root", str(data_root))
    running.data_root = data_root
    yield running
    assert running.stop() == 128 + signal.SIGTERM
    log = "".join(running.lines)
    assert "GET /hello" in log and "Traceback" not in log and TOKEN not in log  # an access log, no tracebacks


def headers(**extra):
    return {"Authorization": f"Bearer {TOKEN}", **extra}


def run_job(client, job, timeout=RUN_TIMEOUT_S):
    """Submit ``job`` and collect its messages up to its last."""
    job_id = client.submit(job)
    messages, deadline = [], time.monotonic() + timeout
    while not messages or messages[-1].get("type") not in ("done", "cancelled", "error"):
        assert time.monotonic() < deadline, messages[-3:]
        messages += [m for m in client.poll(0.2) if m.get("job_id") == job_id]
    return job_id, messages


def test_the_token_is_required_and_compared_whole(server):
    assert requests.get(server.url + "/hello", timeout=10).status_code == 401
    assert requests.get(server.url + "/hello", headers={"Authorization": "Bearer s3cret"}, timeout=10).status_code == 401
    hello = requests.get(server.url + "/hello", headers=headers(), timeout=10).json()
    assert hello["protocol"] == 2 and MODEL_NAME in [m["name"] for m in hello["models"]]
    with pytest.raises(WorkerError, match="refused the token given: give the one `sdseg-slicer serve` was started"):
        RemoteWorkerClient(server.url, "wrong").start()
    with pytest.raises(WorkerError, match="needs a token and none was given"):  # not "refused the token"
        RemoteWorkerClient(server.url, "").start()
    assert "(clients must send the token of --token; Ctrl-C to stop)" in "".join(server.lines)


def test_a_server_without_token_says_so_and_never_mentions_a_token_to_clients(small_server):
    assert "(no token: clients on this machine only; Ctrl-C to stop)" in "".join(small_server.lines)
    assert RemoteWorkerClient(small_server.url, "any").start()["protocol"] == 2  # a token it has none of: ignored


def test_a_public_address_needs_a_token(worker_env):
    result = subprocess.run([sys.executable, "-m", "SDSegSlicerLib.headless", "serve", "--host", "0.0.0.0"],
                            env={**worker_env, "SDSEG_TOKEN": ""}, capture_output=True, text=True, timeout=CLI_TIMEOUT_S)
    assert result.returncode == 2 and "--host 0.0.0.0 is reachable from other machines: give a --token" in result.stderr


def zip_of_zeros(size: int) -> bytes:
    """A zip of a few KB that unpacks to ``size`` bytes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("IM0001", bytes(size))
    return buffer.getvalue()


@pytest.mark.parametrize("request_kwargs, status, phrase", [
    ({"data": b"x" * (2 * 2 ** 20), "headers": {"X-SDSeg-Volume-Name": "big.nrrd"}}, 413, "over this server's limit"),
    ({"data": b"x", "headers": {"X-SDSeg-Job": "{not json", "X-SDSeg-Volume-Name": "a.nrrd"}}, 400, "not JSON"),
    ({"data": b"x", "headers": {"X-SDSeg-Job": "{}", "X-SDSeg-Volume-Name": "a.exe"}}, 400, "X-SDSeg-Volume-Name"),
    ({"data": b"PK-not-a-zip", "headers": {"X-SDSeg-Volume-Name": "series.zip"}}, 400, "not a valid zip"),
    ({"headers": {"X-SDSeg-Job": json.dumps({"server_volume": "../../etc/passwd"})}}, 400, "outside the server's"),
    ({"data": b"data file: /etc/hostname\n", "headers": {"X-SDSeg-Volume-Name": "a.nhdr"}}, 400,
     "X-SDSeg-Volume-Name"),  # a detached header could name any file of the server
    ({"data": zip_of_zeros(2 * 2 ** 20), "headers": {"X-SDSeg-Volume-Name": "bomb.zip"}}, 413, "unpacks to"),
    ({"data": b"x", "headers": {"X-SDSeg-Volume-Name": "a%00.nrrd"}}, 400, "NUL character"),
    ({"data": b"x", "headers": {"X-SDSeg-Job": "[" * 20000, "X-SDSeg-Volume-Name": "a.nrrd"}}, 400,
     "nested too deeply"),
    ({"data": b"x", "headers": {"X-SDSeg-Job": json.dumps({"seed": 1, "pad": "x" * 40000}),
                                "X-SDSeg-Volume-Name": "a.nrrd"}}, 400, "X-SDSeg-Job is over 32768 bytes"),
    ({"data": b"x", "headers": {"X-SDSeg-Job": json.dumps({"pad": "x" * 70000}), "X-SDSeg-Volume-Name": "a.nrrd"}},
     431, "Line too long"),  # http.server's own refusal, as JSON too
    ({"headers": {"X-SDSeg-Job": json.dumps({"server_volume": "on_server.nrrd", "model": "/root"})}}, 400,
     "is not one of this server's models"),  # never a folder of the server (it would say what exists there)
])
def test_bad_requests_are_refused_with_a_reason(server, request_kwargs, status, phrase):
    extra = request_kwargs.pop("headers")
    response = requests.post(server.url + "/jobs", headers=headers(**extra), timeout=30, **request_kwargs)
    assert response.status_code == status and phrase in response.json()["error"]


def responses_on_one_connection(url, request: bytes) -> bytes:
    """Everything the server sends back on one connection to ``request`` until it closes it (or 30 s pass)."""
    host, port = url.removeprefix("http://").split(":")
    received = b""
    with socket.create_connection((host, int(port)), timeout=30) as connection:
        connection.sendall(request)
        with contextlib.suppress(TimeoutError):
            while chunk := connection.recv(65536):
                received += chunk
    return received


@pytest.mark.parametrize("authorisation, status", [(f"Bearer {TOKEN}", b"413"), ("Bearer wrong", b"401")])
def test_the_body_of_a_refused_request_is_never_taken_for_the_next_request(server, authorisation, status):
    """A refused upload (over the limit, or without the token) closes the connection: its body, even one that looks
    like a request, is not answered."""
    smuggled = f"GET /hello HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode()
    request = (f"POST /jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {authorisation}\r\n"
               f"X-SDSeg-Volume-Name: a.nrrd\r\nContent-Length: {2 * 2 ** 20}\r\n\r\n").encode() + smuggled
    received = responses_on_one_connection(server.url, request)
    assert received.count(b"HTTP/1.1 ") == 1 and received.startswith(b"HTTP/1.1 " + status), received[:300]
    assert b"Connection: close" in received


def test_a_bad_content_length_is_answered_400(server):
    host, port = server.url.removeprefix("http://").split(":")
    for value in ("-5", "abc"):
        connection = http.client.HTTPConnection(host, int(port), timeout=10)
        connection.putrequest("POST", "/jobs")
        for name, header in headers(**{"X-SDSeg-Volume-Name": "a.nrrd", "Content-Length": value}).items():
            connection.putheader(name, header)
        connection.endheaders()
        response = connection.getresponse()
        assert response.status == 400 and "Content-Length" in json.loads(response.read())["error"]
        connection.close()


def test_http_servers_own_refusals_are_json_too(server):
    response = requests.put(server.url + "/hello", headers=headers(), timeout=10)
    assert response.status_code == 501 and "Unsupported method ('PUT')" in response.json()["error"]


def test_unknown_resources_are_404(server):
    assert requests.get(server.url + "/jobs/nope/events", headers=headers(), timeout=10).status_code == 404
    assert requests.post(server.url + "/nowhere", headers=headers(), timeout=10).status_code == 404


def test_the_worker_validates_remote_jobs_as_local_ones(server, tmp_path):
    client = RemoteWorkerClient(server.url, TOKEN)
    client.start()
    try:
        volume = lesion_volume(tmp_path / "ct.nrrd", (3, 16, 16))
        _, messages = run_job(client, {"volume": str(volume), "model": MODEL_NAME, "samples": 0})
        assert messages[-1]["type"] == "error" and messages[-1]["code"] == "bad_request"
        assert "'samples' must be an integer from 1 to 256" in messages[-1]["message"]
        job_id, messages = run_job(client, {"volume": "unused", "server_volume": "on_server.nrrd",
                                            "model": MODEL_NAME, "samples": 1, "steps": 1})
        assert messages[-1]["type"] == "done" and messages[-1]["slices"] == 3  # a volume named on the server
        again = requests.get(f"{server.url}/jobs/{job_id}/events", headers=headers(), timeout=10)
        assert again.status_code == 409 and "being or were read" in again.json()["error"]  # not left waiting
        named = lesion_volume(tmp_path / "患者 Müller.nrrd", (3, 16, 16))
        _, messages = run_job(client, {"volume": str(named), "model": MODEL_NAME, "samples": 1, "steps": 1})
        assert messages[-1]["type"] == "done"  # any file name reaches the server (percent-encoded)
        with pytest.raises(WorkerError, match="keeps its voxels in another file"):
            client.submit({"volume": str(tmp_path / "ct.nhdr"), "model": MODEL_NAME})
    finally:
        client.stop()


def test_an_upload_is_bounded_by_its_decompressed_voxels(server, tmp_path):
    """A gzip NRRD of a few KB holding 2 MiB of voxels, on a server taking uploads of 1 MiB: refused from its header
    by the worker before it reads the voxels."""
    path = tmp_path / "zeros.nrrd"
    sitk.WriteImage(sitk.Image([64, 64, 256], sitk.sitkInt16), str(path), useCompression=True)
    assert path.stat().st_size < 2 ** 20 / 10
    client = RemoteWorkerClient(server.url, TOKEN)
    client.start()
    try:
        _, messages = run_job(client, {"volume": str(path), "model": MODEL_NAME, "samples": 1, "steps": 1})
        assert [m["type"] for m in messages] == ["error"] and messages[0]["code"] == "bad_volume"
        assert "2.0 MiB once decompressed" in messages[0]["message"] and "1.0 MiB allowed" in messages[0]["message"]
    finally:
        client.stop()


def test_a_server_volume_whose_name_is_not_utf8_is_bad_volume(server):
    """ITK's readers abort the worker (SIGABRT) on such a name: every such job was worker_crashed."""
    name = os.fsdecode(b"caf\xe9.nrrd")
    (server.data_root / name).write_bytes((server.data_root / "on_server.nrrd").read_bytes())
    client = RemoteWorkerClient(server.url, TOKEN)
    client.start()
    try:
        _, messages = run_job(client, {"volume": "unused", "server_volume": name, "model": MODEL_NAME, "samples": 1})
        assert messages[-1]["code"] == "bad_volume" and "not valid UTF-8" in messages[-1]["message"]
        _, messages = run_job(client, {"volume": "unused", "server_volume": "on_server.nrrd", "model": MODEL_NAME,
                                       "samples": 1, "steps": 1})
        assert messages[-1]["type"] == "done"
    finally:
        client.stop()


@pytest.fixture(scope="module")
def small_server(tiny_models_dir):
    """A token-less server that closes connections idle for 5 s and holds at most 3."""
    from slicerlib_testing import lib_python_path

    env = dict(os.environ, SDSEG_MODELS_PATH=str(tiny_models_dir), OMP_NUM_THREADS="1", PYTHONPATH=lib_python_path(),
               SDSEG_TOKEN="")
    running = ServerProcess(env, "--connection-timeout", "5", "--max-connections", "3")
    yield running
    running.stop()


def open_descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_idle_connections_are_closed_and_their_number_is_capped(small_server):
    host, port = small_server.url.removeprefix("http://").split(":")
    before = open_descriptors(small_server.process.pid)
    idle = [socket.create_connection((host, int(port)), timeout=60) for _ in range(3)]
    for connection in idle:
        connection.sendall(b"GET /hello HTTP/1.1\r\n")  # ... and nothing more
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while True:  # the fourth is refused at once while the three are open
        refused = responses_on_one_connection(small_server.url, b"GET /hello HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        if refused.startswith(b"HTTP/1.1 503"):
            break
        assert time.monotonic() < deadline, refused[:200]
    assert b"connections open already" in refused
    for connection in idle:  # closed by the server after 5 s without a byte
        assert connection.recv(65536) == b""
        connection.close()
    while requests.get(small_server.url + "/hello", timeout=10).status_code != 200:
        assert time.monotonic() < deadline
    while open_descriptors(small_server.process.pid) > before:
        assert time.monotonic() < deadline
        time.sleep(0.2)


def test_a_server_without_token_answers_loopback_host_names_only(small_server):
    """A DNS-rebinding page would send its own host name: refused."""
    port = small_server.url.rsplit(":", 1)[1]
    for host in ("evil.example", "evil.example:80", "[::1"):
        refused = requests.get(small_server.url + "/hello", headers={"Host": host}, timeout=10)
        assert refused.status_code == 403 and "not a loopback name" in refused.json()["error"]
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}"):
        assert requests.get(small_server.url + "/hello", headers={"Host": host}, timeout=10).status_code == 200


def test_a_client_that_resets_its_connection_after_its_answer_is_routine_not_logged(small_server):
    """A client that ends after its job's last message resets its connection (its socket closed with the end of the
    answer unread): the server logs no 'connection closed' for it, only the access log line."""
    host, port = small_server.url.removeprefix("http://").split(":")
    before = open_descriptors(small_server.process.pid)
    connection = socket.create_connection((host, int(port)), timeout=60)
    connection.sendall(b"GET /hello HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert connection.recv(12) == b"HTTP/1.1 200"
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with a reset
    connection.close()
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while open_descriptors(small_server.process.pid) > before:  # the server has handled the reset
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert requests.get(small_server.url + "/hello?after-the-reset", timeout=10).status_code == 200
    while not any("after-the-reset" in line for line in small_server.lines):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    log = "".join(small_server.lines)
    assert "connection closed" not in log and "Traceback" not in log, log


def test_a_worker_that_dies_between_jobs_is_replaced_before_the_next_job(tiny_models_dir, tmp_path, worker_env):
    running = ServerProcess({**worker_env, "SDSEG_MODELS_PATH": str(tiny_models_dir)})
    client = RemoteWorkerClient(running.url)
    try:
        client.start()
        (worker,) = Path(f"/proc/{running.process.pid}/task/{running.process.pid}/children").read_text().split()
        os.kill(int(worker), signal.SIGKILL)
        deadline = time.monotonic() + CLI_TIMEOUT_S
        while "restarting the worker" not in "".join(running.lines):  # the server notices the crash while idle
            assert time.monotonic() < deadline, "".join(running.lines)
            time.sleep(0.05)
        volume = lesion_volume(tmp_path / "ct.nrrd", (3, 16, 16))
        _, messages = run_job(client, {"volume": str(volume), "model": MODEL_NAME, "samples": 1, "steps": 1})
        assert messages[-1]["type"] == "done", messages[-1]
    finally:
        client.stop()
        running.stop()


def test_two_clients_are_served_in_turn(server, tmp_path):
    """Client A queues two jobs, then client B one: B's job starts before A's second."""
    volume = lesion_volume(tmp_path / "ct.nrrd", (4, 16, 16))
    first, second = RemoteWorkerClient(server.url, TOKEN), RemoteWorkerClient(server.url, TOKEN)
    first.start()
    second.start()
    job = {"volume": str(volume), "model": MODEL_NAME, "samples": 2, "steps": 20, "device": "cpu"}
    try:
        a1, a2 = first.submit(job), first.submit(job)
        b1 = second.submit(job)
        started, finished, deadline = [], set(), time.monotonic() + 3 * RUN_TIMEOUT_S
        while len(finished) < 3:
            assert time.monotonic() < deadline
            for message in first.poll(0.1) + second.poll(0.1):
                if message["type"] == "accepted":
                    started.append(message["job_id"])
                elif message["type"] in ("done", "error", "cancelled"):
                    assert message["type"] == "done", message
                    finished.add(message["job_id"])
        assert started == [a1, b1, a2]
    finally:
        first.stop()
        second.stop()


BACK_TO_BACK_JOBS = 60


def test_jobs_discarded_at_their_end_never_disturb_the_next_request(server, tmp_path, monkeypatch):
    """Jobs one after the other, each discarded as soon as its last message arrives (the benchmark, the command
    line and the batch do so), while the job's reader thread is closing its stream too. Two closes of one response
    at once once handed its connection back to the shared pool twice, and a later request failed (ConnectionError)
    or a stream broke (about 1 job in 75 under a CPU hog): every stream must be closed exactly once."""
    closed: dict[int, list] = {}  # id -> [the response, kept alive so that ids stay unique; its closes]
    original_close = requests.Response.close

    def counted_close(response):
        closed.setdefault(id(response), [response, 0])[1] += 1
        original_close(response)

    monkeypatch.setattr(requests.Response, "close", counted_close)
    volume = lesion_volume(tmp_path / "ct.nrrd", (3, 16, 16))
    client = RemoteWorkerClient(server.url, TOKEN)
    client.start()
    job = {"volume": str(volume), "model": MODEL_NAME, "samples": 1, "steps": 2, "device": "cpu"}
    try:
        for _ in range(BACK_TO_BACK_JOBS):
            job_id, messages = run_job(client, dict(job))
            assert messages[-1]["type"] == "done", messages[-1]
            client.discard_job(job_id)
    finally:
        client.stop()
    counts = [count for _, count in closed.values()]
    assert len(counts) >= BACK_TO_BACK_JOBS and max(counts) == 1, sorted(counts)[-3:]


@pytest.mark.parametrize("how", ["stop", "discard_job"])
def test_a_client_that_goes_away_has_its_job_cancelled(server, tmp_path, how):
    """The client stops, or drops the running job (the module does when the user abandons it): its events stream
    closes, the server cancels the job, and the client reports nothing more of it (no lost connection)."""
    volume = lesion_volume(tmp_path / "long.nrrd", (40, 16, 16))
    client = RemoteWorkerClient(server.url, TOKEN)
    client.start()
    job_id = client.submit({"volume": str(volume), "model": MODEL_NAME, "samples": 2, "steps": 100,
                            "batch_size": 2, "device": "cpu"})
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while not any(m["type"] == "slice" for m in client.poll(0.2)):
        assert time.monotonic() < deadline
    getattr(client, how)(*([job_id] if how == "discard_job" else []))
    later = []
    while True:
        later += client.poll(0.2)
        state = requests.get(f"{server.url}/jobs/{job_id}", headers=headers(), timeout=10).json()
        if state["state"] == "finished":
            break
        assert time.monotonic() < deadline
    client.stop()
    assert state["result"] == "cancelled" and 1 <= state["slices"] < 40
    assert not [m for m in later + client.poll(0.2) if m["type"] == "error"], later


def test_the_headless_command_through_the_server_gives_the_local_result(server, tmp_path, worker_env):
    volume = lesion_volume(tmp_path / "ct.nrrd", (5, 20, 24))
    options = ["--model", MODEL_NAME, "--samples", "2", "--steps", "2", "--device", "cpu", "--point-ijk", "12,10,2",
               "--stop-after-empty", "3"]
    for name, extra in (("local", []), ("remote", ["--server", server.url])):
        result = subprocess.run([sys.executable, "-m", "SDSegSlicerLib.headless", "segment", str(volume), "-o",
                                 str(tmp_path / f"{name}.seg.nrrd"), *options, *extra],
                                env={**worker_env, "SDSEG_TOKEN": TOKEN}, capture_output=True, text=True,
                                timeout=CLI_TIMEOUT_S)
        assert result.returncode == 0 and TOKEN not in result.stderr, result.stderr
    local, remote = (read_seg_nrrd_with_slicerio(tmp_path / f"{name}.seg.nrrd")[0] for name in ("local", "remote"))
    assert list(local) == list(remote)
    for segment in local:
        np.testing.assert_array_equal(remote[segment], local[segment], err_msg=segment)
    variances = [sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / f"{name}_variance.nrrd")))
                 for name in ("local", "remote")]
    np.testing.assert_array_equal(*variances)


def test_the_modules_logic_through_the_server(server, worker_env):
    session = SegmentationSession(slicer.vtkMRMLScene())
    try:
        voxels = np.random.default_rng(0).normal(40.0, 10.0, (3, 16, 16))
        volume = add_volume_node(session.scene, voxels, oblique_ijk_to_ras(), "remote ct")
        hello = session.start_worker(server_url=server.url, token=TOKEN)
        assert hello["protocol"] == 2 and session.worker_ready(server_url=server.url)
        run = session.start_run(session.build_job(volume, model=MODEL_NAME, samples=2, steps=2, device="cpu"),
                                volume)
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while session.process_run() == "running":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert run.state == "done", run.error_message
        assert run.writer.slices_received == 3 and len(session.sample_segment_ids()) == 2
    finally:
        session.shutdown()


def test_a_server_that_dies_mid_job_keeps_the_slices_that_arrived(tiny_models_dir, tmp_path, worker_env):
    dying = ServerProcess(worker_env)
    session = SegmentationSession(slicer.vtkMRMLScene())
    try:
        voxels = np.random.default_rng(1).normal(40.0, 10.0, (40, 16, 16))
        volume = add_volume_node(session.scene, voxels, oblique_ijk_to_ras(), "ct")
        session.start_worker(server_url=dying.url)
        run = session.start_run(session.build_job(volume, model=MODEL_NAME, samples=2, steps=100, device="cpu"),
                                volume)
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while session.process_run() == "running" and (run.writer is None or run.writer.slices_received == 0):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        dying.process.kill()
        while session.process_run() == "running":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert run.state == "error" and run.error_code == "connection_lost"
        assert "was lost" in run.error_message and "they are kept" in run.error_message
        assert run.writer.slices_received >= 1 and session.has_result()
    finally:
        session.shutdown()
        dying.stop()


def test_a_job_id_in_use_ends_that_job_only_and_keeps_the_worker(worker_env, tmp_path):
    """The server's dispatcher, in this process, with a real worker: a job whose ID the worker client refuses (its
    folder is still there) ends with `duplicate_job` (before: `worker_crashed`, and a needless worker restart), and
    the next job runs on the same worker."""
    from SDSegSlicerLib.remote_server import Dispatcher, Job
    from SDSegSlicerLib.worker_client import WorkerClient

    worker = WorkerClient()
    dispatcher = Dispatcher(worker)
    try:
        worker.start(RUN_TIMEOUT_S)
        dispatcher.thread.start()
        volume = lesion_volume(tmp_path / "ct.nrrd", (3, 16, 16))
        request = {"volume": str(volume), "model": MODEL_NAME, "samples": 1, "steps": 1}
        refused, accepted = Job("a", request, tmp_path / "a"), Job("a", request, tmp_path / "b")
        worker.job_dir(refused.id).mkdir()  # an earlier job's files under the same ID
        for job in (refused, accepted):
            dispatcher.add(job)
        for job in (refused, accepted):
            deadline = time.monotonic() + RUN_TIMEOUT_S
            while not job.finished:
                assert time.monotonic() < deadline, job.state()
                time.sleep(0.05)
        assert refused.result["code"] == "duplicate_job" and "still there" in refused.result["message"]
        assert worker.job_dir(refused.id).exists()  # the earlier job's files are not touched
        assert accepted.result["type"] == "done", accepted.result
        assert dispatcher.worker is worker and worker.is_running()
    finally:
        dispatcher.stopping.set()
        dispatcher.wakeup.set()
        if dispatcher.thread.is_alive():
            dispatcher.thread.join(RUN_TIMEOUT_S)
        dispatcher.worker.stop()
