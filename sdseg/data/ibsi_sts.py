"""IBSI soft-tissue sarcoma patients on CT, MR T1 and FDG-PET with the GTV_Mass contour (``--source ibsi-sts``).

GitHub ``theibsi/data_sets`` (commit 6da9602), folder ``ibsi_validation/``: STS_001 .. STS_051, each in
``nifti/STS_xxx/{CT,MR_T1,PET}_{image,mask}.nii.gz`` and ``dicom/STS_xxx/{CT,MR_T1,PET}/{image/*.dcm,mask/RS.dcm}``
(the mask an RTSTRUCT whose ROI is named GTV_Mass...). Cropped 5 cm around the tumour by A. Zwanenburg with MIRP; MR
bias-corrected and resampled to the CT grid; PET in SUV. From the TCIA Soft-tissue-Sarcoma collection (Vallieres et
al. 2015), CC BY 3.0 Unported. Some copies lack the NIfTI images over 4 MiB: the DICOM series and its RTSTRUCT
(rasterised onto the image grid, :func:`rasterise_rtstruct`) stand in. STS_041 .. STS_051 are reserved
(sdseg.data.reserved) and left out.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
from matplotlib.path import Path as PolygonPath

from sdseg.data.cases import Case, CaseRef, SourceError
from sdseg.data.reserved import RESERVED_RULES, unreserved
from sdseg.volume_io import VolumeError, read_volume

MODALITIES = {"ct": "CT", "mr": "MR_T1", "pet": "PET"}  # --modality -> folder / file prefix
GTV_ROI_PREFIX = "GTV_Mass"  # the RTSTRUCT ROI (GTV_Mass_CT, ...)
PATIENT_FOLDER = RESERVED_RULES["STS"][0]
SLICE_TOLERANCE = 0.1  # a contour lies on the slice whose index is within this (in slices) of its points' k
LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
IBSI_STS_HOW_TO_GET = ("pass the ibsi_validation folder of the GitHub repository theibsi/data_sets at commit 6da9602 "
                       "(scripts/fetch_real_lesions.sh clones and checks it)")


def modality_names(modality: str) -> list[str]:
    """Folder names of ``--modality`` ct | mr | pet | all."""
    if modality == "all":
        return list(MODALITIES.values())
    if modality not in MODALITIES:
        raise SourceError(f"--modality {modality!r}: choose ct, mr, pet or all")
    return [MODALITIES[modality]]


def collection_folder(path) -> Path:
    """The ``ibsi_validation`` folder: ``path`` itself, or its ``ibsi_validation`` subfolder (the repository)."""
    root = Path(path).expanduser()
    return root / "ibsi_validation" if (root / "ibsi_validation").is_dir() else root


def patients(root) -> list[str]:
    """The STS_xxx patients of an ``ibsi_validation`` folder (in nifti/ or dicom/)."""
    root = Path(root).expanduser()
    found = {p.name for folder in (root / "nifti", root / "dicom") if folder.is_dir()
             for p in folder.iterdir() if p.is_dir() and PATIENT_FOLDER.fullmatch(p.name)}
    if not found:
        raise SourceError(f"{root}: no nifti/STS_xxx or dicom/STS_xxx folder; {IBSI_STS_HOW_TO_GET}")
    return sorted(found)


def rasterise_rtstruct(rtstruct: Path, ijk_to_ras: np.ndarray, shape_kji: tuple[int, int, int]) -> np.ndarray:
    """uint8 (K, J, I) mask of the RTSTRUCT's GTV_Mass ROI on an image grid: each closed planar contour (points in
    patient LPS mm) is mapped to voxel (i, j, k) with the inverse of ijk_to_lps, put on the slice k it lies on, and
    filled: a voxel belongs to it when its centre lies inside the polygon (this gives the NIfTI masks of the data set
    voxel for voxel). Contours of one slice combine by the even-odd rule (a contour inside another is a hole), the
    DICOM RT convention."""
    import pydicom

    try:
        data = pydicom.dcmread(str(rtstruct))
        names = {item.ROINumber: str(item.ROIName) for item in data.StructureSetROISequence}
        contours = {item.ReferencedROINumber: item for item in data.ROIContourSequence}
    except (OSError, AttributeError, pydicom.errors.InvalidDicomError) as error:
        raise SourceError(f"{rtstruct}: not a readable RTSTRUCT ({error})") from error
    numbers = [number for number, name in names.items() if name.startswith(GTV_ROI_PREFIX)]
    if len(numbers) != 1 or numbers[0] not in contours:
        raise SourceError(f"{rtstruct}: expected one ROI named {GTV_ROI_PREFIX}..., found {sorted(names.values())}")
    lps_to_ijk = np.linalg.inv(LPS_FROM_RAS @ ijk_to_ras)
    mask = np.zeros(shape_kji, dtype=bool)
    rows, cols = np.mgrid[:shape_kji[1], :shape_kji[2]]
    centres = np.column_stack([cols.ravel(), rows.ravel()]).astype(np.float64)  # (i, j) of every voxel of a slice
    for contour in getattr(contours[numbers[0]], "ContourSequence", []):
        points = np.asarray(contour.ContourData, dtype=np.float64).reshape(-1, 3)
        ijk = (lps_to_ijk @ np.column_stack([points, np.ones(len(points))]).T).T[:, :3]
        k = int(round(float(ijk[:, 2].mean())))
        if np.abs(ijk[:, 2] - k).max() > SLICE_TOLERANCE or not 0 <= k < shape_kji[0]:
            raise SourceError(f"{rtstruct}: a contour does not lie on a slice of the image grid (k = "
                              f"{ijk[:, 2].min():.2f} .. {ijk[:, 2].max():.2f}); is it the series' RTSTRUCT?")
        if len(ijk) >= 3:
            mask[k] ^= PolygonPath(ijk[:, :2]).contains_points(centres).reshape(shape_kji[1:])
    return mask.astype(np.uint8)


def _read(path: Path):
    try:
        return read_volume(path)
    except VolumeError as error:
        raise SourceError(str(error)) from error


def case_files(root: Path, patient: str, modality: str) -> tuple[str, Path, Path]:
    """Where one patient's image and mask on one modality (a folder name of MODALITIES) are read from:
    ("nifti", image .nii.gz, mask .nii.gz) when both NIfTI files exist, else ("dicom", the series folder, RS.dcm)."""
    nifti = root / "nifti" / patient
    image_path, mask_path = nifti / f"{modality}_image.nii.gz", nifti / f"{modality}_mask.nii.gz"
    if image_path.is_file() and mask_path.is_file():
        return "nifti", image_path, mask_path
    dicom = root / "dicom" / patient / modality
    if not (dicom / "image").is_dir() or not (dicom / "mask" / "RS.dcm").is_file():
        raise SourceError(f"{patient} {modality}: neither {image_path.name} + {mask_path.name} in {nifti} nor "
                          f"{dicom}/image/*.dcm + mask/RS.dcm; {IBSI_STS_HOW_TO_GET}")
    return "dicom", dicom / "image", dicom / "mask" / "RS.dcm"


def read_case(root: Path, patient: str, modality: str) -> Case:
    """One patient's image and GTV mask on one modality (:func:`case_files`; a DICOM RTSTRUCT is rasterised onto the
    series' grid, :func:`rasterise_rtstruct`); ``tag`` the modality."""
    kind, image_path, mask_path = case_files(root, patient, modality)
    image = _read(image_path)
    if kind == "dicom":
        mask_kji = rasterise_rtstruct(mask_path, image.ijk_to_ras, image.array_kji.shape)
    else:
        mask = _read(mask_path)
        if mask.array_kji.shape != image.array_kji.shape or not np.allclose(mask.ijk_to_ras, image.ijk_to_ras,
                                                                             atol=1e-3):
            raise SourceError(f"{mask_path}: not on the grid of {image_path}")
        mask_kji = (mask.array_kji > 0).astype(np.uint8)
    return Case(patient, image.array_kji.astype(np.float32), mask_kji[None], image.ijk_to_ras, tag=modality)


def load_ibsi_sts(path, labels=None, include_reserved: bool = False, modality: str = "ct") -> list[CaseRef]:
    """One case per patient and modality (``modality``: ct, mr, pet or all; cases ordered by patient, then CT, MR,
    PET), patient id STS_xxx whatever the modality, so a patient falls in one split for all of them. Reserved
    patients left out (sdseg.data.reserved). ``labels`` is not used (the mask is the GTV)."""
    root = collection_folder(path)
    kept, _ = unreserved(patients(root), "STS", include_reserved, str(root))
    return [CaseRef(patient, partial(read_case, root, patient, name))
            for patient in kept for name in modality_names(modality)]


def rtstruct_agreement(root, patient: str, modality: str) -> dict:
    """How the DICOM fallback agrees with the NIfTI files of one patient and modality (both must exist): the
    rasterised RTSTRUCT against the NIfTI mask (Dice, voxels of each) and the DICOM series against the NIfTI image
    (largest absolute difference; whether the grids match)."""
    root = Path(root).expanduser()
    dicom, nifti = root / "dicom" / patient / modality, root / "nifti" / patient
    image, nifti_image = _read(dicom / "image"), _read(nifti / f"{modality}_image.nii.gz")
    nifti_mask = _read(nifti / f"{modality}_mask.nii.gz").array_kji > 0
    same_grid = (image.array_kji.shape == nifti_image.array_kji.shape
                 and np.allclose(image.ijk_to_ras, nifti_image.ijk_to_ras, atol=1e-3))
    if not same_grid:
        return {"patient": patient, "modality": modality, "same_grid": False}
    mask = rasterise_rtstruct(dicom / "mask" / "RS.dcm", image.ijk_to_ras, image.array_kji.shape) > 0
    overlap = int((mask & nifti_mask).sum())
    return {"patient": patient, "modality": modality, "same_grid": True,
            "dice": 2.0 * overlap / max(1, int(mask.sum()) + int(nifti_mask.sum())),
            "rtstruct_voxels": int(mask.sum()), "nifti_voxels": int(nifti_mask.sum()),
            "image_max_abs_difference": float(np.abs(image.array_kji.astype(np.float64)
                                                     - nifti_image.array_kji).max())}
