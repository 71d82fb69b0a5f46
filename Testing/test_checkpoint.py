"""sdseg.checkpoint: bit-exact round trips (toy model and the real tiny models), every failure as CheckpointError
naming the file, pickles refused without being unpickled."""

from __future__ import annotations

import importlib
import json
import pathlib
import pickle
import struct

import pytest
import torch

from sdseg.checkpoint import CheckpointError, load_model, save_model
from sdseg.models import MODEL_CLASSES, build_model
from sdseg.models.base import SegmentationDiffusionModel

REAL_MODELS = {"ambiguous": ("sdseg.models.ambiguous", "AmbiguousDiffusionModel"),
               "sdseg": ("sdseg.models.sdseg_ldm", "SDSegModel"),
               "segdiff": ("sdseg.models.segdiff", "SegDiffModel"),
               "threshold": ("sdseg.models.threshold", "IntensityThresholdModel"),
               "unet": ("sdseg.models.unet", "SegmentationUNet")}


class ToyModel(SegmentationDiffusionModel):
    """Small module with the awkward cases: a non-contiguous buffer, float64/int64 buffers, tied weights."""

    kind = "toy"

    def __init__(self, config):
        super().__init__(config)
        channels = config["channels"]
        self.conv = torch.nn.Conv2d(1, channels, 3)
        self.linear = torch.nn.Linear(channels, channels)
        self.tied = self.linear  # same parameters under two names
        self.register_buffer("transposed", torch.randn(channels, 5).t())  # non-contiguous
        self.register_buffer("scale", torch.randn(channels, dtype=torch.float64))
        self.register_buffer("counts", torch.randint(0, 1000, (channels,)))

    @classmethod
    def preset(cls, name, **overrides):
        return {"channels": {"tiny": 3, "small": 4}[name], "image_size": 8, **overrides}


@pytest.fixture
def toy_kind(monkeypatch):
    monkeypatch.setitem(MODEL_CLASSES, "toy", ToyModel)


@pytest.fixture
def saved_toy(toy_kind, tmp_path):
    torch.manual_seed(0)
    model = build_model("toy", "tiny")
    folder = save_model(model, tmp_path / "toy", card="# Toy model\nFor tests.\n")
    return model, folder


def assert_same_weights(original, loaded):
    expected, actual = original.state_dict(), loaded.state_dict()
    assert expected.keys() == actual.keys()
    for name, tensor in expected.items():
        assert actual[name].dtype == tensor.dtype, name
        assert torch.equal(actual[name], tensor), name


def test_round_trip_is_bit_exact(saved_toy):
    model, folder = saved_toy
    loaded = load_model(folder)
    assert type(loaded) is ToyModel and not loaded.training
    assert loaded.config == model.config
    assert_same_weights(model, loaded)
    assert loaded.tied.weight is loaded.linear.weight
    assert json.loads((folder / "config.json").read_text()) == {
        "format": "sdseg-model", "format_version": 1, "kind": "toy", "config": {"channels": 3, "image_size": 8}}
    assert (folder / "README.md").read_text() == "# Toy model\nFor tests.\n"
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]


def test_weights_file_read_back_by_an_independent_parser(saved_toy):
    """Parse the safetensors layout by hand (8-byte header length, JSON header, raw little-endian bytes)."""
    model, folder = saved_toy
    data = (folder / "model.safetensors").read_bytes()
    (header_length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + header_length])
    body = data[8 + header_length:]
    entry = header["transposed"]
    assert entry["dtype"] == "F32" and entry["shape"] == [5, 3]
    start, end = entry["data_offsets"]
    assert body[start:end] == model.transposed.contiguous().numpy().tobytes()
    assert header["scale"]["dtype"] == "F64" and header["counts"]["dtype"] == "I64"


def test_card_none_keeps_existing_card(saved_toy):
    model, folder = saved_toy
    save_model(model, folder)
    assert (folder / "README.md").read_text().startswith("# Toy model")


def corrupt_truncate(folder):
    path = folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-40])
    return path, "corrupt or truncated"


def corrupt_flip_weight_byte(folder):
    path = folder / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # inside the tensor data, header still valid
    path.write_bytes(bytes(data))
    return path, "checksum"


def corrupt_garbage_weights(folder):
    path = folder / "model.safetensors"
    path.write_bytes(b"not a safetensors file at all")
    return path, "corrupt or truncated"


def remove_weights(folder):
    path = folder / "model.safetensors"
    path.unlink()
    return path, "missing"


def remove_config(folder):
    path = folder / "config.json"
    path.unlink()
    return path, "missing"


def invalid_json(folder):
    path = folder / "config.json"
    path.write_text('{"format": "sdseg-model", ')
    return path, "not valid JSON"


def edit_config(**changes):
    def corrupt(folder):
        path = folder / "config.json"
        content = json.loads(path.read_text())
        content.update(changes)
        path.write_text(json.dumps(content))
        return path, {"format": "not an SDSegSlicer model", "format_version": "not supported",
                      "kind": "unknown model kind", "config": "must be a JSON object"}[next(iter(changes))]
    return corrupt


def change_channels(folder):
    """config.json describes a wider model than the weights: every shape differs."""
    path = folder / "config.json"
    content = json.loads(path.read_text())
    content["config"]["channels"] = 4
    path.write_text(json.dumps(content))
    return folder / "model.safetensors", "mis-shaped tensors: conv.bias (3,) != (4,)"


def config_rejected_by_constructor(folder):
    path = folder / "config.json"
    content = json.loads(path.read_text())
    del content["config"]["channels"]
    path.write_text(json.dumps(content))
    return path, "model config is invalid"


def drop_and_add_tensor(folder):
    from safetensors.torch import load_file, save_file
    path = folder / "model.safetensors"
    tensors = load_file(path)
    del tensors["counts"]
    tensors["extra.weight"] = torch.zeros(2)
    save_file(tensors, str(path))  # written by another tool: no checksum, so the key check must catch it
    return path, "missing tensors: counts; unexpected tensors: extra.weight"


@pytest.mark.parametrize("corrupt", [
    corrupt_truncate, corrupt_flip_weight_byte, corrupt_garbage_weights, remove_weights, remove_config,
    invalid_json, edit_config(format="something-else"), edit_config(format_version=2), edit_config(kind="mystery"),
    edit_config(config=[1, 2]), change_channels, config_rejected_by_constructor, drop_and_add_tensor,
], ids=lambda f: f.__name__)
def test_every_failure_is_a_checkpoint_error_naming_the_file(saved_toy, corrupt):
    _, folder = saved_toy
    path, expected_text = corrupt(folder)
    with pytest.raises(CheckpointError) as error:
        load_model(folder)
    assert str(path) in str(error.value)
    assert expected_text in str(error.value)


def test_missing_folder_and_file_instead_of_folder(saved_toy, tmp_path):
    _, folder = saved_toy
    with pytest.raises(CheckpointError, match="no such model folder"):
        load_model(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="expected a model folder"):
        load_model(folder / "model.safetensors")


class _WritesMarkerWhenUnpickled:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


@pytest.mark.parametrize("suffix", [".pt", ".ckpt", ".bin"])
def test_pickle_checkpoints_are_refused_without_unpickling(saved_toy, tmp_path, suffix):
    _, folder = saved_toy
    marker = tmp_path / "unpickled"
    pickled = tmp_path / f"weights{suffix}"
    pickled.write_bytes(pickle.dumps(_WritesMarkerWhenUnpickled(marker)))
    with pytest.raises(CheckpointError, match="pickle checkpoints .* are refused") as error:
        load_model(pickled)
    assert str(pickled) in str(error.value)
    # A folder holding a pickle instead of model.safetensors is refused the same way.
    (folder / "model.safetensors").unlink()
    in_folder = folder / f"model{suffix}"
    in_folder.write_bytes(pickled.read_bytes())
    with pytest.raises(CheckpointError, match="are refused") as error:
        load_model(folder)
    assert str(in_folder) in str(error.value)
    # So is a bare PyTorch checkpoint folder (no config.json either).
    (folder / "config.json").unlink()
    with pytest.raises(CheckpointError, match="are refused") as error:
        load_model(folder)
    assert str(in_folder) in str(error.value)
    assert not marker.exists()


def test_save_refuses_unknown_kind_and_non_json_config(toy_kind, tmp_path):
    model = build_model("toy", "tiny")
    model.config["bad"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match="not JSON-serialisable") as error:
        save_model(model, tmp_path / "m")
    assert str(tmp_path / "m" / "config.json") in str(error.value)
    model.kind = "mystery"
    with pytest.raises(CheckpointError, match="cannot save a model of kind 'mystery'"):
        save_model(model, tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_every_model_kind_is_a_real_model():
    assert sorted(MODEL_CLASSES) == sorted(REAL_MODELS)


@pytest.mark.parametrize("kind", sorted(REAL_MODELS))
def test_real_tiny_models_round_trip_bit_exactly(kind, tmp_path):
    module_name, class_name = REAL_MODELS[kind]
    cls = getattr(importlib.import_module(module_name), class_name)
    assert MODEL_CLASSES[kind] is cls
    torch.manual_seed(1)
    model = build_model(kind, "tiny")
    with torch.no_grad():  # make zero-initialised tensors non-trivial too
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 1e-3)
    loaded = load_model(save_model(model, tmp_path / kind))
    assert type(loaded) is cls and loaded.kind == kind
    assert loaded.config == json.loads(json.dumps(model.config))
    assert_same_weights(model, loaded)


def test_half_precision_storage_halves_the_file_and_loads_the_rounded_weights(tmp_path):
    torch.manual_seed(2)
    model = build_model("ambiguous", "tiny")
    full = save_model(model, tmp_path / "full") / "model.safetensors"
    half = save_model(model, tmp_path / "half", half_precision=True) / "model.safetensors"
    assert half.stat().st_size < 0.55 * full.stat().st_size
    loaded = load_model(half.parent)
    for name, tensor in model.state_dict().items():
        restored = loaded.state_dict()[name]
        assert restored.dtype == tensor.dtype  # cast back to the model's float32
        assert torch.equal(restored, tensor.half().to(tensor.dtype))  # exactly the float16 rounding
