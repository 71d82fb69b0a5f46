"""Model folders: ``config.json`` + ``model.safetensors`` (+ ``README.md`` model card).

``config.json`` = ``{"format": "sdseg-model", "format_version": 1, "kind": ..., "config": {...}}``. Weights are
safetensors only: nothing is ever unpickled and nothing touches the network. The safetensors header metadata
carries a SHA-256 of the tensor bytes, so corrupted weights are detected on load (files written by other tools
without it load unchecked). Every failure is a :class:`CheckpointError` whose message names the file and says
what to do.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from safetensors import SafetensorError, safe_open

from sdseg.models import MODEL_CLASSES, model_from_config

if TYPE_CHECKING:  # torch loads with the first model, not with `sdseg models`
    import torch

FORMAT = "sdseg-model"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "README.md"
CHECKSUM_KEY = "sdseg_sha256"
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle")
_REEXPORT = "re-export the model with sdseg.checkpoint.save_model or reinstall it"


class CheckpointError(Exception):
    """A model folder could not be written or read; the message names the file and says what to do."""


def _refuse_pickle(path: Path) -> None:
    raise CheckpointError(
        f"{path}: pickle checkpoints (.pt/.pth/.bin/.ckpt) are refused because loading them can run arbitrary "
        f"code. Convert it once, in an environment you trust, into a model folder ({CONFIG_FILE} + {WEIGHTS_FILE}) "
        f"with sdseg.checkpoint.save_model, then point SDSegSlicer at that folder.")


def _refuse_pickles_in(folder: Path) -> None:
    """Called when a model file is missing: a pickle checkpoint found instead gets the pickle message."""
    pickles = sorted(p for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        _refuse_pickle(pickles[0])


def _tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    import torch

    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name]
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _write_atomically(path: Path, write) -> None:
    temporary = path.with_name(path.name + ".partial")
    write(temporary)
    os.replace(temporary, path)


def save_model(model, folder, card: str | None = None, half_precision: bool = False) -> Path:
    """Write ``model`` (a SegmentationDiffusionModel) into ``folder`` and return the folder.

    Tensors are stored contiguous on the CPU, bit-exact, or with ``half_precision`` every floating-point tensor
    rounded to IEEE float16 (half the file size, for the bundled models; loading casts them back to the model's
    float32). ``card`` (Markdown) becomes ``README.md``; with ``card=None`` an existing card is left as it is.
    Files are replaced atomically.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    kind = getattr(model, "kind", "")
    if kind not in MODEL_CLASSES:
        raise CheckpointError(f"{folder}: cannot save a model of kind {kind!r}; known kinds: "
                              f"{', '.join(sorted(MODEL_CLASSES))}")
    try:
        config_text = json.dumps({"format": FORMAT, "format_version": FORMAT_VERSION, "kind": kind,
                                  "config": model.config}, indent=2, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{folder / CONFIG_FILE}: the model config is not JSON-serialisable ({error}); "
                              "keep only numbers, strings, lists and dicts in model.config") from error
    tensors = {name: tensor.detach().to("cpu").contiguous().clone() for name, tensor in model.state_dict().items()}
    if half_precision:
        tensors = {name: t.half() if t.is_floating_point() else t for name, t in tensors.items()}
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _write_atomically(folder / WEIGHTS_FILE, lambda path: save_file(
            tensors, str(path), metadata={CHECKSUM_KEY: _tensor_digest(tensors)}))
        _write_atomically(folder / CONFIG_FILE, lambda path: path.write_text(config_text + "\n", encoding="utf-8"))
        if card is not None:
            _write_atomically(folder / CARD_FILE, lambda path: path.write_text(card, encoding="utf-8"))
    except OSError as error:
        raise CheckpointError(f"{folder}: could not write the model ({error}); check the folder is writable "
                              "and the disk has space") from error
    return folder


def read_config(folder) -> dict:
    """The validated content of ``folder/config.json`` (keys format, format_version, kind, config)."""
    folder = Path(folder)
    if folder.is_file():
        if folder.suffix.lower() in PICKLE_SUFFIXES:
            _refuse_pickle(folder)
        raise CheckpointError(f"{folder}: expected a model folder (containing {CONFIG_FILE} and {WEIGHTS_FILE}), "
                              "not a file; pass the folder instead")
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: no such model folder; check the path or list the installed models "
                              "with `sdseg models`")
    path = folder / CONFIG_FILE
    if not path.is_file():
        _refuse_pickles_in(folder)
        raise CheckpointError(f"{path}: missing; a model folder needs {CONFIG_FILE} and {WEIGHTS_FILE} "
                              f"(written by sdseg.checkpoint.save_model)")
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path}: not valid JSON ({error}); {_REEXPORT}") from error
    if not isinstance(content, dict) or content.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an SDSegSlicer model (expected \"format\": \"{FORMAT}\"); only "
                              "folders written by sdseg.checkpoint.save_model can be loaded")
    version = content.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
        raise CheckpointError(f"{path}: format_version {version!r} is not supported (this SDSegSlicer reads "
                              f"version {FORMAT_VERSION}); update SDSegSlicer or {_REEXPORT}")
    kind = content.get("kind")
    if kind not in MODEL_CLASSES:
        raise CheckpointError(f"{path}: unknown model kind {kind!r} (known: {', '.join(sorted(MODEL_CLASSES))}); "
                              "update SDSegSlicer or use a model made for this version")
    if not isinstance(content.get("config"), dict):
        raise CheckpointError(f"{path}: \"config\" must be a JSON object; {_REEXPORT}")
    return content


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        _refuse_pickles_in(path.parent)
        raise CheckpointError(f"{path}: missing; {_REEXPORT}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as weights:
            checksum = (weights.metadata() or {}).get(CHECKSUM_KEY)
            tensors = {name: weights.get_tensor(name) for name in weights.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"{path}: corrupt or truncated safetensors file ({error}); "
                              f"{_REEXPORT}") from error
    if checksum is not None and checksum != _tensor_digest(tensors):
        raise CheckpointError(f"{path}: the weights do not match their checksum (the file is corrupted); "
                              f"{_REEXPORT}")
    return tensors


def _check_tensors(path: Path, tensors: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    def listed(names):
        names = sorted(names)
        return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")

    problems = []
    missing = expected.keys() - tensors.keys()
    unexpected = tensors.keys() - expected.keys()
    misshaped = [f"{name} {tuple(tensors[name].shape)} != {tuple(expected[name].shape)}"
                 for name in sorted(expected.keys() & tensors.keys()) if tensors[name].shape != expected[name].shape]
    if missing:
        problems.append(f"missing tensors: {listed(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors: {listed(unexpected)}")
    if misshaped:
        problems.append(f"mis-shaped tensors: {listed(misshaped)}")
    if problems:
        raise CheckpointError(f"{path}: the weights do not fit the model described in {CONFIG_FILE} "
                              f"({'; '.join(problems)}); the two files come from different models: {_REEXPORT}")


def load_model(folder, device="cpu"):
    """Rebuild the model saved in ``folder`` (config, then weights with strict key/shape checks), in eval mode."""
    folder = Path(folder)
    content = read_config(folder)
    try:
        model = model_from_config(content["kind"], content["config"])
    except ImportError as error:
        raise CheckpointError(f"{folder / CONFIG_FILE}: model kind {content['kind']!r} is not available in this "
                              f"installation ({error}); reinstall SDSegSlicer") from error
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{folder / CONFIG_FILE}: the model config is invalid ({error!r}); "
                              f"{_REEXPORT}") from error
    path = folder / WEIGHTS_FILE
    tensors = _read_tensors(path)
    _check_tensors(path, tensors, model.state_dict())
    model.load_state_dict(tensors, strict=True)
    return model.to(device).eval()
