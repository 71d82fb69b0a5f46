"""The CT-only warning (sdseg.modality_check) on real images: the sarcoma cut of Testing/Data (patient STS_019 on CT,
MR T1 and PET, as the IBSI data set stores them) with the configs of the shipped models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sdseg.modality_check import modality_warnings
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
