"""sdseg.registry (model folders on $SDSEG_MODELS_PATH and bundled) and sdseg.models (kind -> class)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from slicerlib_testing import CLI_TIMEOUT_S
import torch
from safetensors.torch import save_file

from sdseg import models, registry
from sdseg.checkpoint import load_model, save_model
from sdseg.lesion_length import LengthRule
from sdseg.scale_search import ScaleRule
from sdseg.volume_io import read_volume

REPO = Path(__file__).resolve().parent.parent


def write_model_folder(parent: Path, name: str, kind="ambiguous", card=None, description=None) -> Path:
    """A model folder written without sdseg.checkpoint (plain json + safetensors)."""
    folder = parent / name
    folder.mkdir(parents=True)
    config = {"image_size": 32} if description is None else {"image_size": 32, "description": description}
    (folder / "config.json").write_text(json.dumps(
        {"format": "sdseg-model", "format_version": 1, "kind": kind, "config": config}))
    save_file({}, str(folder / "model.safetensors"))
    if card is not None:
        (folder / "README.md").write_text(card)
    return folder


@pytest.fixture
def two_dirs(tmp_path, monkeypatch):
    first, second = tmp_path / "first", tmp_path / "second"
    write_model_folder(first, "lesions", card="\n# Lesion model (small)\n\nTrained on ...\n")
    write_model_folder(first, "segdiff-demo", kind="segdiff", description="SegDiff demo weights")
    write_model_folder(second, "lesions", kind="sdseg", card="# Shadowed\n")
    write_model_folder(second, "nocard", kind="sdseg")
    monkeypatch.setenv(registry.MODELS_PATH_ENV, os.pathsep.join([str(first), "", str(second)]))
    bundled = tmp_path / "bundled"  # keep the shipped models out of these listings
    bundled.mkdir()
    monkeypatch.setattr(registry, "bundled_models_dir", lambda: bundled)
    return first, second


def test_models_dirs_order(two_dirs):
    first, second = two_dirs
    dirs = registry.models_dirs()
    assert dirs[:2] == [first, second]
    assert dirs[2] == registry.bundled_models_dir() and len(dirs) == 3


def test_bundled_dir_is_resources_models(monkeypatch):
    monkeypatch.delenv(registry.MODELS_PATH_ENV, raising=False)
    bundled = registry.bundled_models_dir()
    assert registry.models_dirs() == [bundled]
    assert bundled.name == "Models" and bundled.parent.name in ("Resources", "bundled")
    if bundled.parent.name == "Resources":
        assert bundled == REPO / "Resources" / "Models"


def test_list_models_first_name_wins_and_descriptions(two_dirs):
    first, second = two_dirs
    listed = {m["name"]: m for m in registry.list_models()}
    assert {"lesions", "segdiff-demo", "nocard"} <= listed.keys()
    assert listed["lesions"] == {"name": "lesions", "kind": "ambiguous", "path": str(first / "lesions"),
                                 "description": "Lesion model (small)",
                                 "card": "\n# Lesion model (small)\n\nTrained on ...\n", "default": False,
                                 "default_for_ct": False, "default_for_pet": False}
    assert listed["segdiff-demo"]["description"] == "SegDiff demo weights"
    assert listed["nocard"]["description"] == "" and listed["nocard"]["card"] == ""
    json.dumps(registry.list_models())  # travels in the worker's hello message


def test_invalid_folders_are_skipped_with_a_warning(two_dirs, caplog):
    first, _ = two_dirs
    write_model_folder(first, "broken")
    (first / "broken" / "config.json").write_text("{not json")
    write_model_folder(first, "noweights")
    (first / "noweights" / "model.safetensors").unlink()
    (first / "not-a-model").mkdir()
    with caplog.at_level(logging.WARNING, logger="sdseg.registry"):
        names = [m["name"] for m in registry.list_models()]
    assert "broken" not in names and "noweights" not in names and "not-a-model" not in names
    assert str(first / "broken" / "config.json") in caplog.text
    assert str(first / "noweights" / "model.safetensors") in caplog.text


def test_resolve_model_by_name_or_folder(two_dirs, monkeypatch):
    first, second = two_dirs
    assert registry.resolve_model("lesions") == first / "lesions"
    assert registry.resolve_model("nocard") == second / "nocard"
    assert registry.resolve_model(second / "lesions") == second / "lesions"
    monkeypatch.chdir(second)
    assert registry.resolve_model(os.path.join(".", "lesions")) == second / "lesions"


def test_unknown_model_lists_available_names(two_dirs, tmp_path):
    with pytest.raises(registry.UnknownModelError) as error:
        registry.resolve_model("nonexistent")
    message = str(error.value)
    assert "'nonexistent'" in message and "Available models: lesions, segdiff-demo, nocard." in message
    assert registry.MODELS_PATH_ENV in message
    with pytest.raises(registry.UnknownModelError):
        registry.resolve_model(tmp_path / "missing-folder")


def test_the_default_models_are_bundled_and_marked(monkeypatch):
    monkeypatch.delenv(registry.MODELS_PATH_ENV, raising=False)
    models = registry.list_models()
    assert [m["name"] for m in models if m["default"]] == [registry.DEFAULT_MODEL]
    assert [m["name"] for m in models if m["default_for_ct"]] == [registry.DEFAULT_CT_MODEL]
    assert [m["name"] for m in models if m["default_for_pet"]] == [registry.DEFAULT_PET_MODEL]


def test_the_default_model_of_a_volume_is_the_ct_one_for_hounsfield_units_the_pet_one_for_suv(monkeypatch):
    """The CT model where at least 1 % of the voxels are air or fat (<= -100 HU; sdseg.modality_check), the PET model
    on a PET in SUV; the general one on an MR (no negative value, whole numbers: the bundled brain MR sample among
    them), on an MR with a few negative voxels from an overshooting interpolation, on a z-scored image, and on a CT
    cut inside soft tissue (-65 HU at least: not clearly CT)."""
    monkeypatch.delenv(registry.MODELS_PATH_ENV, raising=False)
    sample = read_volume(REPO / "Resources" / "SampleData" / "sample.nrrd").array_kji
    overshoot = sample.astype(np.float32)
    overshoot.flat[:20] = -150.0  # 20 of 230,400 voxels
    ct = np.full((4, 10, 10), 40.0)
    ct[:, :, :1] = -1000.0  # 10 % air
    assert registry.default_model_name(ct) == registry.DEFAULT_CT_MODEL
    assert registry.default_model_name(ct.astype(np.int16)) == registry.DEFAULT_CT_MODEL
    rng = np.random.default_rng(0)
    for not_ct in (sample, overshoot, rng.normal(0.0, 1.0, (4, 10, 10)), np.array([-65, 30], dtype=np.int16),
                   np.zeros((2, 2))):
        assert registry.default_model_name(not_ct) == registry.DEFAULT_MODEL
        assert registry.default_model_name(not_ct, prompted=False) == registry.DEFAULT_WHOLE_VOLUME_MODEL
    assert registry.default_model_name(ct, prompted=False) == registry.DEFAULT_CT_MODEL  # as before: unchanged
    assert registry.default_model_name(rng.gamma(2.0, 0.5, (4, 10, 10))) == registry.DEFAULT_PET_MODEL


def test_the_general_default_serves_ct_and_pet_where_their_models_are_not_installed(two_dirs):
    """A models folder without the CT or PET model (e.g. a server's, pruned): a CT or PET gets DEFAULT_MODEL, not an
    error."""
    ct, pet = np.full((4, 10, 10), -1000.0), np.full((4, 10, 10), 1.5)
    assert registry.default_model_name(ct) == registry.default_model_name(pet) == registry.DEFAULT_MODEL
    write_model_folder(two_dirs[1], registry.DEFAULT_CT_MODEL)
    write_model_folder(two_dirs[1], registry.DEFAULT_PET_MODEL)
    assert registry.default_model_name(ct) == registry.DEFAULT_CT_MODEL
    assert registry.default_model_name(pet) == registry.DEFAULT_PET_MODEL


def test_sdseg_models_command_prints_a_table(two_dirs, tmp_path):
    first, second = two_dirs
    write_model_folder(second, registry.DEFAULT_MODEL)
    write_model_folder(second, registry.DEFAULT_CT_MODEL)
    write_model_folder(second, registry.DEFAULT_PET_MODEL)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, "-m", "sdseg.cli", "models"], capture_output=True, text=True,
                            env=env, cwd=tmp_path, timeout=CLI_TIMEOUT_S)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["NAME", "KIND", "DESCRIPTION", "PATH"]
    rows = {line.split()[0]: line for line in lines[1:]}
    default = rows[registry.DEFAULT_MODEL]
    assert "(default)" in default and str(second / registry.DEFAULT_MODEL) in default
    assert "(default for CT)" in rows[registry.DEFAULT_CT_MODEL] and "(default" not in rows["lesions"]
    assert "(default for PET)" in rows[registry.DEFAULT_PET_MODEL]
    assert "Lesion model (small)" in rows["lesions"] and str(first / "lesions") in rows["lesions"]


def test_sdseg_models_command_without_models_says_what_to_do(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(registry.MODELS_PATH_ENV, str(tmp_path / "empty"))
    monkeypatch.setattr(registry, "bundled_models_dir", lambda: tmp_path / "no-bundled-models")
    assert registry.main([]) == 0
    output = capsys.readouterr().out
    assert "No models found" in output and "SDSEG_MODELS_PATH" in output


def test_listing_models_imports_no_model_code(two_dirs):
    """The worker's hello lists models; that must not import the networks (or diffusers)."""
    code = ("import sys, sdseg.registry; assert len(sdseg.registry.list_models()) >= 3; "
            "print(sorted(m for m in sys.modules if m.startswith('diffusers') or m in "
            "('sdseg.models.ambiguous', 'sdseg.models.sdseg_ldm', 'sdseg.models.segdiff')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=CLI_TIMEOUT_S)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_unknown_kind_lists_known_kinds():
    with pytest.raises(ValueError, match="known kinds: ambiguous, sdseg, segdiff, threshold, unet"):
        models.build_model("mystery")
    with pytest.raises(ValueError, match="unknown model kind 'mystery'"):
        models.model_from_config("mystery", {})


@pytest.mark.parametrize("kind", sorted(set(models.MODEL_CLASSES) - models.BASELINE_KINDS))
def test_steps_config_key_is_the_default_step_count_of_sample(kind):
    """What scripts/bundle_model.py --steps sets: sample(steps=None) runs config[steps_config_key] steps."""
    if models.model_class(kind).deterministic:
        pytest.skip(f"the {kind} model draws no samples: it has no sampling steps")
    torch.manual_seed(0)
    model = models.build_model(kind, "tiny").eval()
    assert isinstance(model.config[model.steps_config_key], int)
    model.config[model.steps_config_key] = 2
    image = torch.zeros(1, model.config["image_channels"], model.config["image_size"], model.config["image_size"])
    default = model.sample(image, 1, generator=torch.Generator().manual_seed(1))
    two, three = (model.sample(image, 1, steps=k, generator=torch.Generator().manual_seed(1)) for k in (2, 3))
    assert torch.equal(default, two) and not torch.equal(default, three)


@pytest.mark.parametrize("kind", sorted(set(models.MODEL_CLASSES) - models.BASELINE_KINDS))
def test_bundle_model_stores_the_tuned_propagation_rules_in_the_shipped_config(kind, tmp_path):
    """scripts/bundle_model.py --rules: the rule-tuning scripts' JSON lands in config["propagation"], where the
    propagation reads it (the shipped model's length bound); a misspelt rule is refused. --modalities is recorded
    and the bundled model of every trainable kind loads with it (the unet refused it once); a data set recorded twice (by
    older training code) is recorded once."""
    trained = tmp_path / "trained"
    record = {"data_set": "crops", "splits": {"train": ["p1"], "val": ["p2"], "test": ["p3"]}}
    save_model(models.build_model(kind, "tiny", training_data=[record, record]), trained, card="# tiny\nline\n")
    length = tmp_path / "length.json"
    length.write_text(json.dumps({"length_rule": {"max_diameters": 0.65}}))
    scale = tmp_path / "scale.json"
    scale.write_text(json.dumps({"scale_rule": {"min_score": 0.7}}))
    steps = [] if models.model_class(kind).deterministic else ["--steps", "2"]
    command = [sys.executable, str(REPO / "scripts" / "bundle_model.py"), str(trained), "tiny-bundled", "--summary",
               "a tiny model", *steps, "--modalities", "CT", "--into", str(tmp_path / "models"), "--rules"]
    result = subprocess.run(command + [str(scale), str(length)], capture_output=True, text=True,
                            timeout=CLI_TIMEOUT_S)
    assert result.returncode == 0, result.stderr
    bundled = load_model(tmp_path / "models" / "tiny-bundled")
    config = bundled.config
    assert LengthRule.of_config(config) == LengthRule(max_diameters=0.65)
    assert ScaleRule.of_config(config).min_score == 0.7
    assert bundled.deterministic or config[bundled.steps_config_key] == 2
    assert config["modalities"] == ["CT"] and config["training_data"] == [record]  # one record per data set
    misspelt = tmp_path / "misspelt.json"
    misspelt.write_text(json.dumps({"lenght_rule": {"max_diameters": 0.65}}))
    result = subprocess.run(command + [str(misspelt)], capture_output=True, text=True, timeout=CLI_TIMEOUT_S)
    assert result.returncode == 2 and "unknown rule 'lenght_rule'" in result.stderr and "Traceback" not in result.stderr
