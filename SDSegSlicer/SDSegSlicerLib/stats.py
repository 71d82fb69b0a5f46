"""Statistics of a result: volume of each segment in ml (from the voxel geometry), mean and max variance inside each
segment, and the Dice overlap between samples (how much the plausible contours agree)."""

from __future__ import annotations

import csv
import json

import numpy as np

from .segmentation_writer import (CONSENSUS_SEGMENT_NAME, image_array_kji, read_segment_arrays,
                                  sample_segment_name, segment_ids_by_name, volume_ijk_to_ras)

MM3_PER_ML = 1000.0


def voxel_volume_ml(ijk_to_ras) -> float:
    """Volume of one voxel in ml: |det| of the 3x3 IJK-to-RAS part (mm^3; any orientation or shear) / 1000."""
    return float(abs(np.linalg.det(np.asarray(ijk_to_ras, dtype=float)[:3, :3]))) / MM3_PER_ML


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice coefficient 2 |A n B| / (|A| + |B|); two empty masks agree perfectly (1)."""
    total = int(np.count_nonzero(a)) + int(np.count_nonzero(b))
    return 1.0 if total == 0 else 2.0 * int(np.count_nonzero(a & b)) / total


def pairwise_dice(masks: np.ndarray) -> np.ndarray:
    """(N, N) Dice between every pair of the N boolean masks (1 on the diagonal)."""
    count = len(masks)
    matrix = np.ones((count, count))
    for first in range(count):
        for second in range(first + 1, count):
            matrix[first, second] = matrix[second, first] = dice(masks[first], masks[second])
    return matrix


def _variance_summary(variance: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """(mean, max) of the variance inside a mask; (0, 0) for an empty mask."""
    values = variance[mask]
    return (float(values.mean()), float(values.max())) if values.size else (0.0, 0.0)


def result_statistics(names: list[str], masks: np.ndarray, variance: np.ndarray, voxel_ml: float) -> dict:
    """Statistics of segments `names` (boolean masks (S, ...)); the ones named `sample i` are the samples.

    variance_mean / variance_max (top level) are taken over the union of the samples, where the model
    considered a lesion possible."""
    sample_rows = [n for n, name in enumerate(names) if name != CONSENSUS_SEGMENT_NAME]
    samples = masks[sample_rows]
    sample_dice = pairwise_dice(samples)
    segments = []
    for name, mask in zip(names, masks):
        voxels = int(np.count_nonzero(mask))
        variance_mean, variance_max = _variance_summary(variance, mask)
        segments.append({
            "segment": name, "volume_ml": voxels * voxel_ml, "voxels": voxels,
            "variance_mean": variance_mean, "variance_max": variance_max,
            "dice_with_samples": [dice(mask, sample) for sample in samples],
        })
    volumes = np.array([segments[row]["volume_ml"] for row in sample_rows])
    off_diagonal = sample_dice[~np.eye(len(samples), dtype=bool)]
    union = samples.any(axis=0) if len(samples) else np.zeros(variance.shape, dtype=bool)
    variance_mean, variance_max = _variance_summary(variance, union)
    return {
        "voxel_volume_ml": voxel_ml,
        "segments": segments,
        "sample_names": [names[row] for row in sample_rows],
        "sample_volume_ml_mean": float(volumes.mean()) if volumes.size else 0.0,
        "sample_volume_ml_std": float(volumes.std()) if volumes.size else 0.0,
        "dice_between_samples": sample_dice.tolist(),
        "dice_between_samples_mean": float(off_diagonal.mean()) if off_diagonal.size else None,
        "variance_mean": variance_mean,
        "variance_max": variance_max,
    }


def result_segment_names(segmentation_node) -> list[str]:
    """`consensus` (if present) then `sample 1`, `sample 2`, ... as long as they exist."""
    by_name = segment_ids_by_name(segmentation_node)
    names = [CONSENSUS_SEGMENT_NAME] if CONSENSUS_SEGMENT_NAME in by_name else []
    number = 1
    while sample_segment_name(number) in by_name:
        names.append(sample_segment_name(number))
        number += 1
    return names


def segmentation_statistics(segmentation_node, variance_node) -> dict:
    """result_statistics() of a result segmentation node and its variance volume (same voxel grid)."""
    names = result_segment_names(segmentation_node)
    if not names:
        raise ValueError(f"'{segmentation_node.GetName()}' has no consensus or sample segments: "
                         "select a segmentation made by SDSegSlicer.")
    by_name = segment_ids_by_name(segmentation_node)
    masks, extent, ijk_to_ras = read_segment_arrays(
        segmentation_node, [by_name[name] for name in names], full_extent=False)
    if not np.allclose(volume_ijk_to_ras(variance_node), ijk_to_ras, atol=1e-4):
        raise ValueError(f"'{variance_node.GetName()}' is not on the voxel grid of "
                         f"'{segmentation_node.GetName()}': select the variance volume of the same run.")
    variance = image_array_kji(variance_node.GetImageData())
    variance = variance[extent[4]:extent[5] + 1, extent[2]:extent[3] + 1, extent[0]:extent[1] + 1]
    return result_statistics(names, masks, variance, voxel_volume_ml(ijk_to_ras))


def statistics_table(statistics: dict) -> tuple[list[str], list[list]]:
    """(header, rows): one row per segment, for the module's table and the CSV file."""
    sample_names = statistics["sample_names"]
    header = ["segment", "volume_ml", "voxels", "variance_mean", "variance_max", "mean_dice_with_other_samples"]
    header += [f"dice_with_{name.replace(' ', '_')}" for name in sample_names]
    rows = []
    for segment in statistics["segments"]:
        others = [value for name, value in zip(sample_names, segment["dice_with_samples"])
                  if name != segment["segment"]]
        rows.append([segment["segment"], segment["volume_ml"], segment["voxels"], segment["variance_mean"],
                     segment["variance_max"], float(np.mean(others)) if others else None,
                     *segment["dice_with_samples"]])
    return header, rows


def write_statistics(statistics: dict, json_path, csv_path, extra: dict | None = None) -> None:
    """The statistics (plus `extra` run information) as JSON, and the per-segment table as CSV."""
    with open(json_path, "w", encoding="utf-8") as stream:
        json.dump({**(extra or {}), **statistics}, stream, indent=2)
    header, rows = statistics_table(statistics)
    with open(csv_path, "w", encoding="utf-8", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(header)
        writer.writerows(rows)
