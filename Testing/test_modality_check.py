"""The CT-only warning and the default model's tests (sdseg.modality_check) on real images: the sarcoma cut of
Testing/Data (patient STS_019 on CT, MR T1 and PET, as the IBSI data set stores them) with the configs of the shipped
models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sdseg.modality_check import label_map_warnings, looks_like_ct, looks_like_suv_pet, modality_warnings
from sdseg.volume_io import read_volume

REPO = Path(__file__).resolve().parents[1]
CUT = REPO / "Testing" / "Data" / "ibsi-sts" / "ibsi_validation" / "nifti" / "STS_019"


def shipped_config(name: str) -> dict:
    return json.loads((REPO / "Resources" / "Models" / name / "config.json").read_text())["config"]


@pytest.mark.parametrize("modality", ["CT", "MR_T1", "PET"])
def test_the_ct_model_is_warned_about_mr_and_pet_only_and_the_union_model_never(modality):
    array = read_volume(CUT / f"{modality}_image.nii.gz").array_kji
    warnings = modality_warnings(shipped_config("sdseg-union-ct"), array)
    assert len(warnings) == (0 if modality == "CT" else 1)
    assert all("trained on CT only" in warning for warning in warnings)
    assert modality_warnings(shipped_config("sdseg-union"), array) == ()


def test_a_ct_cropped_or_clipped_to_soft_tissue_is_not_warned_about():
    """A CT without air is still CT: its tumour's voxels alone (soft tissue, the lowest -65 HU) or the whole cut
    clipped to the model's own window (-160..240)."""
    ct = read_volume(CUT / "CT_image.nii.gz").array_kji
    tumour = ct[read_volume(CUT / "CT_mask.nii.gz").array_kji > 0]
    assert tumour.min() > -500  # no air there
    config = shipped_config("sdseg-union-ct")
    assert modality_warnings(config, tumour) == () and modality_warnings(config, np.clip(ct, -160, 240)) == ()


@pytest.mark.parametrize("modality", ["CT", "MR_T1", "PET"])
def test_only_the_ct_looks_like_ct_where_the_default_model_is_chosen(modality):
    """The default model's test (air or fat on at least 1 % of the voxels) on the real cut: its CT only."""
    assert looks_like_ct(read_volume(CUT / f"{modality}_image.nii.gz").array_kji) == (modality == "CT")


@pytest.mark.parametrize("modality", ["CT", "MR_T1", "PET"])
def test_only_the_pet_looks_like_a_pet_in_suv(modality):
    """On the real cut: the PET (SUV, fractional) only; the MR T1 (stored as float, integer-valued) and the CT not."""
    assert looks_like_suv_pet(read_volume(CUT / f"{modality}_image.nii.gz").array_kji) == (modality == "PET")


def test_a_pet_stored_as_counts_an_mr_and_noise_around_40_are_not_a_pet_in_suv():
    """The brain MR sample (int16), a PET in counts (whole numbers), a PET in SUV with a voxel far below zero, a
    z-scored image, positive noise around 40 (the self-test's phantom: fractional, but beyond SUV's range), an empty
    or all-NaN array are not; a PET in SUV is, also with a resampling's small undershoot below zero, NaN padding, or
    more voxels than are read (every k-th)."""
    sample = read_volume(REPO / "Resources" / "SampleData" / "sample.nrrd").array_kji
    rng = np.random.default_rng(0)
    suv = rng.gamma(2.0, 0.5, (4, 32, 32)).astype(np.float32)
    counts = np.round(suv * 1000)
    negative, undershoot, padded = suv.copy(), suv.copy(), suv.copy()
    negative[0, 0, 0] = -0.5
    undershoot[0, 0, :3] = -0.05
    padded[:, :4] = np.nan
    noise = np.abs(rng.normal(40.0, 10.0, (4, 32, 32)))
    for not_suv in (sample, counts, negative, rng.normal(0.0, 1.0, (4, 32, 32)), noise, np.zeros((0,)),
                    np.full((2, 2), np.nan)):
        assert not looks_like_suv_pet(not_suv)
    for pet in (suv, undershoot, padded, rng.gamma(2.0, 0.5, 3_000_001)):
        assert looks_like_suv_pet(pet)


def test_a_label_map_given_as_the_image_is_warned_about_and_real_images_are_not():
    """The bundled sample's tumour label (0/1), a label map of 16 labels (0..15, NaN-padded too) and a volume of one
    value are; the sample itself, the real cut's CT, MR T1 and PET, a PET in SUV, 17 labels, a few fractional
    values, a two-level phantom without 0 (150 / 20) and an empty array are not."""
    label = read_volume(REPO / "Resources" / "SampleData" / "sample_label.nrrd").array_kji
    (warning,) = label_map_warnings(label)
    assert warning.startswith("this volume has only 2 distinct values (0, 1): it looks like a label map")
    labels16 = np.arange(16, dtype=np.float32).repeat(4)
    (warning,) = label_map_warnings(labels16)
    assert "16 distinct values (0, 1, 2, 3, ...)" in warning
    assert label_map_warnings(np.concatenate([labels16, [np.nan] * 4])) == (warning,)
    assert label_map_warnings(np.full((2, 3), 7)) == ("every voxel of this volume has the value 7: there is nothing "
                                                      "to segment",)
    images = [read_volume(REPO / "Resources" / "SampleData" / "sample.nrrd").array_kji]
    images += [read_volume(CUT / f"{modality}_image.nii.gz").array_kji for modality in ("CT", "MR_T1", "PET")]
    images += [np.random.default_rng(0).gamma(2.0, 0.5, (4, 8, 8)), np.arange(17).repeat(4),
               np.array([0.0, 0.5, 1.0]), np.array([20, 150, 150, 20]), np.zeros((0,))]
    for image in images:
        assert label_map_warnings(image) == ()
