"""Reading crops data sets (docs/architecture.md "Data sets") for training and evaluation.

A training batch pairs each image with ONE of its raters' masks, drawn at random every time the image is used
(Christensen et al. 2025: the model learns the distribution of the raters' masks, not their consensus).
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

SPLITS = ("train", "val", "test")
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


def random_flips(image: torch.Tensor, masks: torch.Tensor, generator: torch.Generator | None = None):
    """The same random horizontal and vertical flips (each with probability 1/2) of an image (C, H, W) and its
    masks (R, H, W)."""
    flip_vertical, flip_horizontal = (torch.rand(2, generator=generator) < 0.5).tolist()
    dims = [d for d, flip in ((-2, flip_vertical), (-1, flip_horizontal)) if flip]
    if dims:
        image, masks = image.flip(dims), masks.flip(dims)
    return image, masks


def one_rater_batch(items, generator: torch.Generator | None = None):
    """Collate ``[(image (C,H,W), masks (R,H,W)), ...]`` into ``(images (B,C,H,W), mask (B,1,H,W))`` with one
    uniformly random rater's mask per item."""
    images, masks = [], []
    for image, rater_masks in items:
        rater = int(torch.randint(rater_masks.shape[0], (1,), generator=generator))
        images.append(image)
        masks.append(rater_masks[rater:rater + 1])
    return torch.stack(images), torch.stack(masks)


class CropsDataset(Dataset):
    """Items ``(image (C, H, W) float32 in [-1, 1], masks (R, H, W) float32 in {0, 1})`` of one split.

    Files are read on access. With ``augment``, each item gets :func:`random_flips` drawn from torch's global
    random generator (seed it, or let a DataLoader seed its workers, for reproducible flips).
    """

    def __init__(self, directory, split: str, augment: bool = False):
        self.directory = Path(directory)
        if split not in SPLITS:
            raise DatasetError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
        self.info = read_dataset_info(self.directory)
        self.split = split
        self.augment = augment
        self.files = sorted((self.directory / split).glob("*.npz"))
        if not self.files:
            raise DatasetError(f"{self.directory / split}: no .npz crops in the {split!r} split of this data set; "
                               f"{_HOW_TO_MAKE}")

    def __len__(self) -> int:
        return len(self.files)

    def read(self, index: int) -> dict:
        """The raw arrays of item ``index``: ``image`` float32 (C, H, W), ``masks`` uint8 (R, H, W), ``patient``."""
        path = self.files[index]
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {key: data[key] for key in ("image", "masks", "patient")}
        except KeyError as error:
            raise DatasetError(f"{path}: missing array {error}; each crop needs image, masks and patient") from error
        except (OSError, ValueError, zipfile.BadZipFile) as error:
            raise DatasetError(f"{path}: unreadable crop file ({error}); make the data set again") from error
        size = self.info["image_size"]
        image, masks = arrays["image"], arrays["masks"]
        if image.ndim != 3 or image.shape[1:] != (size, size) or masks.ndim != 3 or masks.shape[1:] != (size, size):
            raise DatasetError(f"{path}: image {image.shape} and masks {masks.shape} must be (C, {size}, {size}) and "
                               f"(R, {size}, {size}) (image_size in dataset.json); make the data set again")
        return {"image": image.astype(np.float32), "masks": masks.astype(np.uint8), "patient": str(arrays["patient"])}

    def __getitem__(self, index: int):
        arrays = self.read(index)
        image = torch.from_numpy(arrays["image"])
        masks = torch.from_numpy((arrays["masks"] > 0).astype(np.float32))
        if self.augment:
            image, masks = random_flips(image, masks)
        return image, masks
