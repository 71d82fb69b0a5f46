"""`sdseg preprocess --source ibsi-sts` on a real cut of sarcoma patient STS_019 (Testing/Data/ibsi-sts, README
there): NIfTI and DICOM + RTSTRUCT read back with independent readers (nibabel, pydicom) and compared."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel
import numpy as np
import pytest

from sdseg.data.dataset import SPLITS, CropsDataset
from sdseg.data.ibsi_sts import rtstruct_agreement
from sdseg.data import sources
from sdseg.data.preprocess import texture_crops
from sdseg.data.sources import get_source
import test_data_sources
from test_data_sources import read_nrrd

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "Testing" / "Data" / "ibsi-sts" / "ibsi_validation"
PATIENT = "STS_019"
NIFTI = FIXTURE / "nifti" / PATIENT
MODALITIES = ("CT", "MR_T1", "PET")


def nifti_array(path: Path) -> np.ndarray:
    """(K, J, I) array of a NIfTI file read with nibabel (which gives (I, J, K))."""
    return np.asarray(nibabel.load(str(path)).dataobj).transpose(2, 1, 0)


def modality_of(crop: Path) -> str:
    """The modality in a crop's file name ``<patient>_<modality>_<case>_...``."""
    return re.fullmatch(r"STS_\d{3}_(CT|MR_T1|PET)_\d{5}_.*", crop.name).group(1)


def preprocess(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sdseg.cli", "preprocess", "--source", "ibsi-sts", *map(str, args)],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1"))


def collection(tmp_path: Path, names) -> Path:
    """A copy of the fixture holding STS_019 and copies of its files under other patient ids."""
    root = tmp_path / "ibsi_validation"
    shutil.copytree(FIXTURE, root)
    for name in names:
        for kind in ("nifti", "dicom"):
            shutil.copytree(root / kind / PATIENT, root / kind / name)
    return root


@pytest.mark.parametrize("modality", ["ct", "mr", "pet"])
def test_each_modality_reads_the_nifti_image_and_gtv_mask(modality):
    refs = get_source("ibsi-sts").load(FIXTURE, modality=modality)
    assert [ref.patient for ref in refs] == [PATIENT]
    case = refs[0].read()
    name = {"ct": "CT", "mr": "MR_T1", "pet": "PET"}[modality]
    np.testing.assert_array_equal(case.image, nifti_array(NIFTI / f"{name}_image.nii.gz"))
    np.testing.assert_array_equal(case.masks[0], nifti_array(NIFTI / f"{name}_mask.nii.gz") > 0)
    assert case.tag == name and case.masks[0].any()
    spacing = np.linalg.norm(case.ijk_to_ras[:3, :3], axis=0)
    np.testing.assert_allclose(spacing, nibabel.load(str(NIFTI / f"{name}_image.nii.gz")).header.get_zooms(),
                               rtol=1e-5)


def test_without_the_nifti_image_the_dicom_series_and_its_rasterised_rtstruct_stand_in(tmp_path):
    root = collection(tmp_path, [])
    (root / "nifti" / PATIENT / "CT_image.nii.gz").unlink()
    case = get_source("ibsi-sts").load(root, modality="ct")[0].read()
    np.testing.assert_array_equal(case.image, nifti_array(NIFTI / "CT_image.nii.gz"))  # HU, same grid
    reference = nifti_array(NIFTI / "CT_mask.nii.gz") > 0
    np.testing.assert_array_equal(case.masks[0] > 0, reference)  # the RTSTRUCT gives the NIfTI mask exactly
    agreement = rtstruct_agreement(FIXTURE, PATIENT, "CT")
    assert agreement["same_grid"] and agreement["dice"] == 1.0 and agreement["image_max_abs_difference"] == 0.0
    assert agreement["rtstruct_voxels"] == int(reference.sum()) > 0


def test_a_patient_is_in_one_split_for_every_modality_with_its_crops_named_by_modality(tmp_path):
    root = collection(tmp_path, ["STS_002", "STS_003", "STS_004"])
    splits = {}
    for modality in ("ct", "mr", "pet", "all"):
        out = tmp_path / modality
        result = preprocess("--input", root, "--modality", modality, "--out", out, "--crop", 32, "--negatives",
                            "0.2", "--crops-per-lesion", 2)
        assert result.returncode == 0, result.stderr
        info = json.loads((out / "dataset.json").read_text())
        splits[modality] = info["splits"]
        assert info["modality"] == modality and info["n_raters"] == 1
        # lesion-free regions beside the tumour: on the CT and MR grids; the fixture's PET (28 x 28 voxels of
        # 4.7 mm, the tumour on every slice) has none
        assert (info["negatives"]["counts"]["train"] > 0) == (modality != "pet")
        expected = {"ct": {"normalization": "ct_window", "window": [-160.0, 240.0]},
                    "pet": {"normalization": "ct_window", "window": [0.0, 10.0], "body_above": -0.98}}.get(
            modality, {"normalization": "percentile", "percentiles": [0.5, 99.5]})
        assert info["preprocessing"] == expected
        names = {"ct": ["CT"], "mr": ["MR_T1"], "pet": ["PET"], "all": list(MODALITIES)}[modality]
        for split in SPLITS:
            files = sorted((out / split).glob("*.npz"))
            assert bool(files) == bool(info["splits"][split])
            for path in files:
                with np.load(path) as crop:
                    assert str(crop["patient"]) in info["splits"][split]
                    assert "_neg" in path.name or crop["neighbours"].shape == (2, 64, 64)
        seen = {modality_of(path) for split in SPLITS for path in (out / split).glob("*.npz")}
        assert seen == set(names)
        CropsDataset(out, "train")[0]
    assert splits["ct"] == splits["mr"] == splits["pet"] == splits["all"]
    assert sorted(p for s in SPLITS for p in splits["ct"][s]) == ["STS_002", "STS_003", "STS_004", PATIENT]


def test_pet_lesion_free_regions_count_body_tissue_at_low_suv():
    """Body tissue is SUV 0.1-1, at the bottom of the 0..10 window: the generic body test (normalised > -0.8, made
    for CT and MR) would take every PET region for air and cut no lesion-free PET crop."""
    case = get_source("ibsi-sts").load(FIXTURE, modality="pet")[0].read()
    case = dataclasses.replace(case, masks=np.zeros_like(case.masks))  # where the tumour is not: any region
    window = dict(sources.IBSI_STS_PREPROCESSING["pet"])
    assert len(texture_crops(case, window, 32, 96, 4, np.random.default_rng(0))) == 4
    del window["body_above"]
    assert texture_crops(case, window, 32, 96, 4, np.random.default_rng(0)) == []


def test_reserved_patients_are_left_out_refused_alone_and_never_exported(tmp_path):
    # STS_045 is a stand-in: a copy of STS_019's files under a reserved id (no reserved patient's data is read)
    root = collection(tmp_path, ["STS_002", "STS_003", "STS_045"])
    out, volumes = tmp_path / "crops", tmp_path / "volumes"
    result = preprocess("--input", root, "--modality", "ct", "--out", out, "--export-volumes", volumes,
                        "--crop", 32, "--crops-per-lesion", 1)
    assert result.returncode == 0, result.stderr
    info = json.loads((out / "dataset.json").read_text())
    assert info["reserved"] == {"rule": "STS_041 .. STS_051", "left_out": 1, "included": False}
    assert "STS_045" not in json.dumps(info["splits"])
    assert not [p for p in out.rglob("*") if "STS_045" in p.name]
    assert not [p for p in volumes.rglob("*") if "STS_045" in p.name]

    only = tmp_path / "only" / "ibsi_validation"
    for kind in ("nifti", "dicom"):
        shutil.copytree(root / kind / "STS_045", only / kind / "STS_045")
    result = preprocess("--input", only, "--modality", "pet", "--out", tmp_path / "refused")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1
    assert "STS_045 is reserved" in lines[0] and "STS_041 .. STS_051" in lines[0] and "--include-reserved" in lines[0]
    assert not (tmp_path / "refused").exists()


def test_export_volumes_writes_the_test_patients_volumes_and_masks_only(tmp_path, monkeypatch):
    monkeypatch.setitem(test_data_sources.NRRD_TYPES, "float", "<f4")  # the NIfTI images are float32
    root = collection(tmp_path, ["STS_002", "STS_003", "STS_004"])
    for patient in ("STS_002", "STS_003", "STS_004", PATIENT):  # the CT of each comes from DICOM + RTSTRUCT
        (root / "nifti" / patient / "CT_image.nii.gz").unlink()
    out, volumes = tmp_path / "crops", tmp_path / "volumes"
    result = preprocess("--input", root, "--modality", "all", "--out", out, "--export-volumes", volumes,
                        "--crop", 32, "--crops-per-lesion", 1)
    assert result.returncode == 0, result.stderr
    info = json.loads((out / "dataset.json").read_text())
    assert info["exported_volumes"]["volumes"] == 3 * len(info["splits"]["test"]) == 3
    with open(volumes / "volumes.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["patient"], row["modality"]) for row in rows] == [(info["splits"]["test"][0], m) for m in MODALITIES]
    assert sorted(p.name for p in volumes.iterdir()) == sorted(
        ["volumes.csv"] + [row["image"] for row in rows] + [row["label"] for row in rows])
    for row in rows:  # every patient of the collection holds STS_019's files
        assert row["read_from"] == ("dicom" if row["modality"] == "CT" else "nifti")
        image, header = read_nrrd(volumes / row["image"])
        label, label_header = read_nrrd(volumes / row["label"])
        np.testing.assert_array_equal(image, nifti_array(NIFTI / f"{row['modality']}_image.nii.gz"))
        np.testing.assert_array_equal(label, nifti_array(NIFTI / f"{row['modality']}_mask.nii.gz") > 0)
        assert header["space origin"] == label_header["space origin"]
        assert header["space directions"] == label_header["space directions"]


def test_export_split_val_writes_the_validation_patients_only(tmp_path):
    """--export-split val: the volumes to tune settings on (scripts/tune_scale_rule.py) are the val patients'."""
    root = collection(tmp_path, ["STS_002", "STS_003", "STS_004"])
    out, volumes = tmp_path / "crops", tmp_path / "volumes"
    result = preprocess("--input", root, "--modality", "ct", "--out", out, "--export-volumes", volumes,
                        "--export-split", "val", "--crop", 32, "--crops-per-lesion", 1)
    assert result.returncode == 0, result.stderr
    info = json.loads((out / "dataset.json").read_text())
    assert info["exported_volumes"]["split"] == "val"
    with open(volumes / "volumes.csv", newline="") as handle:
        exported = [row["patient"] for row in csv.DictReader(handle)]
    assert exported == info["splits"]["val"] and not set(exported) & set(info["splits"]["test"])
