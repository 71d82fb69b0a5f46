"""`sdseg preprocess --source lidc-slices`: the Pulmoseg LIDC-IDRI crops (sdseg.data.lidc_slices) as a multi-rater
crops data set, one crop per nodule slice with all four raters' masks (empty ones included, as the papers keep
them), a patient-level split of the unreserved patients stored beside it (``splits.csv``)."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np

from sdseg.data.cases import SourceError
from sdseg.data.dataset import SPLITS
from sdseg.data.lidc_slices import RATERS, NoduleSlice, nodule_slices
from sdseg.data.preprocess import _normalised_image, _resize_masks, _write_crop, split_patients
from sdseg.data.reserved import reserved_rule
from sdseg.data.sources import Source

SPLIT_FILE = "splits.csv"
UNUSED_OPTIONS = ("multirater", "add_train", "add_synthetic", "texture", "negatives", "external_test", "lidc_db",
                  "labels")


def check_options(args) -> None:
    """Refuse (one line) the options of 3D or synthetic sets, which mean nothing for these crops."""
    given = [f"--{name.replace('_', '-')}" for name in UNUSED_OPTIONS if getattr(args, name)]
    if given:
        raise SourceError(f"--source lidc-slices makes one crop per nodule slice with its four real raters: leave out "
                          f"{', '.join(given)}")


def write_split_file(path: Path, splits: dict, nodules: dict, slices: dict) -> None:
    """``splits.csv``: patient, split, nodules, slices; one row per patient of the data set."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["patient", "split", "nodules", "slices"])
        for split in SPLITS:
            for patient in splits[split]:
                writer.writerow([patient, split, nodules[patient], slices[patient]])


def _nodules(slices: list[NoduleSlice]) -> list[list[NoduleSlice]]:
    """The slices grouped by nodule (``slices`` is ordered by patient, nodule and slice)."""
    groups: dict[tuple[str, int], list[NoduleSlice]] = {}
    for crop in slices:
        groups.setdefault((crop.patient, crop.nodule), []).append(crop)
    return list(groups.values())


def build_lidc_slices_dataset(source: Source, path: Path, out: Path, size: int, preprocessing: dict, seed: int,
                              fold: int | None, include_reserved: bool) -> dict:
    """Write ``out/{train,val,test}/<patient>_n<nodule>_s<slice>.npz`` (``image`` (1, S, S) in [-1, 1], ``masks``
    uint8 (4, S, S), ``patient``, ``raters_drawn``: how many of the stored masks are non-empty, ``neighbours`` (2, S,
    S): the raters' union on the nodule's slice N - 1 and N + 1, empty where the nodule has no such slice; Pulmoseg
    numbers a nodule's slices in their order along the scan) and ``splits.csv``;
    return dataset.json. Each crop is normalised over itself with ``preprocessing`` and resized to ``size`` like
    every 2D crop (bilinear, antialiased; masks thresholded at 0.5, so a rater's speck may vanish at a smaller size:
    counted in ``masks_lost_in_resize``). Split: :func:`split_patients` of the unreserved patients."""
    slices, reserved = nodule_slices(path, include_reserved)
    patients = sorted({crop.patient for crop in slices})
    try:
        splits = split_patients(patients, seed, fold=fold)
    except ValueError as error:
        raise SourceError(str(error)) from None
    split_of = {patient: split for split, members in splits.items() for patient in members}
    drawn = {split: Counter() for split in SPLITS}
    lost = 0
    for split in SPLITS:
        (out / split).mkdir(parents=True, exist_ok=True)
    for nodule in _nodules(slices):
        read = {crop.number: crop.read() for crop in nodule}
        for crop in nodule:
            image, masks = read[crop.number]
            stored = _resize_masks(list(masks), size).astype(np.uint8)
            raters = int(stored.any(axis=(1, 2)).sum())
            lost += int(masks.any(axis=(1, 2)).sum()) - raters
            drawn[split_of[crop.patient]][raters] += 1
            unions = [read[number][1].max(axis=0) if number in read else np.zeros_like(masks[0])
                      for number in (crop.number - 1, crop.number + 1)]
            _write_crop(out / split_of[crop.patient], crop.name, _normalised_image(image, preprocessing, size),
                        stored, crop.patient, _resize_masks(unions, size).astype(np.uint8),
                        raters_drawn=np.array(raters))
    nodules = Counter(patient for patient, _ in {(crop.patient, crop.nodule) for crop in slices})
    write_split_file(out / SPLIT_FILE, splits, nodules, Counter(crop.patient for crop in slices))
    if reserved:
        print(f"left out {len(reserved)} reserved patient(s) ({reserved_rule('LIDC-IDRI')})")
    counts = {split: sum(drawn[split].values()) for split in SPLITS}
    return {"name": out.name, "source": source.name, "licence": source.licence, "provenance": source.provenance,
            "image_size": size, "preprocessing": preprocessing, "n_raters": RATERS, "synthetic": False,
            "description": f"{source.description}. Masks: {source.masks}. One crop per nodule slice, the 128x128 "
                           f"crop resized to {size}x{size}.",
            "splits": splits, "split_file": SPLIT_FILE, "counts": counts,
            "negatives": {"fraction": 0.0, "counts": dict.fromkeys(SPLITS, 0)},
            "raters_drawn": {split: {str(n): drawn[split][n] for n in range(RATERS + 1)} for split in SPLITS},
            "masks_lost_in_resize": lost,
            "nodules": {split: sum(nodules[p] for p in splits[split]) for split in SPLITS},
            "reserved": {"rule": reserved_rule("LIDC-IDRI"), "left_out": len(reserved),
                         "included": include_reserved}}
