"""The reserved patients (sdseg.data.reserved): LIDC-IDRI-0901 and above, STS_041 .. STS_051. The refusal of each
source's `sdseg preprocess` in one line and split files without them: Testing/test_data_lidc_slices.py and
Testing/test_data_ibsi_sts.py; here the boundaries and the other way LIDC crops reach a data set (--add-train)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from sdseg.data.cases import SourceError
from sdseg.data.reserved import is_reserved, unreserved
from test_data_lidc_slices import FIXTURE as LIDC_FIXTURE
from test_data_sources import lidc_like_pickle, run_preprocess


@pytest.mark.parametrize("patient, reserved", [
    ("LIDC-IDRI-0001", False), ("LIDC-IDRI-0900", False), ("LIDC-IDRI-0901", True), ("LIDC-IDRI-1012", True),
    ("STS_001", False), ("STS_040", False), ("STS_041", True), ("STS_051", True), ("STS_052", False),
    ("brain1", False), ("LIDC-IDRI-0901-x", False)])
def test_reserved_ranges(patient, reserved):
    assert is_reserved(patient) is reserved


def test_unreserved_keeps_the_others_and_refuses_only_reserved_in_one_line():
    assert unreserved(["STS_041", "STS_002", "STS_001"], "STS", False, "here") == (["STS_001", "STS_002"],
                                                                                   ["STS_041"])
    assert unreserved(["STS_041", "STS_001"], "STS", True, "here") == (["STS_001", "STS_041"], [])
    with pytest.raises(SourceError) as error:
        unreserved(["LIDC-IDRI-0901", "LIDC-IDRI-0950"], "LIDC-IDRI", False, "/data")
    message = str(error.value)
    assert "\n" not in message and message.startswith("/data: LIDC-IDRI-0901, LIDC-IDRI-0950 are reserved")
    assert "LIDC-IDRI-0901 and above" in message and "--include-reserved" in message


def test_lidc_crops_added_to_another_set_leave_the_reserved_patients_out(tmp_path):
    lidc = tmp_path / "LIDC-IDRI-slices"
    shutil.copytree(LIDC_FIXTURE, lidc)
    shutil.copytree(LIDC_FIXTURE / "LIDC-IDRI-0055", lidc / "LIDC-IDRI-0950")  # a stand-in under a reserved id
    pickle = tmp_path / "crops.pickle"
    lidc_like_pickle(pickle, patients=3)  # LIDC-IDRI-0001 .. 0003, four raters as the Pulmoseg crops
    out = tmp_path / "with-lidc"
    result = run_preprocess("--source", "lidc-pickle", "--input", pickle, "--out", out, "--size", 32,
                            "--add-train", f"lidc-slices={lidc}")
    assert result.returncode == 0, result.stderr
    info = json.loads((out / "dataset.json").read_text())
    added = info["extra_train_sources"][0]
    assert added["source"] == "lidc-slices" and added["patients"] == ["LIDC-IDRI-0011", "LIDC-IDRI-0055"]
    assert "LIDC-IDRI-0950" not in json.dumps(info)
    patients = set()
    for path in out.rglob("*.npz"):
        with np.load(path) as crop:
            patients.add(str(crop["patient"]))
    assert "LIDC-IDRI-0950" not in patients and {"LIDC-IDRI-0011", "LIDC-IDRI-0055"} <= patients


def test_four_rater_lidc_crops_join_a_one_rater_set_for_training(tmp_path):
    """--add-train may bring another number of raters (LIDC's four beside the sarcoma's one): its crops go to the
    train split only, the data set keeps its own source's count, and the training batches take both."""
    import torch

    from sdseg.data.batches import InMemoryCrops
    from sdseg.data.dataset import CropsDataset
    from test_data_ibsi_sts import FIXTURE as STS_FIXTURE

    out = tmp_path / "union"
    result = run_preprocess("--source", "ibsi-sts", "--input", STS_FIXTURE, "--modality", "ct", "--out", out,
                            "--size", 32, "--add-train", f"lidc-slices={LIDC_FIXTURE}")
    assert result.returncode == 0, result.stderr
    info = json.loads((out / "dataset.json").read_text())
    assert info["n_raters"] == 1 and info["extra_train_sources"][0]["source"] == "lidc-slices"
    raters = {}
    for path in out.rglob("*.npz"):
        with np.load(path) as crop:
            raters.setdefault(path.parent.name, set()).add(crop["masks"].shape[0])
    assert raters["train"] == {1, 4} and all(counts == {1} for split, counts in raters.items() if split != "train")
    crops = InMemoryCrops(CropsDataset(out, "train"), torch.device("cpu"))
    images, masks = crops.batch(list(range(len(crops))), torch.Generator().manual_seed(0))[:2]
    assert images.shape[0] == masks.shape[0] == len(crops) and set(crops.rater_counts.tolist()) == {1, 4}
