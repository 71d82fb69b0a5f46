"""The worker client never makes the GUI thread wait on the worker process: a worker that closed its output but has
not exited yet is not waited for inside poll() (its crash is reported once it has exited, with its exit code), and
stop() lets the GUI process its events while a worker takes its time to exit. The workers are real processes
(a small script speaking the protocol's hello) that do what the test tells them through files."""

from __future__ import annotations

import json
import os
import stat
import sys
import time

import pytest

from SDSegSlicerLib.worker_client import PROTOCOL_VERSION, WorkerClient, WorkerError

pytestmark = pytest.mark.skipif(os.name == "nt", reason="the fake interpreter is a POSIX shell script")
WAIT_TIMEOUT_S = 120

FAKE_WORKER = r"""
import json, os, sys, time
folder = sys.argv[1]
print(json.dumps({"type": "hello", "protocol": PROTOCOL, "models": [], "device": "cpu"}), flush=True)
mode = open(os.path.join(folder, "mode")).read()
if mode == "close-output":
    os.close(1)
open(os.path.join(folder, "ready"), "w").close()
while not os.path.exists(os.path.join(folder, "release")):  # ignores `shutdown`
    time.sleep(0.02)
sys.exit(3)
""".replace("PROTOCOL", str(PROTOCOL_VERSION))


@pytest.fixture
def fake_worker(tmp_path):
    """A client whose 'interpreter' runs FAKE_WORKER in tmp_path (whatever arguments it is given)."""
    (tmp_path / "worker.py").write_text(FAKE_WORKER)
    interpreter = tmp_path / "python"
    interpreter.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{tmp_path / "worker.py"}" "{tmp_path}"\n')
    interpreter.chmod(interpreter.stat().st_mode | stat.S_IEXEC)

    def start(mode):
        (tmp_path / "mode").write_text(mode)
        client = WorkerClient(python_executable=str(interpreter))
        client.start(timeout=WAIT_TIMEOUT_S)
        wait_until(lambda: (tmp_path / "ready").exists(), "the worker")
        return client
    yield start, tmp_path / "release"
    (tmp_path / "release").touch()


def wait_until(condition, what):
    deadline = time.monotonic() + WAIT_TIMEOUT_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_a_worker_that_closed_its_output_is_not_waited_for_in_poll(fake_worker):
    start, release = fake_worker
    client = start("close-output")
    watch_until = time.monotonic() + 2.0  # the reader thread meets the end of the output meanwhile
    while time.monotonic() < watch_until:  # the old poll() waited 5 s here, then reported exit code None
        assert client.poll(0.05) == [], "a crash was reported before the worker exited"
    assert client._process.poll() is None  # it was still running all along
    release.touch()
    messages = []
    wait_until(lambda: messages.extend(client.poll(0.05)) or messages, "the crash report")
    assert [m["code"] for m in messages] == ["worker_crashed"] and messages[0]["exit_code"] == 3, json.dumps(messages)
    client.stop()


def test_stop_lets_the_gui_process_events_while_the_worker_exits(fake_worker):
    start, release = fake_worker
    client = start("keep-output")
    calls = []

    def process_events():
        calls.append(client._process.poll())
        release.touch()  # the worker exits a while after the first event processing
    client.stop(timeout=WAIT_TIMEOUT_S, on_wait=process_events)
    assert calls and calls[0] is None, "stop() did not call on_wait while the worker was running"
    assert client._process.returncode == 3 and not client.is_running()


def test_a_worker_that_ends_at_once_is_reported_with_its_exit_code(tmp_path, monkeypatch):
    """The stdout reader meets the end of the output at once: it waits for the exit code and the stderr reader
    without failing, and start() says how the worker ended."""
    failures = []
    monkeypatch.setattr("threading.excepthook", failures.append)
    interpreter = tmp_path / "python"
    interpreter.write_text("#!/bin/sh\necho 'no backend here' >&2\nexit 1\n")
    interpreter.chmod(interpreter.stat().st_mode | stat.S_IEXEC)
    client = WorkerClient(python_executable=str(interpreter))
    with pytest.raises(WorkerError, match="ended on start with exit code 1"):
        client.start(timeout=WAIT_TIMEOUT_S)
    assert not failures, failures[0].exc_value
