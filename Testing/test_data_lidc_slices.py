"""`sdseg preprocess --source lidc-slices` on real Pulmoseg LIDC-IDRI crops (Testing/Data/lidc-slices, README there):
the files are read back with an independent PNG reader (Pillow) and compared with what the data set holds."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sdseg.data.dataset import SPLITS, CropsDataset
from sdseg.data.sources import get_source

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "Testing" / "Data" / "lidc-slices"
# the fixture's crops: (patient, nodule folder, slice numbers); slice 4 of 0011 and slice 0 of 0055 have no rater
CROPS = {"LIDC-IDRI-0011": ("nodule-0", (2, 3, 4)), "LIDC-IDRI-0055": ("nodule-0", (0, 1, 4))}


def png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path), dtype=np.float32)


def fixture_arrays(patient: str, number: int) -> tuple[np.ndarray, np.ndarray]:
    """(image 0..255, masks (4, H, W) bool) of a fixture crop, read with Pillow."""
    folder = FIXTURE / patient / CROPS[patient][0]
    return (png(folder / "images" / f"slice-{number}.png"),
            np.stack([png(folder / f"mask-{r}" / f"slice-{number}.png") > 127 for r in range(4)]))


def preprocess(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sdseg.cli", "preprocess", "--source", "lidc-slices", *map(str, args)],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1"))


def crops_of(out: Path) -> dict[str, dict]:
    """{file stem: arrays} of every crop of a data set, with its split."""
    found = {}
    for split in SPLITS:
        for path in sorted((out / split).glob("*.npz")):
            with np.load(path) as data:
                found[path.stem] = {key: data[key] for key in data.files} | {"split": split}
    return found


def split_file(out: Path) -> dict[str, str]:
    with open(out / "splits.csv", newline="") as handle:
        return {row["patient"]: row["split"] for row in csv.DictReader(handle)}


def test_loader_gives_each_slice_with_its_four_raters_masks_empty_ones_included():
    refs = get_source("lidc-slices").load(FIXTURE)
    assert [ref.patient for ref in refs] == ["LIDC-IDRI-0011"] * 3 + ["LIDC-IDRI-0055"] * 3
    cases = [ref.read() for ref in refs]
    for case, (patient, number) in zip(cases, [(p, n) for p, (_, ns) in CROPS.items() for n in ns]):
        image, masks = fixture_arrays(patient, number)
        assert case.whole_image_roi and case.image.shape == (1, 128, 128) and case.masks.shape == (4, 1, 128, 128)
        np.testing.assert_array_equal(case.image[0], image)
        np.testing.assert_array_equal(case.masks[:, 0], masks)
    assert [int(c.masks.any(axis=(1, 2, 3)).sum()) for c in cases] == [4, 4, 0, 0, 2, 1]


def test_native_size_crops_are_the_pngs_with_raters_drawn_and_a_patient_split_file(tmp_path):
    out = tmp_path / "lidc128"
    result = preprocess("--input", FIXTURE, "--out", out, "--size", 128)
    assert result.returncode == 0, result.stderr
    info = json.loads((out / "dataset.json").read_text())
    assert info["n_raters"] == 4 and info["image_size"] == 128 and not info["synthetic"]
    assert info["preprocessing"] == {"normalization": "ct_window", "window": [0.0, 255.0]}
    assert "CC BY 3.0" in info["licence"] and "Armato" in info["licence"]
    crops = crops_of(out)
    assert len(crops) == 6 and sum(info["counts"].values()) == 6
    split_of = split_file(out)
    assert sorted(split_of) == sorted(CROPS)
    for patient, split in split_of.items():
        assert patient in info["splits"][split]
    for patient, (_, numbers) in CROPS.items():
        for number in numbers:
            crop = crops[f"{patient}_n00_s{number:03d}"]
            image, masks = fixture_arrays(patient, number)
            assert crop["split"] == split_of[patient] and str(crop["patient"]) == patient
            np.testing.assert_allclose(crop["image"][0], image / 255 * 2 - 1, atol=1e-6)
            np.testing.assert_array_equal(crop["masks"], masks)  # all four, the empty ones too
            assert int(crop["raters_drawn"]) == int(masks.any(axis=(1, 2)).sum())
            for side, other in enumerate((number - 1, number + 1)):  # the raters' union of the nodule's slice
                expected = fixture_arrays(patient, other)[1].any(axis=0) if other in numbers else 0 * masks[0]
                np.testing.assert_array_equal(crop["neighbours"][side], expected)
    histogram = {n: sum(info["raters_drawn"][s][str(n)] for s in SPLITS) for n in range(5)}
    assert histogram == {0: 2, 1: 1, 2: 1, 3: 0, 4: 2}
    assert info["reserved"] == {"rule": "LIDC-IDRI-0901 and above", "left_out": 0, "included": False}


def test_size_64_set_reads_as_a_multirater_data_set_and_counts_the_stored_masks(tmp_path):
    out = tmp_path / "lidc64"
    assert preprocess("--input", FIXTURE, "--out", out, "--size", 64).returncode == 0
    for split in ("train", "test"):
        dataset = CropsDataset(out, split)
        for index in range(len(dataset)):
            image, masks = dataset[index]
            assert image.shape == (1, 64, 64) and masks.shape == (4, 64, 64)
            assert -1 <= float(image.min()) and float(image.max()) <= 1
            with np.load(dataset.files[index]) as data:
                assert int(data["raters_drawn"]) == int(masks.flatten(1).any(dim=1).sum())


def test_reserved_patients_are_left_out_and_an_input_of_only_reserved_ones_is_refused_in_one_line(tmp_path):
    collection = tmp_path / "LIDC-IDRI-slices"
    shutil.copytree(FIXTURE, collection)
    # a stand-in for a reserved patient: a copy of an unreserved one's files under a reserved number (no reserved
    # patient's data is ever read, not even by the tests)
    shutil.copytree(FIXTURE / "LIDC-IDRI-0011", collection / "LIDC-IDRI-0950")
    out = tmp_path / "kept"
    result = preprocess("--input", collection, "--out", out, "--size", 32)
    assert result.returncode == 0, result.stderr
    assert "left out 1 reserved patient(s) (LIDC-IDRI-0901 and above)" in result.stdout
    info = json.loads((out / "dataset.json").read_text())
    assert info["reserved"]["left_out"] == 1
    assert "LIDC-IDRI-0950" not in (out / "splits.csv").read_text()
    assert not any("LIDC-IDRI-0950" in patients for patients in info["splits"].values())
    assert {str(crop["patient"]) for crop in crops_of(out).values()} == set(CROPS)

    only_reserved = tmp_path / "only"
    (only_reserved / "LIDC-IDRI-slices").mkdir(parents=True)
    shutil.move(collection / "LIDC-IDRI-0950", only_reserved / "LIDC-IDRI-slices" / "LIDC-IDRI-0950")
    for given in (only_reserved / "LIDC-IDRI-slices", only_reserved / "LIDC-IDRI-slices" / "LIDC-IDRI-0950"):
        refused = tmp_path / "refused"
        result = preprocess("--input", given, "--out", refused)
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "LIDC-IDRI-0950 is reserved" in lines[0] and "--include-reserved" in lines[0]
        assert not refused.exists()

    overridden = tmp_path / "overridden"
    result = preprocess("--input", only_reserved / "LIDC-IDRI-slices", "--out", overridden, "--include-reserved")
    assert result.returncode == 0, result.stderr
    assert split_file(overridden) == {"LIDC-IDRI-0950": "train"}


@pytest.mark.parametrize("option", [["--negatives", "0.2"], ["--multirater", "4"]])
def test_options_of_other_sets_are_refused_in_one_line(tmp_path, option):
    result = preprocess("--input", FIXTURE, "--out", tmp_path / "x", *option)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert f"leave out {option[0]}" in result.stderr


def test_train_and_evaluate_run_unchanged_on_the_set(tmp_path):
    data = tmp_path / "lidc32"
    assert preprocess("--input", FIXTURE, "--out", data, "--size", 32).returncode == 0
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    model = tmp_path / "model"
    train = subprocess.run([sys.executable, "-m", "sdseg.cli", "train", "--model", "ambiguous", "--preset", "tiny",
                            "--data", data, "--out", model, "--steps", "2", "--batch-size", "2",
                            "--sample-every", "2"], capture_output=True, text=True, cwd=tmp_path, timeout=600, env=env)
    assert train.returncode == 0, train.stderr[-3000:]
    evaluation = tmp_path / "evaluation"
    run = subprocess.run([sys.executable, "-m", "sdseg.cli", "evaluate", "--model", model, "--data", data,
                          "--samples", "1,2", "--steps", "2", "--out", evaluation], capture_output=True, text=True,
                         cwd=tmp_path, timeout=600, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert list(evaluation.glob("*.json")), "evaluate writes its metrics"
