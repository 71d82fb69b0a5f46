"""LIDC-IDRI nodule crops with every radiologist's mask, as PNG files (``--source lidc-slices``).

GitHub ``periclesanfe/Pulmoseg`` (commit 045c0c6b7; code MIT) holds ``LIDC-IDRI-slices/LIDC-IDRI-XXXX/nodule-K/
{images,mask-0,mask-1,mask-2,mask-3}/slice-N.png``: 875 patients, 2,630 nodules, 15,548 slices; each image a
128 x 128 8-bit crop of a windowed CT slice around one nodule, each mask one radiologist's outline filled (0/255;
empty where that radiologist drew nothing on the slice; mask-R is not a fixed reader identity). No pixel spacing, no
Hounsfield units. This is the layout of the LIDC crops the Probabilistic U-Net line of papers benchmarks on. Data:
LIDC-IDRI (The Cancer Imaging Archive), CC BY 3.0; cite Armato et al. 2011 and TCIA. Patients LIDC-IDRI-0901 and
above are reserved (sdseg.data.reserved) and left out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from sdseg.data.cases import Case, CaseRef, SourceError
from sdseg.data.reserved import RESERVED_RULES, unreserved

RATERS = 4
MASK_FOLDERS = tuple(f"mask-{rater}" for rater in range(RATERS))
PATIENT_FOLDER = RESERVED_RULES["LIDC-IDRI"][0]
NODULE_FOLDER = re.compile(r"nodule-(\d+)")
SLICE_FILE = re.compile(r"slice-(\d+)\.png")
# The PNGs are already windowed CT in 0..255: mapped linearly to [-1, 1] as they are, the way the papers feed them.
PNG_RANGE = {"normalization": "ct_window", "window": [0.0, 255.0]}
LIDC_SLICES_HOW_TO_GET = (
    "pass the LIDC-IDRI-slices folder of the GitHub repository periclesanfe/Pulmoseg at commit 045c0c6b7 "
    "(scripts/fetch_real_lesions.sh clones and checks it), or one of its LIDC-IDRI-XXXX folders")


@dataclass(frozen=True)
class NoduleSlice:
    """One crop: slice ``number`` of nodule ``nodule`` of ``patient``, its files under ``folder`` (the nodule's)."""
    patient: str
    nodule: int
    number: int
    folder: Path

    @property
    def name(self) -> str:
        return f"{self.patient}_n{self.nodule:02d}_s{self.number:03d}"

    def read(self) -> tuple[np.ndarray, np.ndarray]:
        """(image float32 (H, W) in 0..255, masks uint8 (RATERS, H, W) in {0, 1}: PNG value > 127)."""
        file = f"slice-{self.number}.png"
        image = _read_png(self.folder / "images" / file)
        masks = np.stack([_read_png(self.folder / mask / file) > 127 for mask in MASK_FOLDERS]).astype(np.uint8)
        if masks.shape[1:] != image.shape:
            raise SourceError(f"{self.folder}: the masks of {file} are {masks.shape[1:]}, its image {image.shape}")
        return image, masks


def _read_png(path: Path) -> np.ndarray:
    if not path.is_file():
        raise SourceError(f"{path}: missing; every slice-N.png of images/ needs one in each of "
                          f"{', '.join(MASK_FOLDERS)} ({LIDC_SLICES_HOW_TO_GET})")
    try:
        array = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    except RuntimeError as error:
        raise SourceError(f"{path}: not a readable PNG ({str(error).strip().splitlines()[-1]})") from error
    if array.ndim != 2:
        raise SourceError(f"{path}: expected a grey-level PNG, got an array of shape {array.shape}")
    return array.astype(np.float32)


def _patient_folders(path: Path) -> list[Path]:
    """The LIDC-IDRI-XXXX folders of ``path`` (or ``path`` itself when it is one)."""
    if not path.is_dir():
        raise SourceError(f"{path}: not a folder; {LIDC_SLICES_HOW_TO_GET}")
    if PATIENT_FOLDER.fullmatch(path.name):
        return [path]
    folders = sorted(p for p in path.iterdir() if p.is_dir() and PATIENT_FOLDER.fullmatch(p.name))
    if not folders:
        raise SourceError(f"{path}: no LIDC-IDRI-XXXX folder in it; {LIDC_SLICES_HOW_TO_GET}")
    return folders


def nodule_slices(path, include_reserved: bool = False) -> tuple[list[NoduleSlice], list[str]]:
    """(every slice of every nodule of the unreserved patients under ``path``, ordered by patient, nodule and
    slice; the reserved patients left out). ``path``: the LIDC-IDRI-slices folder or one patient's folder. Raises
    SourceError when every patient there is reserved (unless ``include_reserved``) or a nodule has no slice."""
    path = Path(path).expanduser()
    folders = {folder.name: folder for folder in _patient_folders(path)}
    kept, reserved = unreserved(folders, "LIDC-IDRI", include_reserved, str(path))
    slices = []
    for patient in kept:
        nodules = sorted((int(m.group(1)), p) for p in folders[patient].iterdir()
                         if (m := NODULE_FOLDER.fullmatch(p.name)) and p.is_dir())
        for nodule, folder in nodules:
            numbers = sorted(int(m.group(1)) for f in (folder / "images").glob("slice-*.png")
                             if (m := SLICE_FILE.fullmatch(f.name)))
            if not numbers:
                raise SourceError(f"{folder}: no images/slice-N.png; {LIDC_SLICES_HOW_TO_GET}")
            slices += [NoduleSlice(patient, nodule, number, folder) for number in numbers]
    if not slices:
        raise SourceError(f"{path}: no nodule-K/images/slice-N.png found; {LIDC_SLICES_HOW_TO_GET}")
    return slices, reserved


def _case(crop: NoduleSlice) -> Case:
    image, masks = crop.read()
    return Case(crop.patient, image[None], masks[:, None], np.eye(4), whole_image_roi=True)


def load_lidc_slices(path, labels=None, include_reserved: bool = False) -> list[CaseRef]:
    """One case per crop (a 2D case: the whole image is the region of interest), four raters, patient
    LIDC-IDRI-XXXX; reserved patients left out (:func:`nodule_slices`). ``labels`` is not used (masks are 0/255)."""
    return [CaseRef(crop.patient, partial(_case, crop)) for crop in nodule_slices(path, include_reserved)[0]]
