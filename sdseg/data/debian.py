"""Files inside a Debian package (.deb: an ar archive whose data.tar.* member holds the installed files), read
without dpkg, for the sources that Debian ships (mricron-data, invesalius-examples)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

from sdseg.data.cases import SourceError


def deb_members(deb_path: Path, folder: str, names, how_to_get: str) -> dict[str, bytes]:
    """{name: bytes} of the files ``names`` in ``folder`` (e.g. ``usr/share/mricron/templates``) of a .deb; a file
    that is not a Debian package raises :class:`SourceError` ending with ``how_to_get``."""
    with open(deb_path, "rb") as deb:
        if deb.read(8) != b"!<arch>\n":
            raise SourceError(f"{deb_path}: not a Debian package (no ar header); {how_to_get}")
        while True:
            header = deb.read(60)
            if len(header) < 60:
                raise SourceError(f"{deb_path}: no data.tar member; {how_to_get}")
            name, size = header[:16].decode().strip().rstrip("/"), int(header[48:58].decode().strip())
            payload = deb.read(size)
            deb.read(size % 2)  # members are 2-byte aligned
            if name.startswith("data.tar"):
                break
    found = {}
    with tarfile.open(fileobj=io.BytesIO(payload)) as archive:
        for member in archive.getmembers():
            base = member.name.lstrip("./")
            if member.isfile() and base.startswith(folder + "/") and Path(base).name in names:
                found[Path(base).name] = archive.extractfile(member).read()
    return found
