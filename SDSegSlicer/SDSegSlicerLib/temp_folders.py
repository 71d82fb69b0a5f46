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


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
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
        if owner != os.getpid() and not _alive(owner):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed
