"""One real head CT without masks (``--source head-ct``): the ``Cranium.inv3`` project that Debian's
invesalius-examples ships (108 axial slices, 256 x 256, 0.96 mm pixels, 1.5 mm apart), texture for synthetic
lesions. See docs/data.md for where it comes from and its licence (GPL-2).

An InVesalius project (``.inv3``) is a gzipped tar of ``main.plist`` (the voxel grid: ``matrix`` = dtype, file
name and shape (slices, rows, columns); ``spacing`` = (column, row, slice) mm; ``orientation``) and the raw voxels
(``matrix.dat``). It stores no origin and no direction cosines: the axial stack gets the usual DICOM axial axes
(LPS), which places its slices correctly along S and leaves left/right and front/back as InVesalius shows them.
"""

from __future__ import annotations

import io
import plistlib
import tarfile
from pathlib import Path

import numpy as np

from sdseg.data.cases import Case, CaseRef, SourceError
from sdseg.data.debian import deb_members

INVESALIUS_EXAMPLES = "usr/share/doc/invesalius-examples/examples"
CRANIUM = "Cranium.inv3"
HEAD_CT_HOW_TO_GET = ("pass the Debian package invesalius-examples (`bash scripts/fetch_debian_data.sh` puts it in "
                      "~/.cache/sdseg/) or its Cranium.inv3")
AXIAL = 1  # InVesalius' orientation code of an axial stack


def _project_files(project: bytes, what: Path) -> dict[str, bytes]:
    """{file name: bytes} of an .inv3 project (a gzipped tar with one folder)."""
    try:
        with tarfile.open(fileobj=io.BytesIO(project), mode="r:gz") as archive:
            return {Path(m.name).name: archive.extractfile(m).read() for m in archive.getmembers() if m.isfile()}
    except (tarfile.TarError, OSError, EOFError) as error:
        raise SourceError(f"{what}: not an InVesalius project ({error}); {HEAD_CT_HOW_TO_GET}") from error


def read_inv3(project: bytes, what: Path) -> tuple[np.ndarray, np.ndarray]:
    """(voxels (K, J, I) float32 in HU, ijk_to_ras 4x4) of an InVesalius project's image."""
    files = _project_files(project, what)
    try:
        main = plistlib.loads(files["main.plist"])
        matrix = main["matrix"]
        shape, spacing = tuple(int(v) for v in matrix["shape"]), [float(v) for v in main["spacing"]]
        voxels = np.frombuffer(files[matrix["filename"]], dtype=np.dtype(matrix["dtype"]).newbyteorder("<"))
    except (KeyError, TypeError, ValueError, plistlib.InvalidFileException) as error:
        raise SourceError(f"{what}: its main.plist or image file is not what InVesalius writes ({error})") \
            from error
    if main.get("orientation") != AXIAL or len(shape) != 3 or voxels.size != int(np.prod(shape)):
        raise SourceError(f"{what}: expected an axial stack whose matrix.dat holds shape {shape}; "
                          f"got orientation {main.get('orientation')} and {voxels.size} voxels")
    ijk_to_ras = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])  # LPS axes, see the module docstring
    return voxels.reshape(shape).astype(np.float32), ijk_to_ras


def load_head_ct(path, labels=None) -> list[CaseRef]:
    """The head CT of invesalius-examples (the .deb or Cranium.inv3): one patient, no masks (``labels`` is not
    used; the project's masks are bone thresholds, not outlines)."""
    path = Path(path)
    if not path.is_file():
        raise SourceError(f"{path}: not a file; {HEAD_CT_HOW_TO_GET}")
    if path.suffix == ".deb":
        project = deb_members(path, INVESALIUS_EXAMPLES, (CRANIUM,), HEAD_CT_HOW_TO_GET).get(CRANIUM)
        if project is None:
            raise SourceError(f"{path}: holds no {INVESALIUS_EXAMPLES}/{CRANIUM}; {HEAD_CT_HOW_TO_GET}")
    else:
        project = path.read_bytes()
    image, ijk_to_ras = read_inv3(project, path)
    case = Case("invesalius-cranium", image, np.zeros((1, *image.shape), dtype=np.uint8), ijk_to_ras)
    return [CaseRef(case.patient, lambda: case)]
