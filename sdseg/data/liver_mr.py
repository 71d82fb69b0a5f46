"""One real liver lesion outlined by a reader on a real abdominal MR slice (``--source liver-mr``): pydicom-data's
``MR-SIEMENS-DICOM-WithOverlays.dcm`` (a Siemens 1.5 T contrast-enhanced T1 slice, series "marked lesion"), whose
overlay plane 0x6000 holds the outline as Siemens object graphics, next to a text mark ("Tra") and a boxed "F".
A patient of another source, anatomy and scanner than the bundled models' training data: an external test case.
See docs/data.md for where it comes from and its licence.
"""

from __future__ import annotations

import io
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from sdseg.data.cases import Case, CaseRef, SourceError
from sdseg.volume_io import VolumeError, read_volume

LIVER_MR_MEMBER = "data_store/data/MR-SIEMENS-DICOM-WithOverlays.dcm"
LIVER_MR_HOW_TO_GET = ("run scripts/fetch_pypi_data.sh (it fetches the pydicom-data 1.0.0 wheel into ~/.cache/sdseg) "
                       "and pass --input ~/.cache/sdseg/pydicom_data-1.0.0-py3-none-any.whl (or the .dcm file)")
OVERLAY_GROUP = 0x6000
MIN_FILL_RATIO = 2.0  # a closed outline encloses at least this many times its own pixels; text strokes do not


def _dicom_bytes(path: Path) -> bytes:
    """The slice's DICOM file, from the pydicom-data wheel or the file itself."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            if LIVER_MR_MEMBER not in archive.namelist():
                raise SourceError(f"{path}: holds no {LIVER_MR_MEMBER}; {LIVER_MR_HOW_TO_GET}")
            return archive.read(LIVER_MR_MEMBER)
    return path.read_bytes()


def _dataset(data: bytes, path: Path):
    """The slice read by pydicom (which also unpacks the overlay's bits)."""
    try:
        import pydicom
    except ImportError:
        raise SourceError("--source liver-mr reads the DICOM overlay with pydicom: pip install pydicom") from None
    try:
        return pydicom.dcmread(io.BytesIO(data))
    except (pydicom.errors.InvalidDicomError, ValueError, TypeError, EOFError) as error:
        raise SourceError(f"{path}: not a readable DICOM slice ({error}); {LIVER_MR_HOW_TO_GET}") from error


def overlay_on_image(dataset, shape: tuple[int, int], what="the slice") -> np.ndarray:
    """The overlay plane 0x6000 as uint8 {0, 1} on the image's pixel grid: the plane placed at its Overlay Origin
    (6000,0050), the image pixel (row, column), 1-based, of its first pixel. ``what`` names the slice in errors."""
    try:
        plane = np.asarray(dataset.overlay_array(OVERLAY_GROUP)) > 0
        row, column = (int(v) - 1 for v in dataset[OVERLAY_GROUP, 0x0050].value)
    except (KeyError, ValueError, AttributeError, TypeError) as error:
        raise SourceError(f"{what}: no overlay plane 0x6000 with an origin ({error}); {LIVER_MR_HOW_TO_GET}") \
            from error
    overlay = np.zeros(shape, dtype=np.uint8)
    rows, columns = max(0, min(plane.shape[0], shape[0] - row)), max(0, min(plane.shape[1], shape[1] - column))
    overlay[max(row, 0):max(row, 0) + rows, max(column, 0):max(column, 0) + columns] = \
        plane[max(-row, 0):max(-row, 0) + rows, max(-column, 0):max(-column, 0) + columns]
    return overlay


def outlined_lesions(overlay: np.ndarray, image: np.ndarray) -> np.ndarray:
    """uint8 mask of the regions the overlay outlines, each filled with its outline (the reader's mark drawn
    around the lesion). Marks that are not lesion outlines are dropped: strokes that enclose nothing (text:
    filled area < MIN_FILL_RATIO x the stroke's pixels) and closed shapes whose inside is background (the box
    around the "F" lies in the air outside the body: mean intensity below the image's mean)."""
    labels = sitk.GetArrayFromImage(sitk.ConnectedComponent(sitk.GetImageFromArray(overlay), True))
    mask = np.zeros(overlay.shape, dtype=np.uint8)
    body_level = float(image.mean())
    for label in range(1, int(labels.max()) + 1):
        stroke = (labels == label).astype(np.uint8)
        filled = sitk.GetArrayFromImage(sitk.BinaryFillhole(sitk.GetImageFromArray(stroke))) > 0
        if filled.sum() >= MIN_FILL_RATIO * stroke.sum() and image[filled].mean() > body_level:
            mask |= filled.astype(np.uint8)
    return mask


def _read_liver_mr(path: Path) -> Case:
    data = _dicom_bytes(path)
    dataset = _dataset(data, path)
    with tempfile.TemporaryDirectory(prefix="sdseg-liver-mr-") as folder:
        (Path(folder) / "slice.dcm").write_bytes(data)
        try:
            volume = read_volume(folder)
        except VolumeError as error:
            raise SourceError(f"{path}: its image cannot be read ({error}); {LIVER_MR_HOW_TO_GET}") from error
    image = volume.array_kji.astype(np.float32)
    mask = outlined_lesions(overlay_on_image(dataset, image.shape[1:], path), image[0])
    if not mask.any():
        raise SourceError(f"{path}: its overlay outlines no region inside the body; {LIVER_MR_HOW_TO_GET}")
    ijk_to_ras = volume.ijk_to_ras.copy()
    thickness = float(dataset.get("SliceThickness") or 0)
    if image.shape[0] == 1 and thickness > 0:  # one slice: ITK knows no spacing between slices, use its thickness
        ijk_to_ras[:3, 2] *= thickness / np.linalg.norm(ijk_to_ras[:3, 2])
    return Case("pydicom-liver-mr", image, mask[None, None], ijk_to_ras)


def load_liver_mr(path, labels=None) -> list[CaseRef]:
    """The one slice, one patient (``labels`` is not used: the mask is the overlay's outline)."""
    path = Path(path)
    if not path.is_file():
        raise SourceError(f"{path}: not a file; {LIVER_MR_HOW_TO_GET}")
    case = _read_liver_mr(path)  # 0.5 MB: read once
    return [CaseRef(case.patient, lambda: case)]
