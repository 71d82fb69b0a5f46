"""SDSegSlicerLib.temp_folders: the folders of processes that are gone are removed, the others kept. The POSIX
liveness test runs for real on child processes; the Windows one (OpenProcess + GetExitCodeProcess, never
os.kill(pid, 0), which sends Ctrl+C there) runs on a fake kernel32 that answers as Windows documents. A worker whose
temporary folder cannot be made is never started."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from slicerlib_testing import CLI_TIMEOUT_S

from SDSegSlicerLib import temp_folders, worker_client
from SDSegSlicerLib.worker_client import WorkerClient, WorkerError

PREFIX = "sdseg-test-owned-"
ERROR_INVALID_PARAMETER = 87  # OpenProcess of a process id that does not exist


@pytest.fixture
def temp_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(temp_folders.tempfile, "tempdir", str(tmp_path))
    return tmp_path


def folder_of(temp_dir, name, pid):
    folder = temp_dir / f"{PREFIX}{name}"
    folder.mkdir()
    (folder / temp_folders.OWNER_FILE).write_text(str(pid), encoding="ascii")
    return folder


def test_folders_of_ended_processes_go_and_of_running_ones_stay(temp_dir):
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    running = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        gone = folder_of(temp_dir, "gone", ended.pid)
        alive = folder_of(temp_dir, "alive", running.pid)
        mine = folder_of(temp_dir, "mine", os.getpid())
        assert temp_folders.remove_orphans(PREFIX) == [gone]
        assert not gone.exists() and alive.is_dir() and mine.is_dir()
    finally:
        running.communicate()


class FakeKernel32:
    """kernel32 as Windows answers: OpenProcess gives a handle (0 and a last error when it cannot),
    GetExitCodeProcess writes STILL_ACTIVE or the exit code."""

    def __init__(self, processes: dict, denied=()):
        self.processes, self.denied = processes, set(denied)
        self.last_error = 0
        self.open_handles = set()

    def OpenProcess(self, access, inherit, pid):
        assert access == temp_folders.PROCESS_QUERY_LIMITED_INFORMATION
        if pid in self.denied:
            self.last_error = temp_folders.ERROR_ACCESS_DENIED
            return 0
        if pid not in self.processes:
            self.last_error = ERROR_INVALID_PARAMETER
            return 0
        self.open_handles.add(pid + 1000)
        return pid + 1000

    def GetExitCodeProcess(self, handle, exit_code_reference):
        exit_code_reference._obj.value = self.processes[handle - 1000]
        return 1

    def CloseHandle(self, handle):
        self.open_handles.remove(handle)
        return 1


class WindowsOs:
    """The os module as temp_folders sees it on Windows, where os.kill(pid, 0) would send CTRL_C_EVENT."""

    name = "nt"

    def __getattr__(self, name):
        return getattr(os, name)

    @staticmethod
    def kill(pid, sig):
        raise AssertionError(f"os.kill({pid}, {sig}) sends CTRL_C_EVENT on Windows")


def test_windows_liveness_asks_openprocess_and_never_signals(temp_dir, monkeypatch):
    kernel32 = FakeKernel32({101: temp_folders.STILL_ACTIVE, 102: 0}, denied={103})
    monkeypatch.setattr(temp_folders, "_windows_api", lambda: (kernel32, lambda: kernel32.last_error))
    monkeypatch.setattr(temp_folders, "os", WindowsOs())  # only temp_folders sees Windows (pathlib stays POSIX)
    running, exited, other_user, unknown = (folder_of(temp_dir, name, pid) for name, pid in
                                            (("running", 101), ("exited", 102), ("other", 103), ("gone", 104)))
    assert sorted(temp_folders.remove_orphans(PREFIX)) == sorted([exited, unknown])
    assert running.is_dir() and other_user.is_dir() and not kernel32.open_handles


def test_a_failing_liveness_test_keeps_the_folder(temp_dir, monkeypatch):
    def broken(pid):
        raise OSError(22, "The parameter is incorrect")
    monkeypatch.setattr(temp_folders, "_alive", broken)
    kept = folder_of(temp_dir, "kept", 4242)
    assert temp_folders.remove_orphans(PREFIX) == [] and kept.is_dir()


def test_no_worker_runs_when_its_temporary_folder_cannot_be_made(monkeypatch):
    started = []
    real_popen = subprocess.Popen
    monkeypatch.setattr(worker_client.subprocess, "Popen",
                        lambda *args, **kwargs: started.append(real_popen(*args, **kwargs)) or started[-1])

    def no_space(prefix):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(worker_client, "owned_temp_folder", no_space)
    client = WorkerClient()
    with pytest.raises(WorkerError, match="Cannot create a folder in the temporary folder"):
        client.start(timeout=CLI_TIMEOUT_S)
    assert started == [] and client.pid is None
