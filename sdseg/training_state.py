"""The saved state of a training run for ``sdseg train --resume``: safetensors + JSON in ``OUT/training_state/``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

STATE_DIR = "training_state"
STATE_FILE = "state.json"
STATE_FORMAT = "sdseg-training-state"
STATE_FORMAT_VERSION = 1
OPTIMIZER_PREFIX = "optimizer."


class TrainingStateError(Exception):
    """The saved training state is missing or unreadable; the message says what to do."""


def save_training_state(out: Path, meta: dict, step: int, tensors: dict[str, torch.Tensor], optimizer_state: dict,
                        stage: str, run: dict) -> None:
    """Write ``OUT/training_state``: ``tensors`` and the optimizer's tensors to ``state-STEP.safetensors``, then
    ``state.json`` naming it: ``meta`` updated in place with the format, ``step``, the ``run`` entries and the
    optimizer's other state (its ``stage``, parameter groups and scalars). Older tensor files are removed."""
    folder = out / STATE_DIR
    folder.mkdir(parents=True, exist_ok=True)
    tensors = dict(tensors)
    scalars = {}
    for index, values in optimizer_state["state"].items():
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"{OPTIMIZER_PREFIX}{index}.{key}"] = value
            else:
                scalars[f"{index}.{key}"] = value
    tensors = {name: t.detach().to("cpu").contiguous().clone() for name, t in tensors.items()}
    weights_file = f"state-{step:08d}.safetensors"
    save_file(tensors, str(folder / weights_file))
    meta.update({
        "format": STATE_FORMAT, "format_version": STATE_FORMAT_VERSION, "step": step, "weights_file": weights_file,
        **run, "optimizer": {"stage": stage, "param_groups": optimizer_state["param_groups"], "scalars": scalars}})
    temporary = folder / (STATE_FILE + ".partial")
    temporary.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    os.replace(temporary, folder / STATE_FILE)
    for old in folder.glob("state-*.safetensors"):
        if old.name != weights_file:
            old.unlink()


def read_training_state(out: Path) -> dict:
    """``{"meta": state.json content, "tensors": {name: tensor}}`` of the run saved in ``out``."""
    folder = out / STATE_DIR
    path = folder / STATE_FILE
    if not path.is_file():
        raise TrainingStateError(f"{out}: no saved training state ({path} is missing); start a new run without "
                                 "--resume")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
        if meta.get("format") != STATE_FORMAT or meta.get("format_version") != STATE_FORMAT_VERSION:
            raise ValueError(f"not a version {STATE_FORMAT_VERSION} {STATE_FORMAT} file")
        tensors = load_file(str(folder / meta["weights_file"]))
    except (OSError, ValueError, KeyError, SafetensorError) as error:
        raise TrainingStateError(f"{folder}: the training state cannot be read ({error}); start a new run in "
                                 "another --out") from error
    return {"meta": meta, "tensors": tensors}


def tensors_with_prefix(tensors: dict, prefix: str) -> dict:
    """The entries of ``tensors`` whose names start with ``prefix``, named without it."""
    return {name[len(prefix):]: t for name, t in tensors.items() if name.startswith(prefix)}


def optimizer_state(saved: dict, tensors: dict) -> dict:
    """The optimizer's ``state_dict`` from state.json's ``optimizer`` entry (``saved``) and the state's tensors."""
    state: dict[int, dict] = {}
    for name, tensor in tensors_with_prefix(tensors, OPTIMIZER_PREFIX).items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = tensor
    for name, value in saved["scalars"].items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    return {"state": state, "param_groups": saved["param_groups"]}


def truncate_log(path: Path, step: int) -> None:
    """Keep the log lines of steps 1..``step`` (a resumed run rewrites what came after its saved state)."""
    if not path.exists():
        return
    lines = path.read_text(encoding="utf-8").splitlines()
    kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
