"""Reading crops data sets (docs/architecture.md "Data sets") for training and evaluation (training batches:
sdseg.data.batches)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from sdseg.choices import SPLITS

INFO_KEYS = ("name", "source", "licence", "image_size", "preprocessing", "n_raters", "synthetic", "description")
_HOW_TO_MAKE = ("make one with `sdseg preprocess` (real volumes) or sdseg.data.synthetic.make_shapes_dataset "
                "(synthetic)")


class DatasetError(ValueError):
    """A folder or file is not a valid crops data set; the message names it and says what to do."""


def read_dataset_info(directory) -> dict:
    """The validated content of ``directory/dataset.json``."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DatasetError(f"{directory}: no such data set folder; {_HOW_TO_MAKE}")
    path = directory / "dataset.json"
    if not path.is_file():
        raise DatasetError(f"{directory} is not a crops data set (no dataset.json); {_HOW_TO_MAKE}")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DatasetError(f"{path}: not valid JSON ({error}); rewrite it or make the data set again") from error
    if not isinstance(info, dict):
        raise DatasetError(f"{path}: must hold a JSON object with the keys {', '.join(INFO_KEYS)}")
    missing = [key for key in INFO_KEYS if key not in info]
    if missing:
        raise DatasetError(f"{path}: missing keys {', '.join(missing)}; {_HOW_TO_MAKE}")
    for key in ("image_size", "n_raters"):
        if isinstance(info[key], bool) or not isinstance(info[key], int) or info[key] < 1:
            raise DatasetError(f"{path}: {key!r} must be a positive integer, got {info[key]!r}")
    return info


class CropsDataset(Dataset):
    """Items ``(image (C, H, W) float32 in [-1, 1], masks (R, H, W) float32 in {0, 1})`` of one split.

    Files are read on access.
    """

    def __init__(self, directory, split: str):
        self.directory = Path(directory)
        if split not in SPLITS:
            raise DatasetError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
        self.info = read_dataset_info(self.directory)
        self.split = split
        self.files = sorted((self.directory / split).glob("*.npz"))
        if not self.files:
            raise DatasetError(f"{self.directory / split}: no .npz crops in the {split!r} split of this data set; "
                               f"{_HOW_TO_MAKE}")

    def __len__(self) -> int:
        return len(self.files)

    def read(self, index: int) -> dict:
        """The raw arrays of item ``index``: ``image`` float32 (C, H, W), ``masks`` uint8 (R, H, W), ``patient``,
        ``neighbours`` uint8 (2, H, W) (the raters' union on the slices before and after; empty when the crop file
        has none: 2D sources, lesion-free crops, older data sets) and ``has_neighbours`` (whether it has them)."""
        path = self.files[index]
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {key: data[key] for key in ("image", "masks", "patient")}
                neighbours = data["neighbours"] if "neighbours" in data.files else None
        except KeyError as error:
            raise DatasetError(f"{path}: missing array {error}; each crop needs image, masks and patient") from error
        except (OSError, ValueError, zipfile.BadZipFile) as error:
            raise DatasetError(f"{path}: unreadable crop file ({error}); make the data set again") from error
        size = self.info["image_size"]
        image, masks = arrays["image"], arrays["masks"]
        if image.ndim != 3 or image.shape[1:] != (size, size) or masks.ndim != 3 or masks.shape[1:] != (size, size):
            raise DatasetError(f"{path}: image {image.shape} and masks {masks.shape} must be (C, {size}, {size}) and "
                               f"(R, {size}, {size}) (image_size in dataset.json); make the data set again")
        has_neighbours = neighbours is not None
        if neighbours is None:
            neighbours = np.zeros((2, size, size), dtype=np.uint8)
        elif neighbours.shape != (2, size, size):
            raise DatasetError(f"{path}: neighbours {neighbours.shape} must be (2, {size}, {size}); make the data set "
                               "again")
        return {"image": image.astype(np.float32), "masks": masks.astype(np.uint8), "patient": str(arrays["patient"]),
                "neighbours": neighbours.astype(np.uint8), "has_neighbours": has_neighbours}

    def __getitem__(self, index: int):
        arrays = self.read(index)
        image = torch.from_numpy(arrays["image"])
        masks = torch.from_numpy((arrays["masks"] > 0).astype(np.float32))
        return image, masks
