"""Installed models: folders found in ``$SDSEG_MODELS_PATH`` entries, then in the bundled ``Resources/Models``.

A model's name is its folder name; the first folder with that name wins, so ``$SDSEG_MODELS_PATH`` can override
a bundled model. ``sdseg models`` prints them.
"""

from __future__ import annotations

import argparse
import importlib.resources
import logging
import os
from pathlib import Path

from sdseg.checkpoint import CARD_FILE, CONFIG_FILE, WEIGHTS_FILE, CheckpointError, read_config
from sdseg.modality_check import looks_like_ct, looks_like_suv_pet

MODELS_PATH_ENV = "SDSEG_MODELS_PATH"
# The bundled models a job without a model uses (README "Choosing the default"): DEFAULT_CT_MODEL on a volume that looks
# like CT in Hounsfield units (sdseg.modality_check.looks_like_ct), DEFAULT_PET_MODEL on one that looks like a PET in
# SUV (looks_like_suv_pet), each when installed, DEFAULT_MODEL on any other; there, a job without a prompt (whole
# slices) gets DEFAULT_WHOLE_VOLUME_MODEL, trained without prompts (DEFAULT_MODEL finds nothing in that mode).
DEFAULT_MODEL = "sdseg-union-mr"
DEFAULT_WHOLE_VOLUME_MODEL = "sdseg-small"
DEFAULT_CT_MODEL = "sdseg-union-ct"
DEFAULT_PET_MODEL = "sdseg-union"
# The defaults for a kind of image, in the order they are tested: its test, its model, the flag the listing and the
# hello give that model, and the kind's short name in "(default for CT)".
IMAGE_DEFAULTS = ((looks_like_ct, DEFAULT_CT_MODEL, "default_for_ct", "CT"),
                  (looks_like_suv_pet, DEFAULT_PET_MODEL, "default_for_pet", "PET"))

log = logging.getLogger(__name__)


class UnknownModelError(LookupError):
    """A model name or folder that does not exist; the message lists the available names."""


def bundled_models_dir() -> Path:
    """``Models`` of the installed ``sdseg.bundled`` package (the repo's ``Resources/``), else the source tree's."""
    try:
        return Path(importlib.resources.files("sdseg.bundled") / "Models")
    except (ImportError, TypeError):  # not installed (running from a checkout), or not a file-system package
        return Path(__file__).resolve().parent.parent / "Resources" / "Models"


def models_dirs() -> list[Path]:
    """Folders searched for models, in order: ``$SDSEG_MODELS_PATH`` entries (os.pathsep separated), bundled."""
    entries = os.environ.get(MODELS_PATH_ENV, "").split(os.pathsep)
    return [Path(entry).expanduser() for entry in entries if entry.strip()] + [bundled_models_dir()]


def _card_summary(card: str) -> str:
    for line in card.splitlines():
        line = line.strip().lstrip("#").strip()
        if line:
            return line
    return ""


def default_model_name(array_kji, prompted: bool = True) -> str:
    """The model a job that names none uses on a volume of voxel values ``array_kji`` (the general default where the
    CT or PET model is not installed, e.g. removed from a server's models); ``prompted``: the job has a prompt."""
    installed = {folder.name for folder in _candidate_folders()}
    for looks_like, name, _, _ in IMAGE_DEFAULTS:
        if looks_like(array_kji) and name in installed:
            return name
    return DEFAULT_MODEL if prompted or DEFAULT_WHOLE_VOLUME_MODEL not in installed else DEFAULT_WHOLE_VOLUME_MODEL


def describe_model(folder: Path) -> dict:
    """``{name, kind, path, description, card, default, default_for_ct, default_for_pet}`` of a model folder
    (``default``: it is DEFAULT_MODEL; ``default_for_ct`` / ``_pet``: it is DEFAULT_CT_MODEL / DEFAULT_PET_MODEL);
    raises CheckpointError if it is invalid."""
    content = read_config(folder)
    if not (folder / WEIGHTS_FILE).is_file():
        raise CheckpointError(f"{folder / WEIGHTS_FILE}: missing; copy the complete model folder")
    card_path = folder / CARD_FILE
    card = card_path.read_text(encoding="utf-8", errors="replace") if card_path.is_file() else ""
    description = str(content["config"].get("description") or _card_summary(card)).removeprefix(f"{folder.name}: ")
    return {"name": folder.name, "kind": content["kind"], "path": str(folder), "description": description,
            "card": card, "default": folder.name == DEFAULT_MODEL,
            **{key: folder.name == name for _, name, key, _ in IMAGE_DEFAULTS}}


def _candidate_folders():
    for directory in models_dirs():
        if directory.is_dir():
            yield from sorted(child for child in directory.iterdir() if (child / CONFIG_FILE).is_file())


def list_models() -> list[dict]:
    """Every valid model folder, first occurrence of each name only; invalid folders are logged and skipped."""
    models, seen = [], set()
    for folder in _candidate_folders():
        if folder.name in seen:
            continue
        seen.add(folder.name)  # an invalid folder still shadows later ones, as in resolve_model
        try:
            models.append(describe_model(folder))
        except CheckpointError as error:
            log.warning("skipping model folder: %s", error)
    return models


def resolve_model(name_or_path) -> Path:
    """Folder of a model given by name (see :func:`list_models`) or by folder path."""
    text = os.fspath(name_or_path)
    for folder in _candidate_folders():
        if folder.name == text:
            return folder
    path = Path(text).expanduser()
    if path.is_dir():
        return path.resolve()
    available = ", ".join(model["name"] for model in list_models()) or "none"
    raise UnknownModelError(
        f"no model named or found at {text!r}. Available models: {available}. Give one of these names or a model "
        f"folder, or add a folder containing models to ${MODELS_PATH_ENV} "
        f"(searched: {os.pathsep.join(str(d) for d in models_dirs())}).")


def _default_label(model: dict) -> str:
    """'(default)', '(default for CT)', '(default for PET)' or '' (SDSegSlicerLib.worker_client.default_label: the
    same on the client)."""
    for _, _, key, kind in IMAGE_DEFAULTS:
        if model[key]:
            return f"(default for {kind})"
    return "(default)" if model["default"] else ""


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join([cell.ljust(width) for cell, width in zip(row, widths)] + [row[-1]]).rstrip()
                     for row in rows)


def main(argv: list[str] | None = None) -> int:
    """``sdseg models``: print the installed models as a table."""
    parser = argparse.ArgumentParser(prog="sdseg models", description="List the installed models.")
    parser.parse_args(argv)
    models = list_models()
    if not models:
        print(f"No models found. Searched: {', '.join(str(d) for d in models_dirs())}. Put model folders "
              f"({CONFIG_FILE} + {WEIGHTS_FILE}) into a folder and add it to ${MODELS_PATH_ENV}.")
        return 0
    rows = [["NAME", "KIND", "DESCRIPTION", "PATH"]]
    rows += [[f"{model['name']} {_default_label(model)}".rstrip(), model["kind"], model["description"], model["path"]]
             for model in models]
    print(_table(rows))
    return 0
