"""`sdseg evaluate`: segmentation and uncertainty metrics of a model on a crops data set split.

For each requested sample count N the model draws N samples of every case; sample n of case i (the split's files
in name order) uses the generator :func:`sdseg.noise.sample_generators` ``(seed, i, [n])``, the worker's
seeding with the case number as the slice index, so a run is reproducible and independent of batching.
The metrics (:mod:`sdseg.metrics`) are computed on the binary samples as drawn ("none") and after the
relative-area post-processing of every sample (:func:`sdseg.masks.relative_area_filter`, r = 0.5),
whichever model it is. With ``--baselines`` three trivial predictors fitted on the train split are scored the
same way. Writes ``OUT/metrics.json``, ``OUT/metrics.md`` (the table, also printed) and ``OUT/grid.png``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from sdseg.checkpoint import CheckpointError, load_model
from sdseg.data.dataset import CropsDataset, DatasetError
from sdseg.evaluation_args import build_parser
from sdseg import masks
from sdseg.inference import (BatchSize, ModelMismatchError, auto_batch_size, check_model_fits_volume,
                             consensus_mask, is_out_of_memory, sample_items)
from sdseg.metrics import (auroc, dice, generalized_energy_distance, iou, rater_disagreement, sample_diversity,
                           voxel_variance)
from sdseg.models.threshold import threshold_masks
from sdseg.prompt_maps import CropPrompt, object_click, prompt_channels_of, takes_previous_masks
from sdseg.registry import UnknownModelError, resolve_model
from sdseg.device import DeviceUnavailable, hardware_description, resolve_device

RELATIVE_AREA = 0.5
POSTPROCESSING = ("none", "relative_area")
THRESHOLDS = np.linspace(-1.0, 1.0, 201)  # intensity-threshold baseline candidates on the normalised scale
GRID_CASES = 4
GRID_SAMPLES = 4
METRIC_COLUMNS = [("dice_vs_raters", "Dice vs raters"), ("iou_vs_raters", "IoU vs raters"),
                  ("dice_vs_majority", "Dice vs majority"), ("iou_vs_majority", "IoU vs majority"),
                  ("ged", "GED"), ("diversity", "diversity"), ("auroc_variance_vs_disagreement", "AUROC"),
                  ("dice_lesion_cases", "Dice, lesion cases"), ("false_positive_rate", "FP rate"),
                  ("false_positive_pixels", "FP pixels"), ("slices_per_s", "slices/s")]
DETERMINISTIC_WORDS = "; deterministic: its N samples are one mask repeated, from one forward pass per case"


class EvaluationError(Exception):
    """The evaluation cannot run; the message says what to do."""


# ----- data

class Split(NamedTuple):
    info: dict  # dataset.json
    images: np.ndarray  # (cases, H, W) float32
    rater_masks: list[np.ndarray]  # [(R, H, W) bool]
    previous: list[np.ndarray | None]  # per case, the previous-slice mask for --previous neighbour (previous_mask)


def previous_mask(item: dict) -> np.ndarray | None:
    """The previous-slice mask the propagation would give a crop (``--previous neighbour``): of the raters' unions
    on the slices before and after, the one with more foreground (the side the lesion comes from); None when
    neither shows anything or the crop file has no neighbours (2D sources, lesion-free crops)."""
    neighbours = item["neighbours"] > 0
    side = int(neighbours[1].sum() > neighbours[0].sum())
    return neighbours[side] if item["has_neighbours"] and neighbours.any() else None


def case_indices(total: int, max_cases: int | None, spread: bool) -> list[int]:
    """Which of a split's ``total`` cases (file name order) are evaluated: all, the first ``max_cases``, or with
    ``spread`` ``max_cases`` evenly spaced over the whole split (every patient of a large split represented)."""
    count = total if max_cases is None else min(max_cases, total)
    if not spread or count == total:
        return list(range(count))
    return [int(index) for index in np.linspace(0, total - 1, count).round()]


def read_split(directory, split: str, max_cases: int | None = None, spread: bool = False) -> Split:
    """The cases of a single-channel data set split (:func:`case_indices`), read once."""
    dataset = CropsDataset(directory, split)
    items = [dataset.read(i) for i in case_indices(len(dataset), max_cases, spread)]
    channels = {item["image"].shape[0] for item in items}
    if channels != {1}:
        raise EvaluationError(f"{directory}: the {split} images have {sorted(channels)} channels; evaluation "
                              "supports single-channel (grayscale) data sets only")
    return Split(dataset.info, np.stack([item["image"][0] for item in items]), [item["masks"] > 0 for item in items],
                 [previous_mask(item) for item in items])


# ----- trivial baselines

def mean_mask_baseline(train_masks: list[np.ndarray]) -> np.ndarray:
    """Boolean (H, W): pixels whose mean over the train cases of the raters' mean mask exceeds 0.5."""
    return np.mean([masks.mean(axis=0) for masks in train_masks], axis=0) > 0.5


def _mean_dice_above(values: np.ndarray, rater_masks: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Mean over raters of Dice(values > t, rater) for every sorted threshold t (counts by histogram)."""
    bins = np.searchsorted(thresholds, values.ravel(), side="left")  # values > t_k  <=>  bins > k

    def count_above(weights=None):
        counts = np.bincount(bins, weights=weights, minlength=thresholds.size + 1)
        return np.cumsum(counts[::-1])[::-1][1:]

    predicted = count_above()
    scores = []
    for mask in rater_masks:
        overlap, reference = count_above(mask.ravel().astype(np.float64)), float(mask.sum())
        total = predicted + reference
        scores.append(np.divide(2.0 * overlap, total, out=np.ones_like(total, dtype=np.float64), where=total > 0))
    return np.mean(scores, axis=0)


def fit_intensity_threshold(images: np.ndarray, rater_masks: list[np.ndarray],
                            thresholds: np.ndarray = THRESHOLDS) -> dict:
    """The threshold t of ``thresholds`` and polarity (mask = image > t, "above", or image < t, "below") that
    maximise the mean over cases of the mean-over-raters Dice; ``{"threshold", "polarity", "train_dice"}``."""
    thresholds = np.sort(np.asarray(thresholds, dtype=np.float64))
    candidates = {"above": (1.0, thresholds), "below": (-1.0, -thresholds[::-1])}
    best = None
    for polarity, (sign, grid) in candidates.items():
        curve = np.mean([_mean_dice_above(sign * image, masks, grid)
                         for image, masks in zip(images, rater_masks)], axis=0)
        k = int(np.argmax(curve))
        if best is None or curve[k] > best["train_dice"]:
            best = {"threshold": float(sign * grid[k]), "polarity": polarity, "train_dice": float(curve[k])}
    return best


def baseline_predictions(train_images: np.ndarray, train_masks: list[np.ndarray],
                         test_images: np.ndarray) -> list[tuple[str, dict, np.ndarray]]:
    """``(name, details, masks (cases, 1, H, W) bool)`` of the empty mask, the train mean mask and the intensity
    threshold baseline (all fitted on the train split)."""
    shape = (len(test_images), 1, *test_images.shape[1:])
    fitted = fit_intensity_threshold(train_images, train_masks)
    return [
        ("empty mask", {}, np.zeros(shape, dtype=bool)),
        ("train mean mask", {}, np.broadcast_to(mean_mask_baseline(train_masks), shape)),
        ("intensity threshold", fitted,
         threshold_masks(test_images, fitted["threshold"], fitted["polarity"])[:, None]),
    ]


def prompt_point(mask_kji: np.ndarray, slice_axis: int = 2) -> tuple[float, float, float]:
    """Where a user clicks a lesion, in IJK: on its largest slice along ``slice_axis``, the centre of mass of the
    mask there when that voxel is on the lesion, else (a curved lesion, such as the U-shaped sarcoma STS_013, whose
    centre lies 3 cm off it) the slice's most interior lesion voxel (masks.interior_point). A 3D centre of mass
    can fall outside a curved lesion too: hence the largest slice."""
    mask = np.asarray(mask_kji, dtype=bool)
    kji_axis = 2 - slice_axis
    areas = mask.sum(axis=tuple(a for a in range(3) if a != kji_axis))
    if not areas.any():
        raise ValueError("the mask is empty: there is no lesion to click")
    largest = int(np.argmax(areas))
    plane = np.take(mask, largest, axis=kji_axis)
    rows, columns = np.nonzero(plane)
    row, column = float(rows.mean()), float(columns.mean())
    if not plane[int(round(row)), int(round(column))]:
        row, column = masks.interior_point(plane)
    centre_kji = [float(largest)] * 3
    plane_axes = [a for a in range(3) if a != kji_axis]
    centre_kji[plane_axes[0]], centre_kji[plane_axes[1]] = row, column
    return centre_kji[2], centre_kji[1], centre_kji[0]


# ----- sampling

def evaluation_prompts(rater_masks: list[np.ndarray], size: int, prompt: str) -> list[CropPrompt | None] | None:
    """The prompt of each case for a model with prompt channels (``prompt`` "click"): a lesion case the click a
    user would give (sdseg.prompt_maps.object_click), a lesion-free case a click at its centre, as the propagation
    asks about healthy tissue past a lesion's end; "none": no prompt."""
    if prompt == "none":
        return None
    centre = CropPrompt(point=((size - 1) / 2.0, (size - 1) / 2.0))
    return [object_click(raters) or centre for raters in rater_masks]


def draw_samples(model, images: np.ndarray, num_samples: int, steps: int | None, seed: int,
                 batch_size: int, prompts: list[CropPrompt | None] | None = None,
                 previous: list[np.ndarray | None] | None = None) -> np.ndarray:
    """Binary samples (cases, N, H, W) of normalised images (cases, H, W) as drawn (no post-processing), case n with
    the noise of slice n, the prompt ``prompts[n]`` (models with prompt channels) and, for every sample, the
    previous-slice mask ``previous[n]`` (models with that channel; None: unknown), in the worker's passes
    (:func:`sdseg.inference.plan_passes`) of at most ``batch_size`` images."""
    def previous_of(n: int):
        return None if previous[n] is None else np.repeat(previous[n][None], num_samples, axis=0)

    return np.stack([samples for _, samples in sample_items(
        model, images.__getitem__, lambda n: n, len(images), num_samples, steps, seed, BatchSize(batch_size),
        postprocessing=False, prompt_of=None if prompts is None else prompts.__getitem__,
        previous_of=None if previous is None else previous_of)])


def postprocess(samples: np.ndarray, method: str, model_config: dict) -> np.ndarray:
    """The samples as drawn ("none"), or relative-area filtered ("relative_area") with the model's own r (for a
    model without one, RELATIVE_AREA)."""
    if method == "none":
        return samples
    config = {**model_config, "relative_area": model_config.get("relative_area") or RELATIVE_AREA}
    return masks.postprocess(torch.from_numpy(samples), config).numpy()


# ----- metrics

def prediction_metrics(samples: np.ndarray, rater_masks: list[np.ndarray]) -> dict:
    """Means over cases of the consensus's Dice/IoU vs each rater (mean over raters) and vs the raters' majority,
    GED and sample diversity (pairs i != j); AUROC of the per-pixel sample variance for rater disagreement pooled
    over all pixels of all cases (None when the raters agree everywhere or disagree everywhere). Lesion cases (a
    rater marks something): Dice of the consensus vs the majority; lesion-free cases (no rater marks anything): the
    fraction with a non-empty consensus (false-positive rate) and their mean consensus pixels (None without such
    cases)."""
    per_case = {key: [] for key in ("dice_vs_raters", "iou_vs_raters", "dice_vs_majority", "iou_vs_majority",
                                    "ged", "diversity")}
    variances, disagreements, lesion_dice, false_pixels = [], [], [], []
    for case_samples, raters in zip(samples, rater_masks):
        consensus, majority = consensus_mask(case_samples), consensus_mask(raters)
        per_case["dice_vs_raters"].append(np.mean([dice(consensus, rater) for rater in raters]))
        per_case["iou_vs_raters"].append(np.mean([iou(consensus, rater) for rater in raters]))
        per_case["dice_vs_majority"].append(dice(consensus, majority))
        per_case["iou_vs_majority"].append(iou(consensus, majority))
        per_case["ged"].append(generalized_energy_distance(case_samples, raters))
        per_case["diversity"].append(sample_diversity(case_samples))
        variances.append(voxel_variance(case_samples).ravel())
        disagreements.append(rater_disagreement(raters).ravel())
        if np.any(raters):
            lesion_dice.append(per_case["dice_vs_majority"][-1])
        else:
            false_pixels.append(int(consensus.sum()))
    result = {key: float(np.mean(values)) for key, values in per_case.items()}
    result["dice_lesion_cases"] = float(np.mean(lesion_dice)) if lesion_dice else None
    result["false_positive_rate"] = float(np.mean(np.array(false_pixels) > 0)) if false_pixels else None
    result["false_positive_pixels"] = float(np.mean(false_pixels)) if false_pixels else None
    result["lesion_cases"], result["lesion_free_cases"] = len(lesion_dice), len(false_pixels)
    try:
        result["auroc_variance_vs_disagreement"] = auroc(np.concatenate(variances), np.concatenate(disagreements))
    except ValueError:
        result["auroc_variance_vs_disagreement"] = None
    return result


# ----- outputs

def _cell(value) -> str:
    if value is None:
        return "n/a"
    return f"{value:.1f}" if abs(value) >= 100 else f"{value:.3f}" if abs(value) < 10 else f"{value:.2f}"


def data_kind(data: dict) -> str:
    """'real', 'synthetic' or 'SEMI-SYNTHETIC (real LIDC outlines, painted nodules)' for a report's data entry."""
    if data.get("semi_synthetic"):
        return "SEMI-SYNTHETIC (real LIDC outlines, painted nodules)"
    return "synthetic" if data["synthetic"] else "real"


def markdown_report(report: dict) -> str:
    """The metrics table with a caption stating every convention."""
    header = ["predictor", "samples", "post-processing"] + [title for _, title in METRIC_COLUMNS]
    lines = [f"# Evaluation of {report['model']['name']} on {report['data']['name']} ({report['data']['split']})",
             "", "| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for row in report["results"] + report["baselines"]:
        post = row["postprocessing"].replace("_", " ") + (" (model default)" if row.get("model_default") else "")
        cells = [row["predictor"], str(row["samples"]), post] + [_cell(row.get(key)) for key, _ in METRIC_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    data, settings = report["data"], report["settings"]
    lines += ["", *[f"- {text}" for text in [
        f"Data: {data['cases']} {'evenly spaced ' if data.get('spread') else ''}cases of the {data['split']} split "
        f"of {data['name']} "
        f"({data_kind(data)} data, {data['n_raters']} raters"
        f"{'; an external test set: no split of it was trained or tuned on' if data.get('external_test') else ''}"
        f"), {data['path']}. "
        f"Model: {report['model']['name']} ({report['model']['kind']}, {report['model']['parameters']:,} "
        f"parameters{DETERMINISTIC_WORDS if report['model'].get('deterministic') else ''}), steps "
        f"{settings['steps'] or 'model default'}, seed {settings['seed']}.",
        "Consensus = pixels in at least half of a case's samples. Dice/IoU vs raters: of the consensus with each "
        "rater's mask, averaged over the raters, then over the cases. Majority = pixels marked by at least half "
        "of the raters (ties count as foreground). Two empty masks have Dice = IoU = 1.",
        "GED = squared generalised energy distance D²_GED = 2E[d(S,Y)] − E[d(S,S')] − E[d(Y,Y')] (Kohl et al. "
        "2018), d = 1 − IoU, d(empty, empty) = 0; the cross term averages all N×R sample-rater pairs, the "
        "within-set terms average ordered pairs i ≠ j only (unbiased, can be slightly negative; a set of one "
        "mask contributes 0); mean over cases. Lower is better.",
        "Diversity = mean 1 − IoU over pairs of a case's samples i ≠ j (0 for one sample), mean over cases.",
        f"Lesion cases ({report['results'][0]['lesion_cases']}): a rater marks something; 'Dice, lesion cases' "
        f"= consensus vs majority over them only. Lesion-free cases ({report['results'][0]['lesion_free_cases']}):"
        " no rater marks anything; FP rate = the fraction of them with a non-empty consensus, FP pixels = their "
        "mean consensus pixels (n/a: no such case).",
        f"Prompts: {settings['prompt']}. Previous-slice mask: {settings.get('previous', 'the model takes none')}.",
        "AUROC = area under the ROC curve of the per-pixel sample variance p(1 − p) as a detector of rater "
        "disagreement (raters not unanimous), pooled over all pixels of all cases (not averaged per case); 0.5 "
        "= no information, as for one sample or a deterministic predictor.",
        f"Post-processing 'relative area': in every binary sample, connected components smaller than "
        f"{RELATIVE_AREA} × its largest component are removed (our rule after the relative-area post-processing "
        "of Christensen et al. 2025, whose exact rule may differ: sdseg.masks) before any metric. "
        "'(model default)' marks the output the model gives by default (what the Slicer module shows).",
        f"slices/s = cases / wall-clock seconds of sampling all N samples (model.sample with resizing, batches of "
        f"up to {settings['batch_size']} images, after one untimed warm-up pass; post-processing not included) "
        f"on {report['hardware']}.",
    ]]]
    if report["baselines"]:
        fitted = next(row for row in report["baselines"] if row["predictor"] == "intensity threshold")
        lines.append(
            "- Trivial baselines (one deterministic mask per case): empty mask; train mean mask = pixels whose "
            "mean over the train cases of the raters' mean mask exceeds 0.5; intensity threshold = normalised "
            f"image {'>' if fitted['polarity'] == 'above' else '<'} {fitted['threshold']:.3f}, the threshold and "
            f"direction maximising the mean Dice vs raters on the train split of {report['baselines_fitted_on']} "
            f"({fitted['train_dice']:.3f} there; "
            f"{THRESHOLDS.size} thresholds in [-1, 1], both directions).")
    lines += [f"- {warning}" for warning in report["warnings"]]
    return "\n".join(lines) + "\n"


def write_grid(path: Path, images: np.ndarray, rater_masks: list[np.ndarray], samples: np.ndarray,
               title: str) -> None:
    """PNG: rows = a few cases, columns = image, raters, the first samples, sample variance."""
    from matplotlib.figure import Figure

    cases = sorted(set(np.linspace(0, len(images) - 1, min(GRID_CASES, len(images))).round().astype(int)))
    n_raters, n_samples = max(len(rater_masks[c]) for c in cases), min(GRID_SAMPLES, samples.shape[1])
    columns = 2 + n_raters + n_samples
    figure = Figure(figsize=(1.3 * columns, 1.4 * len(cases) + 0.4))
    axes = figure.subplots(len(cases), columns, squeeze=False)
    for row, case in enumerate(cases):
        panels = [(f"image {case}", images[case], "gray", 1.0, -1.0)]
        panels += [(f"rater {r + 1}", mask, "gray", 1.0, 0.0) for r, mask in enumerate(rater_masks[case])]
        panels += [None] * (n_raters - len(rater_masks[case]))
        panels += [(f"sample {s + 1}", samples[case, s], "magma", 1.0, 0.0) for s in range(n_samples)]
        panels.append((f"variance ({samples.shape[1]})", voxel_variance(samples[case]), "viridis", 0.25, 0.0))
        for axis, panel in zip(axes[row], panels):
            axis.set_axis_off()
            if panel is not None:
                label, array, cmap, high, low = panel
                axis.imshow(array, cmap=cmap, vmin=low, vmax=high, interpolation="nearest")
                axis.set_title(label, fontsize=7)
    figure.suptitle(title, fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)


# ----- command line

def _model_rows(model, images, rater_masks, args, batch_size: int, prompts: list[CropPrompt | None] | None,
                previous: list[np.ndarray | None] | None) -> tuple[list[dict], np.ndarray]:
    """Metric rows of the model for every sample count and post-processing, and the largest count's samples as
    the model outputs them by default."""
    default = "relative_area" if model.config.get("relative_area") else "none"
    rows, shown = [], None
    draw_samples(model, images[:1], 1, args.steps, args.seed, batch_size, prompts, previous)  # warm-up, not timed
    for count in args.samples:
        started = time.perf_counter()
        drawn = draw_samples(model, images, count, args.steps, args.seed, batch_size, prompts, previous)
        seconds = time.perf_counter() - started
        print(f"N={count}: sampled {len(images)} cases in {seconds:.1f} s", flush=True)
        for method in POSTPROCESSING:
            samples = postprocess(drawn, method, model.config)
            rows.append({"predictor": "model", "samples": count, "postprocessing": method,
                         "model_default": method == default, **prediction_metrics(samples, rater_masks),
                         "slices_per_s": len(images) / seconds, "sampling_s": seconds})
            if method == default:
                shown = samples
    return rows, shown


def _baseline_train_split(args: argparse.Namespace, info: dict, warnings: list[str]):
    """(data set folder, train images, train masks) to fit the baselines on: the train split of ``--baselines-from``
    DATA, else of the evaluated data set. An image size other than the evaluated one is refused; other
    preprocessing is warned."""
    train_data = Path(args.baselines_from or args.data)
    try:
        train_info, train_images, train_masks, _ = read_split(train_data, "train")
    except DatasetError as error:
        hint = "" if args.baselines_from else (" (an external test set has none: add --baselines-from DATA, e.g. the "
                                               "model's training data)")
        raise DatasetError(f"{error}{hint}") from None
    if train_info["image_size"] != info["image_size"]:
        raise DatasetError(f"--baselines-from {train_data}: its crops are {train_info['image_size']} px, the "
                           f"evaluated ones {info['image_size']} px; give a data set of the same size")
    if train_info["preprocessing"] != info["preprocessing"]:
        warnings.append(f"The baselines were fitted on {train_data}, preprocessed with {train_info['preprocessing']}, "
                        f"not {info['preprocessing']} as the evaluated data: the intensity threshold may not carry.")
    return train_data, train_images, train_masks


def _baseline_rows(train_images, train_masks, images, rater_masks) -> list[dict]:
    return [{"predictor": name, "samples": 1, "postprocessing": "none", **details,
             **prediction_metrics(masks, rater_masks), "slices_per_s": None}
            for name, details, masks in baseline_predictions(train_images, train_masks, images)]


def evaluate(args: argparse.Namespace) -> Path:
    """Run the evaluation described by the parsed arguments; returns the output folder."""
    folder = resolve_model(args.model)
    out = Path(args.out or f"evaluation-{folder.name}-{args.split}")
    if (out / "metrics.json").exists() and not args.overwrite:
        raise EvaluationError(f"{out} already holds an evaluation; choose another --out or add --overwrite")
    out.mkdir(parents=True, exist_ok=True)  # an unwritable --out fails now, not after the sampling
    device = resolve_device(args.device)
    data = Path(args.data)
    info, images, rater_masks, neighbour_masks = read_split(data, args.split, args.max_cases, args.spread)
    warnings = []
    baselines_fitted = args.baselines or args.baselines_from
    fitted_on, *train_split = _baseline_train_split(args, info, warnings) if baselines_fitted else (None,)
    model = load_model(folder, device)
    check_model_fits_volume(model.config)
    if model.config["preprocessing"] != info["preprocessing"]:
        warnings.append(f"The model was trained with preprocessing {model.config['preprocessing']} but the data set "
                        f"uses {info['preprocessing']}; the metrics may be pessimistic.")
    if model.config["image_size"] != info["image_size"]:
        warnings.append(f"The images ({info['image_size']} px) were resized to the model's {model.config['image_size']}"
                        " px and the samples resized back (nearest neighbour).")
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr, flush=True)
    batch_size = auto_batch_size(device, int(model.config["image_size"]))
    baselines = _baseline_rows(*train_split, images, rater_masks) if baselines_fitted else []
    prompted = bool(prompt_channels_of(model.config))
    prompts = evaluation_prompts(rater_masks, images.shape[-1], args.prompt) if prompted else None
    coherent = takes_previous_masks(model.config)
    previous = neighbour_masks if coherent and args.previous == "neighbour" else None
    rows, shown = _model_rows(model, images, rater_masks, args, batch_size, prompts, previous)
    report = {
        "model": {"name": folder.name, "path": str(folder), "kind": model.kind,
                  "parameters": model.num_parameters(), "deterministic": model.deterministic},
        "data": {"name": info["name"], "path": str(data.resolve()), "split": args.split, "cases": len(images),
                 "spread": bool(args.spread and args.max_cases),
                 "n_raters": info["n_raters"], "synthetic": info["synthetic"],
                 "semi_synthetic": bool(info.get("semi_synthetic", False)),
                 "external_test": bool(info.get("external_test", False))},
        "settings": {"samples": args.samples, "seed": args.seed, "steps": args.steps, "device": str(device),
                     "batch_size": batch_size, "relative_area_r": RELATIVE_AREA, "ged_self_pairs": False,
                     "prompt": (f"{args.prompt} (lesion case: the most interior point of the raters' majority; "
                                "lesion-free case: its centre)" if args.prompt == "click" else "none")
                     if prompted else "the model takes none",
                     "previous": ("unknown (as on the prompted slice)" if args.previous == "unknown" else
                                  "the neighbouring slice's raters' union with more foreground (None: unknown)")
                     if coherent else "the model takes none"},
        "hardware": hardware_description(device),
        "results": rows,
        "baselines": baselines,
        "baselines_fitted_on": None if fitted_on is None else str(fitted_on),
        "warnings": warnings,
    }
    (out / "metrics.json").write_text(json.dumps(report, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    table = markdown_report(report)
    (out / "metrics.md").write_text(table, encoding="utf-8")
    write_grid(out / "grid.png", images, rater_masks, shown,
               f"{folder.name} on {info['name']} ({args.split}), N = {args.samples[-1]}")
    print(table, flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    try:
        out = evaluate(args)
    except (EvaluationError, DatasetError, CheckpointError, UnknownModelError, ModelMismatchError, DeviceUnavailable) as error:
        print(f"sdseg evaluate: error: {error}", file=sys.stderr)
        return 2
    except (RuntimeError, MemoryError) as error:
        if not is_out_of_memory(error):
            raise
        print("sdseg evaluate: error: out of memory while sampling; use --device cpu, fewer --samples or a "
              "smaller model", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"sdseg evaluate: error: cannot write the results ({error}); choose a writable --out",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sdseg evaluate: error: interrupted; no result written", file=sys.stderr)
        return 130
    print(f"results written to {out}", flush=True)
    return 0
