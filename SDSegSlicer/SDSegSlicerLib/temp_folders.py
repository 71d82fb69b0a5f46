"""Temporary folders that say who owns them: a run killed outright (SIGKILL, a crash) cannot delete its folder, so
the next run deletes the folders whose owner process is gone."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

OWNER_FILE = "owner.pid"


def owned_temp_folder(prefix: str) -> Path:
    """A new folder in the system's temporary folder, recording this process as its owner; first removes the
    folders of the same ``prefix`` whose owner is no longer running."""
    remove_orphans(prefix)
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    (folder / OWNER_FILE).write_text(str(os.getpid()), encoding="ascii")
    return folder


# Windows API constants (processthreadsapi.h, winerror.h, minwinbase.h)
PROCESS_QUERY_LIMITED_INFORMATION = 0x1000
ERROR_ACCESS_DENIED = 5
STILL_ACTIVE = 259


def _windows_api():
    """(kernel32 with the signatures used here, get_last_error) of ctypes; only on Windows."""
    import ctypes
    from ctypes import wintypes

    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
    kernel32.OpenProcess.argtypes = (wintypes.DWORD, wintypes.BOOL, wintypes.DWORD)
    kernel32.OpenProcess.restype = wintypes.HANDLE
    kernel32.GetExitCodeProcess.argtypes = (wintypes.HANDLE, ctypes.POINTER(wintypes.DWORD))
    kernel32.GetExitCodeProcess.restype = wintypes.BOOL
    kernel32.CloseHandle.argtypes = (wintypes.HANDLE,)
    return kernel32, ctypes.get_last_error


def _alive_windows(pid: int) -> bool:
    """Whether process ``pid`` runs, on Windows: OpenProcess + GetExitCodeProcess (``os.kill(pid, 0)`` is no test
    there: signal 0 is CTRL_C_EVENT, which interrupts the console). A process we may not open is another user's:
    alive."""
    import ctypes
    from ctypes import wintypes

    kernel32, get_last_error = _windows_api()
    handle = kernel32.OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, False, pid)
    if not handle:
        return get_last_error() == ERROR_ACCESS_DENIED
    try:
        exit_code = wintypes.DWORD()
        if not kernel32.GetExitCodeProcess(handle, ctypes.byref(exit_code)):
            return True  # cannot tell: keep its folder
        return exit_code.value == STILL_ACTIVE
    finally:
        kernel32.CloseHandle(handle)


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs; True when that cannot be told (its folder is kept)."""
    if os.name == "nt":
        return _alive_windows(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process (PermissionError), or no answer
        return True
    return True


def remove_orphans(prefix: str) -> list[Path]:
    """Delete the ``prefix`` folders of the temporary folder whose recorded owner process is gone (folders without
    an owner record are left alone); returns them."""
    removed = []
    for folder in Path(tempfile.gettempdir()).glob(f"{prefix}*"):
        try:
            owner = int((folder / OWNER_FILE).read_text(encoding="ascii").strip())
        except (OSError, ValueError):
            continue
        try:
            alive = owner == os.getpid() or _alive(owner)
        except OSError:  # the liveness test itself failed: keep the folder
            alive = True
        if not alive:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed
