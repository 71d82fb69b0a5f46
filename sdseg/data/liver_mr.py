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


def _overlay(data: bytes, path: Path) -> np.ndarray:
    """The overlay plane 0x6000 (rows, columns) as uint8 {0, 1}, read by pydicom (which unpacks its bits)."""
    try:
        import pydicom
    except ImportError:
        raise SourceError("--source liver-mr reads the DICOM overlay with pydicom: pip install pydicom") from None
    try:
        dataset = pydicom.dcmread(io.BytesIO(data))
        overlay = dataset.overlay_array(OVERLAY_GROUP)
    except (pydicom.errors.InvalidDicomError, KeyError, ValueError, AttributeError, TypeError) as error:
        raise SourceError(f"{path}: no overlay plane 0x6000 could be read ({error}); {LIVER_MR_HOW_TO_GET}") \
            from error
    return (np.asarray(overlay) > 0).astype(np.uint8)


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
    with tempfile.TemporaryDirectory(prefix="sdseg-liver-mr-") as folder:
        (Path(folder) / "slice.dcm").write_bytes(data)
        try:
            volume = read_volume(folder)
        except VolumeError as error:
            raise SourceError(str(error)) from error
    image = volume.array_kji.astype(np.float32)
    overlay = _overlay(data, path)
    if overlay.shape != image.shape[1:]:
        raise SourceError(f"{path}: overlay {overlay.shape} and image {image.shape[1:]} differ in size")
    mask = outlined_lesions(overlay, image[0])
    if not mask.any():
        raise SourceError(f"{path}: its overlay outlines no region inside the body; {LIVER_MR_HOW_TO_GET}")
    return Case("pydicom-liver-mr", image, mask[None, None], volume.ijk_to_ras)


def load_liver_mr(path, labels=None) -> list[CaseRef]:
    """The one slice, one patient (``labels`` is not used: the mask is the overlay's outline)."""
    path = Path(path)
    if not path.is_file():
        raise SourceError(f"{path}: not a file; {LIVER_MR_HOW_TO_GET}")
    case = _read_liver_mr(path)  # 0.5 MB: read once
    return [CaseRef(case.patient, lambda: case)]
