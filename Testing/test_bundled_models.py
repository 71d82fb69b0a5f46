"""The models shipped in Resources/Models: complete model cards, small float16 weights, and segmentations of the
bundled sample volume (a real tumour of PyRadiomics patient brain1, held out from every bundled model's training
set) that clearly beat the trivial empty-mask prediction on the lesion's slices."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open

from sdseg import registry
from sdseg.checkpoint import load_model
from sdseg.evaluation import prompt_point
from sdseg.inference import segment_slices
from sdseg.metrics import dice
from sdseg.propagation import Prompt, propagate
from sdseg.volume_io import choose_slice_axis, read_volume

REPO = Path(__file__).resolve().parents[1]
SAMPLE_DIR = REPO / "Resources" / "SampleData"
BUNDLED = sorted(path.parent for path in registry.bundled_models_dir().glob("*/config.json"))
MAX_WEIGHTS_MB = 16
SAMPLES = 4
MIN_LESION_DICE = 0.5  # the empty mask scores 0 on every lesion slice
SAMPLE_PATIENT = "brain1"  # Resources/SampleData/README.md; test_data_sources.py checks its voxels against brain1


def test_the_default_model_is_bundled():
    assert registry.DEFAULT_MODEL in [folder.name for folder in BUNDLED]


@pytest.mark.parametrize("folder", BUNDLED, ids=[folder.name for folder in BUNDLED])
def test_bundled_model_card_and_weights(folder):
    card = (folder / "README.md").read_text(encoding="utf-8")
    for required in ("| data set |", "| command |", "| steps |", "| training time |", "| hardware |",
                     "## Intended use", "## Evaluation of these weights", "| empty mask |", "parameters"):
        assert required in card, f"{folder.name}/README.md lacks {required!r}"
    weights = folder / "model.safetensors"
    assert weights.stat().st_size < MAX_WEIGHTS_MB * 2**20
    with safe_open(str(weights), framework="pt") as tensors:
        dtypes = {tensors.get_slice(name).get_dtype() for name in tensors.keys()}
    assert "F32" not in dtypes and "F16" in dtypes
    assert json.loads((folder / "config.json").read_text())["kind"] == load_model(folder).kind


@pytest.mark.parametrize("folder", BUNDLED, ids=[folder.name for folder in BUNDLED])
def test_bundled_model_never_saw_the_sample_patient(folder):
    """The quality test below is on held-out data: the sample's patient is in the test split of every data set
    the model was trained on, never in a train or val split."""
    records = load_model(folder).config["training_data"]
    assert records, f"{folder.name} does not record its training data"
    for record in records:
        splits = record["splits"]
        assert SAMPLE_PATIENT in splits["test"], record
        assert SAMPLE_PATIENT not in splits["train"] + splits["val"], record


@pytest.mark.parametrize("folder", BUNDLED, ids=[folder.name for folder in BUNDLED])
def test_bundled_model_segments_the_held_out_sample_lesion(folder):
    volume = read_volume(SAMPLE_DIR / "sample.nrrd")
    truth = read_volume(SAMPLE_DIR / "sample_label.nrrd").array_kji > 0
    axis = choose_slice_axis(volume.ijk_to_ras, shape_kji=volume.array_kji.shape)
    assert axis == 2
    lesion = np.flatnonzero(truth.any(axis=(1, 2)))
    k0, k1 = int(lesion[0]), int(lesion[-1]) + 1
    shape = volume.array_kji.shape
    model = load_model(folder)
    results = list(segment_slices(model, volume.array_kji, [0, 0, k0, shape[2], shape[1], k1], axis, SAMPLES,
                                  seed=0, batch_size=16))
    assert [r.index for r in results] == list(range(k0, k1))
    scores = [dice(r.consensus, truth[r.index]) for r in results]
    assert np.mean(scores) >= MIN_LESION_DICE, f"{folder.name}: Dice per lesion slice {np.round(scores, 2)}"
    assert all(r.samples.shape == (SAMPLES,) + shape[1:] for r in results)


# A click must do better than the whole-volume mode's worst failure (lesions drawn on tumour-free slices) and clearly
# better than nothing; measured at N = 4: Dice 0.697 (ambiguous, 5 steps) and 0.658 (sdseg-small), 0 voxels outside.
MIN_PROMPT_DICE = 0.6
MAX_VOXELS_OUTSIDE_THE_TUMOUR_SLICES = 100
HEALTHY_POINT_IJK = (20.0, 80.0, 5.0)  # tumour-free brain, far from the tumour


def click(model, volume, point):
    shape = volume.array_kji.shape
    consensus = np.zeros(shape, dtype=bool)
    for result in propagate(model, volume.array_kji, volume.ijk_to_ras, 2, [Prompt(point_ijk=point)],
                            [0, 0, 0, shape[2], shape[1], shape[0]], SAMPLES, seed=0):
        i0, j0, k0, i1, j1, k1 = result.box_ijk
        consensus[k0, j0:j1, i0:i1] = result.consensus > 0
    return consensus


@pytest.mark.parametrize("folder", BUNDLED, ids=[folder.name for folder in BUNDLED])
def test_a_click_on_the_held_out_tumour_segments_it_and_nothing_elsewhere(folder):
    volume = read_volume(SAMPLE_DIR / "sample.nrrd")
    truth = read_volume(SAMPLE_DIR / "sample_label.nrrd").array_kji > 0
    model = load_model(folder)
    consensus = click(model, volume, prompt_point(truth))
    tumour_slices = truth.any(axis=(1, 2))
    assert dice(consensus, truth) >= MIN_PROMPT_DICE
    assert consensus[~tumour_slices].sum() <= MAX_VOXELS_OUTSIDE_THE_TUMOUR_SLICES
    assert not click(model, volume, HEALTHY_POINT_IJK).any(), "a lesion found where there is none"
