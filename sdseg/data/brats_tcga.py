"""Glioma patients of TCGA on brain MR with expert tumour labels, as BraTS 2018 distributes them (``--source
brats-tcga``).

GitHub ``koriavinash1/DeepBrainSeg`` (commit 5d4f381), folder ``sample_volume/brats/``: 20 BraTS 2018 training
cases, ``<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz`` (240 x 240 x 155 voxels of 1 mm, skull-stripped, on the
SRI24 atlas; labels 1 necrotic and non-enhancing core, 2 oedema, 4 enhancing tumour). Only the 12 cases whose name
says they come from TCIA's TCGA-GBM / TCGA-LGG collections (``Brats18_TCIAxx_yyy_1``) are read: their pre-processed
scans and the expert-revised labels are published on TCIA under CC BY 3.0 (Bakas et al. 2017); the other eight
(``CBICA``: BraTS's own terms; ``2013``: CC BY-NC-SA) are left out. The repository's MIT licence covers its code,
its README says nothing of the data.

One case per patient and sequence, so that a user's image of either kind is represented: the post-contrast T1
(``t1ce``) with the tumour core (labels 1 and 4: what enhances and what it encloses, as a reader outlines a tumour on
it) and the FLAIR and T2 with the whole tumour (labels 1, 2 and 4: the oedema is bright there too). The patient id
is the case, so a patient is in one split with all three.
"""

from __future__ import annotations

import re
from functools import partial
from pathlib import Path

import numpy as np

from sdseg.data.cases import Case, CaseRef, SourceError
from sdseg.volume_io import VolumeError, read_volume

SEQUENCES = {"t1ce": (1, 4), "flair": (1, 2, 4), "t2": (1, 2, 4)}  # sequence -> the labels of its mask
CASE_FOLDER = re.compile(r"Brats18_TCIA\d\d_\d{3}_1")  # TCGA-GBM / TCGA-LGG cases only (module docstring)
DEEPBRAINSEG_COMMIT = "5d4f381"  # the snapshot read and checked (scripts/fetch_real_lesions.sh, real_lesions.sha256)
BRATS_TCGA_HOW_TO_GET = ("pass the sample_volume/brats folder of the GitHub repository koriavinash1/DeepBrainSeg at "
                         f"commit {DEEPBRAINSEG_COMMIT} (scripts/fetch_real_lesions.sh clones and checks it)")


def collection_folder(path) -> Path:
    """The folder of the cases: ``path`` itself, or its ``sample_volume/brats`` subfolder (the repository)."""
    root = Path(path).expanduser()
    return root / "sample_volume" / "brats" if (root / "sample_volume" / "brats").is_dir() else root


def cases(root) -> list[str]:
    """The TCGA-derived case folders of ``root``, sorted."""
    root = Path(root)
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and CASE_FOLDER.fullmatch(p.name)) \
        if root.is_dir() else []
    if not found:
        raise SourceError(f"{root}: no Brats18_TCIAxx_yyy_1 case folder; {BRATS_TCGA_HOW_TO_GET}")
    return found


def _read(path: Path):
    try:
        return read_volume(path)
    except VolumeError as error:
        raise SourceError(f"{error}; {BRATS_TCGA_HOW_TO_GET}") from error


def read_case(root: Path, case: str, sequence: str) -> Case:
    """One case's image of ``sequence`` and the mask of that sequence's labels (SEQUENCES) on its grid."""
    image = _read(root / case / f"{case}_{sequence}.nii.gz")
    labels = _read(root / case / f"{case}_seg.nii.gz")
    if labels.array_kji.shape != image.array_kji.shape or not np.allclose(labels.ijk_to_ras, image.ijk_to_ras,
                                                                          atol=1e-3):
        raise SourceError(f"{root / case}: the labels are not on the grid of the {sequence} image")
    mask = np.isin(labels.array_kji, SEQUENCES[sequence]).astype(np.uint8)
    return Case(case, image.array_kji.astype(np.float32), mask[None], image.ijk_to_ras, tag=sequence)


def load_brats_tcga(path, labels=None) -> list[CaseRef]:
    """One case per patient and sequence (ordered by patient, then t1ce, flair, t2). ``labels`` is not used (each
    sequence has its own, SEQUENCES)."""
    root = collection_folder(path)
    return [CaseRef(case, partial(read_case, root, case, sequence)) for case in cases(root) for sequence in SEQUENCES]
