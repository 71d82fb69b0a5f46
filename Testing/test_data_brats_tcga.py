"""`sdseg preprocess --source brats-tcga` on a real cut of the TCGA glioma case Brats18_TCIA01_378_1
(Testing/Data/brats-tcga, README there): each sequence's image and mask read back with an independent reader
(nibabel) against the label file; the cases that are not TCGA's are left out; a patient's three sequences share a
split."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sdseg.data.cases import SourceError
from sdseg.data.dataset import SPLITS
from sdseg.data.sources import get_source
from test_data_ibsi_sts import nifti_array

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "Testing" / "Data" / "brats-tcga"
CASE = "Brats18_TCIA01_378_1"
CASE_FOLDER = FIXTURE / "sample_volume" / "brats" / CASE


def collection(tmp_path: Path, names) -> Path:
    """A copy of the fixture's case folder under each of ``names`` (files renamed to match)."""
    root = tmp_path / "brats"
    for name in names:
        (root / name).mkdir(parents=True)
        for path in CASE_FOLDER.iterdir():
            shutil.copy(path, root / name / path.name.replace(CASE, name))
    return root


@pytest.mark.parametrize("sequence, labels", [("t1ce", {1, 4}), ("flair", {1, 2, 4}), ("t2", {1, 2, 4})])
def test_each_sequence_reads_its_image_and_the_mask_of_its_labels(sequence, labels):
    cases = [ref.read() for ref in get_source("brats-tcga").load(FIXTURE)]  # the repository's root is found too
    assert [(case.patient, case.tag) for case in cases] == [(CASE, "t1ce"), (CASE, "flair"), (CASE, "t2")]
    case = next(case for case in cases if case.tag == sequence)
    np.testing.assert_array_equal(case.image, nifti_array(CASE_FOLDER / f"{CASE}_{sequence}.nii.gz"))
    label = nifti_array(CASE_FOLDER / f"{CASE}_seg.nii.gz")
    assert set(np.unique(label)) == {0, 1, 2, 4}  # all three tumour regions are on the cut
    np.testing.assert_array_equal(case.masks[0], np.isin(label, sorted(labels)))
    np.testing.assert_allclose(np.linalg.norm(case.ijk_to_ras[:3, :3], axis=0), [1.0, 1.0, 1.0])


def test_only_the_cases_from_tcga_are_read(tmp_path):
    """BraTS's own (CBICA) and the 2013 cases have other terms: never read; a folder with none is refused."""
    root = collection(tmp_path, [CASE, "Brats18_CBICA_ABM_1", "Brats18_2013_3_1"])
    assert {ref.patient for ref in get_source("brats-tcga").load(root)} == {CASE}
    shutil.rmtree(root / CASE)
    with pytest.raises(SourceError, match="no Brats18_TCIAxx_yyy_1 case folder"):
        get_source("brats-tcga").load(root)


def test_a_patient_is_in_one_split_with_its_three_sequences(tmp_path):
    names = [CASE, "Brats18_TCIA02_135_1", "Brats18_TCIA10_628_1", "Brats18_TCIA13_623_1"]
    root = collection(tmp_path, names)
    out = tmp_path / "crops"
    result = subprocess.run([sys.executable, "-m", "sdseg.cli", "preprocess", "--source", "brats-tcga", "--input",
                             str(root), "--out", str(out), "--crop", "32", "--crops-per-lesion", "1"],
                            cwd=REPO, capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr
    info = json.loads((out / "dataset.json").read_text())
    assert sorted(p for split in SPLITS for p in info["splits"][split]) == sorted(names)
    for split in SPLITS:
        for path in (out / split).glob("*.npz"):
            patient, sequence = re.fullmatch(r"(Brats18_TCIA\d\d_\d{3}_1)_(t1ce|flair|t2)_.*", path.name).groups()
            assert patient in info["splits"][split]
            with np.load(path) as crop:
                assert str(crop["patient"]) == patient
    sequences = {re.search(r"_(t1ce|flair|t2)_", path.name).group(1) for path in out.glob("*/*.npz")}
    assert sequences == {"t1ce", "flair", "t2"}
