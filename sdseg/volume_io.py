"""Read a 3D scalar volume (file or DICOM series folder) with SimpleITK, with its IJK-to-RAS geometry.

Arrays are indexed ``[k, j, i]`` (SimpleITK / Slicer order). ITK geometry is LPS:
``ijk_to_lps = [[D @ diag(spacing), origin], [0, 0, 0, 1]]`` with ``D`` the direction matrix (columns = world
directions of the I, J, K axes), and ``ijk_to_ras = diag(-1, -1, 1, 1) @ ijk_to_lps``. Every problem with the
input is a :class:`VolumeError` whose message says what is wrong and what to do.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import NamedTuple

import numpy as np
import SimpleITK as sitk

from sdseg.dicom_series import decoded_bytes, read_header, series_problems

FILE_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
ANATOMICAL_AXES_RAS = {"sagittal": 0, "coronal": 1, "axial": 2}  # R, A, S: the RAS axis normal to those slices

log = logging.getLogger(__name__)


class VolumeError(Exception):
    """The volume cannot be segmented; the message says why and what to do."""


class Volume(NamedTuple):
    array_kji: np.ndarray  # voxel values, shape (K, J, I), the file's numeric type
    ijk_to_ras: np.ndarray  # 4x4 float64
    warnings: tuple = ()  # what the user must be told about the input (an irregular series read anyway)


def _supported(path: Path) -> bool:
    return path.name.lower().endswith(FILE_SUFFIXES)


def _itk_reason(error: Exception) -> str:
    """The useful last part of an ITK exception text ("...ERROR: <reason>")."""
    text = str(error).strip()
    reason = text.rsplit("ERROR:", 1)[-1].strip() if "ERROR:" in text else text
    return reason.splitlines()[0].strip() if reason else type(error).__name__


def _dicom_series_files(folder: Path) -> list[str]:
    """The files of the folder's largest DICOM series, in the series reader's order (by position)."""
    series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise VolumeError(f"{folder}: no DICOM image series found in this folder; give the folder that directly "
                          f"contains the series' .dcm files, or a volume file ({', '.join(FILE_SUFFIXES)})")
    files_per_series = {uid: sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid) for uid in series}
    uid = max(series, key=lambda s: len(files_per_series[s]))
    if len(series) > 1:
        log.warning("%s holds %d DICOM series; reading the largest (%s, %d files)", folder, len(series), uid,
                    len(files_per_series[uid]))
    return list(files_per_series[uid])


def _check_dicom_series(folder: Path, headers, allow_irregular_slices: bool) -> tuple[str, ...]:
    """The series' irregularities (dicom_series.series_problems): a VolumeError naming the first one, or, when
    ``allow_irregular_slices``, the warnings to report with the result."""
    problems = series_problems(headers)
    if problems and not allow_irregular_slices:
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        raise VolumeError(f"{folder}: the DICOM series is not one evenly spaced volume: {problems[0]}{more}; it "
                          "would be segmented with the wrong geometry. Complete the series, or allow irregular "
                          "slices (--allow-irregular-slices) to segment it as if evenly spaced")
    return tuple(f"{folder}: {problem}; segmented as if evenly spaced" for problem in problems)


def _prepare(path: Path, max_bytes: int | None, allow_irregular_slices: bool):
    """(a function that reads the image, the warnings about it), after checking from the headers alone that the
    input exists, is supported, is a regular series (a folder) and its voxels fit ``max_bytes`` once decoded."""
    if path.is_dir():
        files = _dicom_series_files(path)
        headers = [read_header(file) for file in files]
        warnings = _check_dicom_series(path, headers, allow_irregular_slices)
        size = sum(header.data_bytes for header in headers)
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(files)
    else:
        if not path.exists():
            raise VolumeError(f"{path}: no such file or folder; check the path")
        if not _supported(path):
            raise VolumeError(f"{path}: unsupported file type; save the volume as one of {', '.join(FILE_SUFFIXES)} "
                              "(e.g. .nrrd from Slicer) or give a DICOM series folder")
        if path.stat().st_size == 0:
            raise VolumeError(f"{path}: the file is empty (0 bytes); it was not written completely, save it again")
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        size, warnings = decoded_bytes(reader), ()
    if max_bytes is not None and size > max_bytes:
        raise VolumeError(f"{path}: its voxels take {size / 2 ** 20:.1f} MiB once decompressed (from its header), "
                          f"over the {max_bytes / 2 ** 20:.1f} MiB allowed here (a server's upload limit, or the "
                          "memory available); crop or resample the volume")
    return reader.Execute, warnings


def ijk_to_ras_matrix(image: sitk.Image) -> np.ndarray:
    """4x4 IJK-to-RAS matrix of a 3D SimpleITK image (ITK stores LPS)."""
    direction = np.array(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    ijk_to_lps = np.eye(4)
    ijk_to_lps[:3, :3] = direction @ np.diag(np.array(image.GetSpacing(), dtype=np.float64))
    ijk_to_lps[:3, 3] = image.GetOrigin()
    return LPS_TO_RAS @ ijk_to_lps


def _check_image(image: sitk.Image, path: Path) -> None:
    dimension = image.GetDimension()
    if dimension == 2:
        raise VolumeError(f"{path}: this is a 2D image; SDSegSlicer segments 3D volumes (a CT/MR series). Load "
                          "the whole series or a 3D file")
    if dimension != 3:
        raise VolumeError(f"{path}: this is a {dimension}D image (e.g. a time series or multi-volume); extract "
                          "one 3D volume first (in Slicer: Sequences / Multivolume) and segment that")
    components = image.GetNumberOfComponentsPerPixel()
    if components != 1:
        raise VolumeError(f"{path}: the voxels have {components} components (RGB colour or vector image); "
                          "convert it to a single-component grayscale volume (in Slicer: Vector to Scalar "
                          "Volume) first")
    if "complex" in image.GetPixelIDTypeAsString():
        raise VolumeError(f"{path}: complex-valued voxels; save the magnitude image as a scalar volume")
    if 0 in image.GetSize():
        raise VolumeError(f"{path}: the volume has zero size {image.GetSize()}; it holds no voxels")
    if sum(size > 1 for size in image.GetSize()) < 2:
        raise VolumeError(f"{path}: the volume has size {image.GetSize()}, a single line of voxels; give a "
                          "volume with at least one 2D slice")


def _check_values(array: np.ndarray, path: Path) -> None:
    if np.issubdtype(array.dtype, np.floating):
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        if bad:
            raise VolumeError(f"{path}: {bad} voxel(s) are NaN or infinite; replace them (e.g. with the minimum "
                              "intensity) and save the volume again")


def read_volume(path, max_bytes: int | None = None, allow_irregular_slices: bool = False) -> Volume:
    """Read a 3D scalar volume file or DICOM series folder -> ``Volume(array_kji, ijk_to_ras, warnings)``.

    Raises :class:`VolumeError` for a name that is not valid UTF-8 (ITK's readers would abort the process), a
    missing, empty, unreadable or unsupported input, voxels over ``max_bytes`` once decompressed (known from the
    header, before reading them), a DICOM series with missing, duplicate, unevenly spaced or mismatched slices
    (unless ``allow_irregular_slices``: then ``warnings`` says what is irregular), a 2D or 4D image,
    RGB/vector/complex voxels, zero size, or NaN/infinite values.
    """
    path = Path(path).expanduser()
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        raise VolumeError(f"{str(path).encode('utf-8', 'backslashreplace').decode()}: the name is not valid UTF-8; "
                          "rename the file or folder") from None
    try:
        read, warnings = _prepare(path, max_bytes, allow_irregular_slices)
        image = read()
    except RuntimeError as error:  # SimpleITK/ITK reader failures
        raise VolumeError(f"{path}: could not be read as a volume ({_itk_reason(error)}); check that the file is "
                          f"complete and in a supported format ({', '.join(FILE_SUFFIXES)} or a DICOM "
                          "folder)") from error
    _check_image(image, path)
    array = sitk.GetArrayFromImage(image)
    _check_values(array, path)
    return Volume(array, ijk_to_ras_matrix(image), warnings)


def choose_slice_axis(ijk_to_ras, anatomical: str = "axial", shape_kji=None) -> int:
    """IJK axis (0 = I, 1 = J, 2 = K) whose direction is closest to the RAS axis normal to ``anatomical`` slices.

    ``anatomical``: "axial" (RAS S axis), "coronal" (A) or "sagittal" (R). The array axis order says nothing about
    anatomy (a volume may be stored sagittally, flipped or oblique), so only the geometry decides. With
    ``shape_kji``, a volume that is a single slice (one axis of size 1) is segmented along that axis.
    """
    if anatomical not in ANATOMICAL_AXES_RAS:
        raise ValueError(f"anatomical must be one of {', '.join(ANATOMICAL_AXES_RAS)}, got {anatomical!r}")
    if shape_kji is not None:
        single = [axis for axis in range(3) if shape_kji[2 - axis] == 1]
        if len(single) == 1:
            return single[0]
    directions = np.asarray(ijk_to_ras, dtype=np.float64)[:3, :3]
    unit = directions / np.linalg.norm(directions, axis=0, keepdims=True)
    return int(np.argmax(np.abs(unit[ANATOMICAL_AXES_RAS[anatomical], :])))


def check_roi(roi_ijk, shape_kji) -> list[int]:
    """``roi_ijk`` = [i0, j0, k0, i1, j1, k1] (end exclusive) checked against the volume; None = whole volume."""
    dims_ijk = [int(shape_kji[2]), int(shape_kji[1]), int(shape_kji[0])]
    if roi_ijk is None:
        return [0, 0, 0] + dims_ijk
    roi = [int(v) for v in roi_ijk]
    for axis, name in enumerate("IJK"):
        start, end = roi[axis], roi[axis + 3]
        if not 0 <= start < end <= dims_ijk[axis]:
            raise ValueError(f"the region of interest {roi} does not fit the volume of size {dims_ijk} (IJK) on "
                             f"the {name} axis: need 0 <= {start} < {end} <= {dims_ijk[axis]}; move or resize the "
                             "ROI to overlap the volume")
    return roi


def roi_array(array_kji: np.ndarray, roi_ijk) -> np.ndarray:
    """View of ``array_kji`` cropped to ``roi_ijk`` = [i0, j0, k0, i1, j1, k1] (shape (k1-k0, j1-j0, i1-i0))."""
    i0, j0, k0, i1, j1, k1 = roi_ijk
    return array_kji[k0:k1, j0:j1, i0:i1]


def slice_of_roi(roi_kji: np.ndarray, slice_axis: int, position: int) -> np.ndarray:
    """2D slice number ``position`` (counted from the ROI start) along IJK axis ``slice_axis`` of a cropped array:
    shape (J, I) for axis 2 (K), (K, I) for axis 1 (J), (K, J) for axis 0 (I), as in docs/protocol.md."""
    return np.take(roi_kji, position, axis=2 - slice_axis)
