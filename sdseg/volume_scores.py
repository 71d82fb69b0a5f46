"""A model on a whole labelled volume, as a user runs it: one click at the lesion propagated outward
(sdseg.propagation), or every slice (whole-volume mode), scored against the label. Used by
scripts/score_sample_volume.py (the bundled sample volume, external sources) and scripts/cross_validate.py (the
validation patients of each fold)."""

from __future__ import annotations

import itertools

import time
from pathlib import Path

import numpy as np
import torch

from sdseg.data.sources import SourceError, get_source
from sdseg.evaluation import prompt_point
from sdseg.geometry import voxel_spacing
from sdseg.inference import segment_slices
from sdseg.metrics import dice, generalized_energy_distance, voxel_variance
from sdseg.propagation import Prompt, propagate
from sdseg.volume_io import Volume, choose_slice_axis


def score_whole(model, volume, truth: np.ndarray, samples: int, seed: int) -> dict:
    """Consensus scores of ``model`` on the whole volume (all slices along the axial axis)."""
    shape = volume.array_kji.shape
    started = time.perf_counter()
    consensus = np.zeros(shape, dtype=bool)
    for result in segment_slices(model, volume.array_kji, [0, 0, 0, shape[2], shape[1], shape[0]], 2, samples,
                                 seed=seed):
        consensus[result.index] = result.consensus > 0
    seconds = time.perf_counter() - started
    lesion = truth.any(axis=(1, 2))
    return {"lesion_slice_dice": float(np.mean([dice(consensus[k], truth[k]) for k in np.flatnonzero(lesion)])),
            "volume_dice": dice(consensus, truth), "false_positive_voxels": int(consensus[~lesion].sum()),
            "seconds": seconds}


def run_prompt(model, volume, point, samples: int, seed: int, slice_axis: int = 2,
               steps: int | None = None) -> tuple[np.ndarray, np.ndarray, int, float, float]:
    """(consensus, samples (N, K, J, I), slices visited, seconds to the first slice, seconds in all) of one click,
    propagated along ``slice_axis`` (IJK axis; the sample volume is axial: 2) with ``steps`` sampling steps (None:
    the model's default)."""
    shape = volume.array_kji.shape
    consensus = np.zeros(shape, dtype=bool)
    drawn = np.zeros((samples, *shape), dtype=bool)
    started, first, visited = time.perf_counter(), None, 0
    for result in propagate(model, volume.array_kji, volume.ijk_to_ras, slice_axis, [Prompt(point_ijk=point)],
                            [0, 0, 0, shape[2], shape[1], shape[0]], samples, steps=steps, seed=seed):
        first = time.perf_counter() - started if first is None else first
        i0, j0, k0, i1, j1, k1 = result.box_ijk
        consensus[k0, j0:j1, i0:i1] = result.consensus > 0
        drawn[:, k0, j0:j1, i0:i1] = result.samples > 0
        visited += 1
    return consensus, drawn, visited, first, time.perf_counter() - started


def score_click(model, volume, truth: np.ndarray, samples: int, seed: int,
                steps: int | None = None) -> tuple[dict, np.ndarray, np.ndarray]:
    """(scores, consensus, samples) of one click at the lesion's centre (the centre of its largest slice), propagated
    along the volume's axial axis (from its geometry, as the worker chooses it). Scores: Dice of the 3D consensus,
    its voxels, the label's voxels, consensus voxels on slices (of that axis) without lesion, slices visited, seconds
    to the first slice and in all."""
    axis = choose_slice_axis(volume.ijk_to_ras, shape_kji=volume.array_kji.shape)
    consensus, drawn, visited, first, seconds = run_prompt(model, volume, prompt_point(truth, axis), samples, seed,
                                                           axis, steps)
    scores = {"dice": dice(consensus, truth), "voxels": int(consensus.sum()), "truth_voxels": int(truth.sum()),
              "off_lesion_slice_voxels": off_lesion_slices(consensus, truth, axis), "slices": visited,
              "first_s": first, "seconds": seconds}
    return scores, consensus, drawn


def off_lesion_slices(mask: np.ndarray, truth: np.ndarray, slice_axis: int) -> int:
    """Voxels of ``mask`` (K, J, I) on the slices (along IJK axis ``slice_axis``) where ``truth`` has no lesion."""
    kji_axis = 2 - slice_axis
    lesion_slices = truth.any(axis=tuple(a for a in range(3) if a != kji_axis))
    return int(np.compress(~lesion_slices, mask, axis=kji_axis).sum())


BOUNDARY_BAND_VOXELS = 3


def boundary_band(truth: np.ndarray, width: int = BOUNDARY_BAND_VOXELS) -> np.ndarray:
    """Voxels within ``width`` voxels (chessboard distance, 3D) of the boundary of ``truth`` (K, J, I), on either
    side: dilate(truth, width) minus erode(truth, width)."""
    mask = torch.from_numpy(truth.astype(np.float32))[None, None]
    pool = torch.nn.functional.max_pool3d
    dilated = pool(mask, 2 * width + 1, stride=1, padding=width)[0, 0] > 0
    eroded = -pool(-mask, 2 * width + 1, stride=1, padding=width)[0, 0] > 0
    return (dilated & ~eroded).numpy()


def prompt_scores(consensus: np.ndarray, samples: np.ndarray, truth: np.ndarray, voxel_ml: float,
                  slice_axis: int) -> dict:
    """The 3D figures of one prompt's result (consensus (K, J, I), samples (N, K, J, I)) against the label
    ``truth``: Dice of the consensus, volume error (ml and relative), false-positive ml on slices without lesion,
    the samples' Dice vs the label (min, max), GED (sdseg.metrics, the label as the one rater), and the variance mass
    (sum of p (1 - p) x voxel ml) in the :func:`boundary_band` of the label and elsewhere."""
    variance = voxel_variance(samples)
    band = boundary_band(truth)
    sample_dice = [dice(sample, truth) for sample in samples]
    volume, truth_volume = consensus.sum() * voxel_ml, truth.sum() * voxel_ml
    return {"dice": dice(consensus, truth), "volume_ml": float(volume), "truth_ml": float(truth_volume),
            "volume_error_ml": float(volume - truth_volume),
            "volume_error": float((volume - truth_volume) / truth_volume) if truth_volume else None,
            "off_lesion_slice_ml": off_lesion_slices(consensus, truth, slice_axis) * voxel_ml,
            "sample_dice_min": float(min(sample_dice)), "sample_dice_max": float(max(sample_dice)),
            "ged": generalized_energy_distance(samples, truth[None]),
            "variance_band_ml": float(variance[band].sum() * voxel_ml),
            "variance_elsewhere_ml": float(variance[~band].sum() * voxel_ml)}


VOLUME_EXTENSIONS = (".nii.gz", ".nrrd", ".nii", ".mha")
MODALITIES = ("PET", "CT", "MR")


def folder_cases(folder: Path) -> list[tuple[str, Path, Path]]:
    """(name, volume, label) of each volume ``<name>.<ext>`` of ``folder`` that has a label ``<name>_label.<ext>``
    (any of :data:`VOLUME_EXTENSIONS`), in name order; ValueError when there is none."""
    files = {}
    for path in sorted(Path(folder).iterdir()):
        extension = next((e for e in VOLUME_EXTENSIONS if path.name.endswith(e)), None)
        if extension is not None:
            files[path.name[:-len(extension)]] = path
    cases = [(name, path, files[name + "_label"]) for name, path in files.items()
             if not name.endswith("_label") and name + "_label" in files]
    if not cases:
        raise ValueError(f"no <name>.<ext> + <name>_label.<ext> pairs in {folder}")
    return cases


def modality(name: str) -> str:
    """The first of :data:`MODALITIES` in a case's name (any case), else "other"."""
    return next((m for m in MODALITIES if m.lower() in name.lower()), "other")


HEALTHY_GAP_MM = 30.0  # how far from the lesion's edge a user clicks healthy tissue
HEALTHY_DIRECTIONS = tuple(range(8))  # the walks tried, in 45-degree turns from the first in-plane axis


def healthy_point(truth: np.ndarray, centre_ijk, ijk_to_ras, slice_axis: int, gap_mm: float = HEALTHY_GAP_MM,
                  directions=HEALTHY_DIRECTIONS) -> list[float] | None:
    """Where a user clicks healthy tissue near a lesion: on the slice of ``centre_ijk`` (IJK), walking from the
    centre in steps of the finest in-plane spacing along the first of ``directions`` (numbers of 45-degree turns
    from the first in-plane axis) that gets there inside the volume, the first point ``gap_mm`` or more (in-plane)
    from every voxel of the label ``truth`` (K, J, I) on that slice; None when no direction does."""
    spacing = voxel_spacing(ijk_to_ras)
    plane = [a for a in range(3) if a != slice_axis]
    on_slice = np.take(truth, int(round(centre_ijk[slice_axis])), axis=2 - slice_axis)  # (plane[1], plane[0])
    lesion_mm = np.argwhere(on_slice)[:, ::-1] * spacing[plane]  # (n, 2): plane[0], plane[1] in mm
    if not len(lesion_mm):
        return None
    step_mm = float(spacing[plane].min())
    for angle in np.asarray(directions, dtype=float) * np.pi / 4:
        direction = np.array([np.cos(angle), np.sin(angle)])
        for steps in itertools.count(1):
            point = list(centre_ijk)
            for axis, offset in zip(plane, direction * steps * step_mm):
                point[axis] += offset / spacing[axis]
            index = [int(round(v)) for v in point]
            if not all(0 <= index[a] < truth.shape[2 - a] for a in range(3)):
                break
            gap = np.min(np.linalg.norm(lesion_mm - np.array([index[a] for a in plane]) * spacing[plane], axis=1))
            if gap >= gap_mm:
                return [round(float(v), 2) for v in point]
    return None


def labelled_cases(name: str, path: Path, patients=None) -> list[tuple[str, Volume, np.ndarray]]:
    """(patient, volume, truth) of each case with a lesion of the labelled data source ``name`` read from ``path``
    (only ``patients`` when given): the union of its raters' masks is the truth. Raises SourceError."""
    source = get_source(name)
    if not source.labelled:
        raise SourceError(f"{name} has no masks: there is no lesion to click")
    refs = [ref for ref in source.load(Path(path).expanduser()) if patients is None or ref.patient in patients]
    found = [(case.patient, Volume(case.image, case.ijk_to_ras), case.masks.max(axis=0) > 0)
             for case in (ref.read() for ref in refs)]
    return [case for case in found if case[2].any()]  # a case without a lesion has nothing to click


def main(argv: list[str] | None = None) -> int:
    """``python -m sdseg.volume_scores --model M --source NAME=PATH [--patients P,...] --samples N --out F.json``:
    click each lesion case of the source (of those patients) with the model; write the scores per case."""
    import argparse
    import json
    import sys

    from sdseg.checkpoint import CheckpointError, load_model
    from sdseg.registry import UnknownModelError, resolve_model

    parser = argparse.ArgumentParser(
        prog="python -m sdseg.volume_scores",
        description="Click each lesion case of a labelled source with a model and write the scores per case (Dice "
                    "of the 3D consensus, ...).")
    parser.add_argument("--model", required=True, help="installed model name or model folder")
    parser.add_argument("--source", required=True, metavar="NAME=PATH", help="a labelled data source")
    parser.add_argument("--patients", help="comma-separated patients (default: all)")
    parser.add_argument("--samples", type=int, default=8, help="samples (default 8)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--steps", type=int, help="sampling steps (default: the model's)")
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    args = parser.parse_args(argv)
    name, _, path = args.source.partition("=")
    try:
        cases = labelled_cases(name, Path(path), None if args.patients is None else args.patients.split(","))
        folder = resolve_model(args.model)
        model = load_model(folder)
    except (SourceError, UnknownModelError, CheckpointError) as error:
        print(f"volume_scores: error: {error}", file=sys.stderr)
        return 2
    scores = [{"patient": patient, **score_click(model, volume, truth, args.samples, args.seed, args.steps)[0]}
              for patient, volume, truth in cases]
    args.out.write_text(json.dumps({"model": {"name": folder.name, "path": str(folder)}, "samples": args.samples,
                                    "seed": args.seed, "steps": args.steps, "cases": scores}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
