"""Statistics of a result: volume of each segment in ml (from the voxel geometry), mean and max variance inside each
segment, and per lesion the Dice overlap between samples (how much the plausible contours agree), the slices, and
how coherent each sample is from slice to slice.

At 256 samples the Dice overlaps are tens of thousands of mask pairs: they are computed as matrix products, and the
Slicer module runs the whole computation in a thread (:class:`BackgroundStatistics`), reading the masks from MRML on
its own thread a few segments per call.
"""

from __future__ import annotations

import csv
import json
import threading

import numpy as np

from .atomic import atomic_output
from .segmentation_writer import (CONSENSUS_SEGMENT_NAME, SLICE_AXIS_ATTRIBUTE, image_array_kji,
                                  read_segment_arrays, sample_segment_name, segment_ids_by_name, volume_ijk_to_ras)

MM3_PER_ML = 1000.0
DICE_CHUNK_VOXELS = 1 << 16  # voxels per matrix product in dice_matrix (exact in float32 below 2^24)
READ_STEP_SEGMENTS = 16  # segments BackgroundStatistics reads from MRML per step (~20 ms at 96 x 96 x 30 voxels)


def voxel_volume_ml(ijk_to_ras) -> float:
    """Volume of one voxel in ml: |det| of the 3x3 IJK-to-RAS part (mm^3; any orientation or shear) / 1000."""
    return float(abs(np.linalg.det(np.asarray(ijk_to_ras, dtype=float)[:3, :3]))) / MM3_PER_ML


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice coefficient 2 |A n B| / (|A| + |B|); two empty masks agree perfectly (1)."""
    total = int(np.count_nonzero(a)) + int(np.count_nonzero(b))
    return 1.0 if total == 0 else 2.0 * int(np.count_nonzero(a & b)) / total


def dice_matrix(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """(N, M) Dice 2 |A_n n B_m| / (|A_n| + |B_m|) between N and M boolean masks of one shape (1 where both are
    empty): the intersections are the product of the masks as 0/1 matrices, summed over chunks of voxels (float32
    holds each chunk's counts exactly)."""
    a = np.asarray(first, dtype=bool).reshape(len(first), -1)
    b = np.asarray(second, dtype=bool).reshape(len(second), -1)
    intersections = np.zeros((len(a), len(b)))
    for start in range(0, a.shape[1], DICE_CHUNK_VOXELS):
        chunk = slice(start, start + DICE_CHUNK_VOXELS)
        intersections += a[:, chunk].astype(np.float32) @ b[:, chunk].astype(np.float32).T
    totals = np.count_nonzero(a, axis=1)[:, None] + np.count_nonzero(b, axis=1)[None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals == 0, 1.0, 2.0 * intersections / totals)


def pairwise_dice(masks: np.ndarray) -> np.ndarray:
    """(N, N) Dice between every pair of the N boolean masks (1 on the diagonal)."""
    matrix = dice_matrix(masks, masks)
    np.fill_diagonal(matrix, 1.0)
    return matrix


def _variance_summary(variance: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """(mean, max) of the variance inside a mask; (0, 0) for an empty mask."""
    values = variance[mask]
    return (float(values.mean()), float(values.max())) if values.size else (0.0, 0.0)


def slice_coherence(samples: np.ndarray, slice_axis_kji: int) -> dict:
    """How much each sample is one 3D object: the mean Dice between consecutive slices (k, k+1) of the same sample
    (``within_samples``) and of two different samples (``across_samples``), over the pairs of consecutive slices
    where some sample has voxels. Per-slice draws give about the same two values; a 3D hypothesis gives
    ``within`` > ``across``. None where there is no such pair (or one sample, for ``across``)."""
    samples = np.moveaxis(np.asarray(samples, dtype=bool), 1 + slice_axis_kji, 1)  # (N, slices, A, B)
    occupied = np.flatnonzero(samples.any(axis=(0, 2, 3)))
    pairs = [k for k in occupied if k + 1 in set(occupied)]
    count = len(samples)
    same = np.eye(count, dtype=bool)
    within, across = [], []
    for k in pairs:  # Dice of slice k of sample n with slice k + 1 of sample m, for every n, m
        matrix = dice_matrix(samples[:, k], samples[:, k + 1])
        within.append(matrix[same])
        across.append(matrix[~same])
    within, across = np.concatenate(within or [[]]), np.concatenate(across or [[]])
    return {"within_samples": float(np.mean(within)) if within.size else None,
            "across_samples": float(np.mean(across)) if across.size else None}


def samples_variance(samples: np.ndarray) -> np.ndarray:
    """Per-voxel variance p (1 - p) of one lesion's boolean samples (N, ...), p = their mean, float32: the worker's
    definition (sdseg.metrics.voxel_variance), so it equals the variance volume wherever no other lesion's crops
    overlap this lesion's (the volume keeps the maximum of the lesions there)."""
    p = samples.mean(axis=0, dtype=np.float64)
    return (p * (1.0 - p)).astype(np.float32)


def lesion_statistics(names: list[str], masks: np.ndarray, voxel_ml: float,
                      slice_axis_kji: int) -> tuple[dict, list[dict]]:
    """(lesion summary, segment rows) of one lesion's segments ``names`` (its consensus first, then its samples;
    boolean masks (S, K, J, I)).

    variance_mean / variance_max are of the lesion's own samples' variance (:func:`samples_variance`: other lesions
    prompted in the same run do not change them), the summary's over the union of the samples, where the model
    considered a lesion possible; slices = slices with a non-empty consensus."""
    samples, consensus = masks[1:], masks[0]
    variance = samples_variance(samples)
    with_samples = dice_matrix(masks, samples)  # row 0: the consensus; rows 1..N: the samples' pairwise Dice
    sample_dice = with_samples[1:].copy()
    np.fill_diagonal(sample_dice, 1.0)
    rows = []
    for name, mask, dice_row in zip(names, masks, with_samples):
        voxels = int(np.count_nonzero(mask))
        variance_mean, variance_max = _variance_summary(variance, mask)
        rows.append({"segment": name, "volume_ml": voxels * voxel_ml, "voxels": voxels,
                     "variance_mean": variance_mean, "variance_max": variance_max,
                     "dice_with_samples": dice_row.tolist()})
    volumes = np.array([row["volume_ml"] for row in rows[1:]])
    off_diagonal = sample_dice[~np.eye(len(samples), dtype=bool)]
    variance_mean, variance_max = _variance_summary(variance, samples.any(axis=0))
    slice_axes = tuple(axis for axis in range(3) if axis != slice_axis_kji)
    return {
        "consensus": names[0], "sample_names": names[1:], "volume_ml": rows[0]["volume_ml"],
        "slices": int(np.count_nonzero(consensus.any(axis=slice_axes))),
        "sample_volume_ml": volumes.tolist(),
        "sample_volume_ml_mean": float(volumes.mean()) if volumes.size else 0.0,
        "sample_volume_ml_std": float(volumes.std()) if volumes.size else 0.0,
        "dice_between_samples": sample_dice.tolist(),
        "dice_between_samples_mean": float(off_diagonal.mean()) if off_diagonal.size else None,
        "variance_mean": variance_mean, "variance_max": variance_max,
        "coherence": slice_coherence(samples, slice_axis_kji),
    }, rows


def result_lesions(segmentation_node) -> list[list[str]]:
    """The result's segments, lesion by lesion, each its consensus then its samples: [`consensus`, `sample 1`, ...]
    for a whole-volume or one-lesion result, else [`lesion L consensus`, `lesion L sample 1`, ...] per lesion."""
    by_name = segment_ids_by_name(segmentation_node)
    prefixes = [""] if CONSENSUS_SEGMENT_NAME in by_name else []
    number = 1
    while f"lesion {number} {CONSENSUS_SEGMENT_NAME}" in by_name:
        prefixes.append(f"lesion {number} ")
        number += 1
    lesions = []
    for prefix in prefixes:
        names, sample = [prefix + CONSENSUS_SEGMENT_NAME], 1
        while prefix + sample_segment_name(sample) in by_name:
            names.append(prefix + sample_segment_name(sample))
            sample += 1
        lesions.append(names)
    return lesions


def result_segment_names(segmentation_node) -> list[str]:
    """Every consensus and sample segment of a result, lesion by lesion (see result_lesions)."""
    return [name for names in result_lesions(segmentation_node) for name in names]


def is_consensus(name: str) -> bool:
    return name == CONSENSUS_SEGMENT_NAME or name.endswith(" " + CONSENSUS_SEGMENT_NAME)


def _result_segments(segmentation_node) -> tuple[list[list[str]], list[str]]:
    """(lesions as result_lesions() gives them, their segment IDs in that order); ValueError if it has none."""
    lesions = result_lesions(segmentation_node)
    if not lesions:
        raise ValueError(f"'{segmentation_node.GetName()}' has no consensus or sample segments: "
                         "select a segmentation made by SDSegSlicer.")
    by_name = segment_ids_by_name(segmentation_node)
    return lesions, [by_name[name] for group in lesions for name in group]


def _cropped_variance(segmentation_node, variance_node, ijk_to_ras, extent) -> np.ndarray:
    """A copy of the variance volume's voxels inside ``extent`` (ValueError if it is on another grid)."""
    if not np.allclose(volume_ijk_to_ras(variance_node), ijk_to_ras, atol=1e-4):
        raise ValueError(f"'{variance_node.GetName()}' is not on the voxel grid of "
                         f"'{segmentation_node.GetName()}': select the variance volume of the same run.")
    variance = image_array_kji(variance_node.GetImageData())
    return variance[extent[4]:extent[5] + 1, extent[2]:extent[3] + 1, extent[0]:extent[1] + 1].copy()


def statistics_of_arrays(lesions: list[list[str]], masks: np.ndarray, variance: np.ndarray, ijk_to_ras,
                         slice_axis_kji: int) -> dict:
    """segmentation_statistics() of masks already read (S, K, J, I, lesion by lesion as ``lesions`` names them)
    and the variance on the same voxels: numpy only, safe in any thread."""
    names = [name for group in lesions for name in group]
    voxel_ml = voxel_volume_ml(ijk_to_ras)
    summaries, rows, first = [], [], 0
    for group in lesions:
        summary, group_rows = lesion_statistics(group, masks[first:first + len(group)], voxel_ml, slice_axis_kji)
        summaries.append(summary)
        rows += group_rows
        first += len(group)
    sample_rows = [n for n, name in enumerate(names) if not is_consensus(name)]
    union = masks[sample_rows].any(axis=0) if sample_rows else np.zeros(variance.shape, dtype=bool)
    variance_mean, variance_max = _variance_summary(variance, union)
    return {"voxel_volume_ml": voxel_ml, "segments": rows, "lesions": summaries,
            "variance_mean": variance_mean, "variance_max": variance_max}


def result_slice_axis_kji(segmentation_node) -> int:
    return 2 - int(segmentation_node.GetAttribute(SLICE_AXIS_ATTRIBUTE) or 2)


def segmentation_statistics(segmentation_node, variance_node) -> dict:
    """Statistics of a result segmentation node and its variance volume (same voxel grid): one row per segment
    (``segments``), one summary per lesion (``lesions``; one for a whole-volume result), and the mean/max variance
    over every sample of every lesion."""
    lesions, segment_ids = _result_segments(segmentation_node)
    masks, extent, ijk_to_ras = read_segment_arrays(segmentation_node, segment_ids, full_extent=False)
    variance = _cropped_variance(segmentation_node, variance_node, ijk_to_ras, extent)
    return statistics_of_arrays(lesions, masks, variance, ijk_to_ras, result_slice_axis_kji(segmentation_node))


def union_extent(extents: list) -> list:
    """The smallest [i0, i1, j0, j1, k0, k1] (inclusive) holding every non-empty extent; empty: [0, -1] * 3."""
    filled = [e for e in extents if all(e[2 * a] <= e[2 * a + 1] for a in range(3))]
    if not filled:
        return [0, -1, 0, -1, 0, -1]
    return [(max if n % 2 else min)(e[n] for e in filled) for n in range(6)]


class BackgroundStatistics:
    """segmentation_statistics() of a result without holding a GUI thread: call step() from a GUI timer until it
    returns True, then result(). Each step reads READ_STEP_SEGMENTS segments from MRML (on the calling thread:
    MRML is not thread-safe); once all are read, the computation (numpy) runs in a thread."""

    def __init__(self, segmentation_node, variance_node):
        self._segmentation, self._variance_node = segmentation_node, variance_node
        self._lesions, ids = _result_segments(segmentation_node)
        self._pending = [ids[n:n + READ_STEP_SEGMENTS] for n in range(0, len(ids), READ_STEP_SEGMENTS)]
        self._read = []  # (masks, extent) per chunk
        self._thread = None
        self._outcome = None

    def step(self) -> bool:
        """Advance a little; True once result() is ready."""
        if self._pending:
            masks, extent, self._ijk_to_ras = read_segment_arrays(self._segmentation, self._pending.pop(0),
                                                                  full_extent=False)
            self._read.append((masks, extent))
            return False
        if self._thread is None:
            extent = union_extent([e for _, e in self._read])
            variance = _cropped_variance(self._segmentation, self._variance_node, self._ijk_to_ras, extent)
            arguments = (self._read, extent, variance, result_slice_axis_kji(self._segmentation))
            self._read = []
            self._thread = threading.Thread(target=self._compute, args=arguments, daemon=True)
            self._thread.start()
            return False
        return not self._thread.is_alive()

    def _compute(self, chunks, extent, variance, slice_axis_kji):
        try:
            masks = np.concatenate([place_in_extent(m, e, extent) for m, e in chunks])
            self._outcome = (statistics_of_arrays(self._lesions, masks, variance, self._ijk_to_ras, slice_axis_kji),
                             None)
        except Exception as error:  # noqa: BLE001 - handed to result(), on the caller's thread
            self._outcome = (None, error)

    def result(self) -> dict:
        statistics, error = self._outcome
        if error is not None:
            raise error
        return statistics


def place_in_extent(masks: np.ndarray, extent, target_extent) -> np.ndarray:
    """Masks (S, K, J, I) read on ``extent`` placed in zeros on the larger ``target_extent``."""
    shape = tuple(max(target_extent[2 * a + 1] - target_extent[2 * a] + 1, 0) for a in (2, 1, 0))
    placed = np.zeros((len(masks), *shape), dtype=bool)
    if masks.size:
        k, j, i = (slice(extent[2 * a] - target_extent[2 * a], extent[2 * a + 1] - target_extent[2 * a] + 1)
                   for a in (2, 1, 0))
        placed[:, k, j, i] = masks
    return placed


def statistics_table(statistics: dict) -> tuple[list[str], list[list]]:
    """(header, rows): one row per segment, for the module's table and the CSV file; the Dice columns compare a
    segment with the samples of its own lesion."""
    count = max(len(lesion["sample_names"]) for lesion in statistics["lesions"])
    header = ["segment", "lesion", "volume_ml", "voxels", "variance_mean", "variance_max", "lesion_slices",
              "coherence_within_samples", "coherence_across_samples", "mean_dice_with_other_samples"]
    header += [f"dice_with_{sample_segment_name(n + 1).replace(' ', '_')}" for n in range(count)]
    lesion_of = {name: (number, lesion) for number, lesion in enumerate(statistics["lesions"], start=1)
                 for name in [lesion["consensus"], *lesion["sample_names"]]}
    rows = []
    for segment in statistics["segments"]:
        number, lesion = lesion_of[segment["segment"]]
        others = [value for name, value in zip(lesion["sample_names"], segment["dice_with_samples"])
                  if name != segment["segment"]]
        lesion_values = ([lesion["slices"], lesion["coherence"]["within_samples"],
                          lesion["coherence"]["across_samples"]] if segment["segment"] == lesion["consensus"]
                         else [None, None, None])  # once per lesion: on its consensus row
        rows.append([segment["segment"], number, segment["volume_ml"], segment["voxels"], segment["variance_mean"],
                     segment["variance_max"], *lesion_values, float(np.mean(others)) if others else None,
                     *segment["dice_with_samples"]])
    return header, rows


VARIANCE_IS = "the per-voxel sample variance p (1 - p), p: the fraction of the lesion's samples that include the voxel"
STATISTICS_DEFINITIONS = {  # written into the summary JSON ("definitions"): what each figure is, at each level
    "voxel_volume_ml": "volume of one voxel in ml",
    "variance_mean": f"mean of the variance volume ({VARIANCE_IS}; the larger lesion's where two overlap), over "
                     "every voxel that a sample of any lesion includes",
    "variance_max": "maximum of the same over the same voxels (at most 0.25: half the samples include the voxel)",
    "segments[].segment": "the segment's name in the segmentation file",
    "segments[].volume_ml": "the segment's volume in ml",
    "segments[].voxels": "the segment's voxel count",
    "segments[].variance_mean": f"mean of {VARIANCE_IS}, over this segment's voxels",
    "segments[].variance_max": "maximum of the same over this segment's voxels",
    "segments[].dice_with_samples": "Dice of this segment with each sample of its lesion, in sample order",
    "lesions[].consensus": "the lesion's consensus segment: voxels in at least half of its samples",
    "lesions[].sample_names": "the lesion's sample segments",
    "lesions[].volume_ml": "the consensus volume in ml",
    "lesions[].slices": "slices on which the consensus has voxels",
    "lesions[].sample_volume_ml": "each sample's volume in ml",
    "lesions[].sample_volume_ml_mean": "mean of the samples' volumes",
    "lesions[].sample_volume_ml_std": "standard deviation of the samples' volumes",
    "lesions[].dice_between_samples": "Dice between every two samples (1 on the diagonal)",
    "lesions[].dice_between_samples_mean": "mean Dice between two different samples",
    "lesions[].variance_mean": f"mean of {VARIANCE_IS}, over every voxel that one of its samples includes",
    "lesions[].variance_max": "maximum of the same over the same voxels",
    "lesions[].coherence": "mean Dice between consecutive slices of one sample (within_samples) and of two samples "
                           "(across_samples): within > across when the samples are 3D hypotheses",
}


def summary_definitions(statistics: dict, extra_definitions: dict | None = None) -> dict:
    """STATISTICS_DEFINITIONS (and ``extra_definitions``) of the keys that ``statistics`` has: a definition is never
    written for a figure the file lacks."""
    definitions = {**STATISTICS_DEFINITIONS, **(extra_definitions or {})}
    present = set(statistics) | {f"{level}[].{key}" for level in ("segments", "lesions")
                                 for item in statistics.get(level, []) for key in item}
    return {key: text for key, text in definitions.items() if key in present}


SIGNIFICANT_DIGITS = 6  # of the numbers in the summary files: 13.1992 ml, not 13.199157714843741


def rounded(value):
    """``value`` (a number, or lists / dicts of them) with every float to SIGNIFICANT_DIGITS significant digits:
    more than the voxel counts behind them can tell apart."""
    if isinstance(value, float):
        return float(f"{value:.{SIGNIFICANT_DIGITS}g}")
    if isinstance(value, dict):
        return {key: rounded(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [rounded(item) for item in value]
    return value


def write_statistics(statistics: dict, json_path, csv_path, extra: dict | None = None,
                     extra_definitions: dict | None = None) -> None:
    """The per-segment table as CSV, then the statistics (plus `extra` run information) and the definitions of
    their figures (summary_definitions()) as JSON, numbers rounded (rounded()): the JSON last, so that it exists only
    once both are written."""
    header, rows = statistics_table(statistics)
    with atomic_output(csv_path) as temporary, open(temporary, "w", encoding="utf-8", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(header)
        writer.writerows(rounded(rows))
    with atomic_output(json_path) as temporary, open(temporary, "w", encoding="utf-8") as stream:
        json.dump(rounded({**(extra or {}), **statistics,
                           "definitions": summary_definitions(statistics, extra_definitions)}), stream, indent=2)
