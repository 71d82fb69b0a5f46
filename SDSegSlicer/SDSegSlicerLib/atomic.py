"""Files written whole or not at all: an output appears (or replaces an older one) only once it is complete."""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path

PARTIAL_PREFIX = ".partial-"  # temporary files: removed on failure, and by a batch's resume after a kill


@contextlib.contextmanager
def atomic_output(path):
    """Yield a temporary path in ``path``'s folder whose name ends with ``path``'s name (so writers that choose the
    format by the file ending write the same format). When the block succeeds the temporary file replaces ``path``
    in one step; when it fails the temporary file is removed: never half a file, never a good file replaced by a
    broken one."""
    path = Path(path)
    temporary = path.with_name(f"{PARTIAL_PREFIX}{uuid.uuid4().hex[:8]}-{path.name}")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
