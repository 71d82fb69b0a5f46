"""Segmentation and distribution metrics (numpy; torch tensors are accepted as inputs).

Masks: boolean arrays, or numbers thresholded at ``> 0.5`` (so {0, 1} masks and soft masks in [0, 1] both work).
A *set* of masks is an array whose first axis indexes the masks, e.g. (N, H, W) samples or (R, H, W) raters.
"""

from __future__ import annotations

import numpy as np


def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch here
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _binary(x) -> np.ndarray:
    x = _to_numpy(x)
    return x if x.dtype == bool else x > 0.5


def _mask_set(masks, name: str) -> np.ndarray:
    """(N, ...) masks -> (N, V) float64 0/1 matrix (exact counts in matrix products)."""
    masks = _binary(masks)
    if masks.ndim < 2 or masks.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty set of masks with shape (N, ...), got shape {masks.shape}")
    return masks.reshape(masks.shape[0], -1).astype(np.float64)


def dice(a, b) -> float:
    """Dice similarity 2|A∩B| / (|A| + |B|); two empty masks give 1 (perfect agreement on "no lesion")."""
    a, b = _binary(a), _binary(b)
    if a.shape != b.shape:
        raise ValueError(f"masks differ in shape: {a.shape} vs {b.shape}")
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def iou(a, b) -> float:
    """Intersection over union |A∩B| / |A∪B|; two empty masks give 1."""
    a, b = _binary(a), _binary(b)
    if a.shape != b.shape:
        raise ValueError(f"masks differ in shape: {a.shape} vs {b.shape}")
    union = int(np.logical_or(a, b).sum())
    return 1.0 if union == 0 else int(np.logical_and(a, b).sum()) / union


def pairwise_iou_distance(set_a, set_b) -> np.ndarray:
    """Matrix d[i, j] = 1 - IoU(A_i, B_j) for two sets of masks; d(empty, empty) = 0 (IoU convention above)."""
    a, b = _mask_set(set_a, "set_a"), _mask_set(set_b, "set_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"mask sets differ in mask size: {a.shape[1]} vs {b.shape[1]} voxels")
    intersection = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - intersection
    iou_matrix = np.divide(intersection, union, out=np.ones_like(intersection), where=union > 0)
    return 1.0 - iou_matrix


def _mean_within_set(distances: np.ndarray, include_self_pairs: bool) -> float:
    n = distances.shape[0]
    if include_self_pairs:
        return float(distances.mean())
    if n == 1:
        return 0.0
    return float((distances.sum() - np.trace(distances)) / (n * (n - 1)))


def sample_diversity(samples, include_self_pairs: bool = False) -> float:
    """Mean pairwise distance E[d(S, S')] with d = 1 - IoU, over the samples of one image.

    Pair convention: by default the mean over all ordered pairs i != j (N(N-1) pairs, the unbiased estimate of the
    expectation over two independent draws); ``include_self_pairs=True`` averages over all N^2 pairs including
    i == j (whose distance is 0). A single mask has diversity 0 under both conventions.
    """
    samples = _mask_set(samples, "samples")
    return _mean_within_set(pairwise_iou_distance(samples, samples), include_self_pairs)


def generalized_energy_distance(samples, references, include_self_pairs: bool = False) -> float:
    """Squared generalised energy distance D^2_GED (Kohl et al. 2018, "A Probabilistic U-Net for
    Segmentation of Ambiguous Images", NeurIPS, Sec. 4 "Performance measures").

        D^2_GED(P_gt, P_out) = 2 E[d(S, Y)] - E[d(S, S')] - E[d(Y, Y')],  d(x, y) = 1 - IoU(x, y)

    with S, S' model samples and Y, Y' rater masks of the same image; d(empty, empty) = 0. This is the number the
    papers' tables call "GED". The cross term always averages all N*M pairs. The within-set terms use
    :func:`sample_diversity` with the same ``include_self_pairs`` convention: default i != j (unbiased; its
    expectation is 0 when samples and raters come from the same distribution, but a finite estimate can be
    slightly negative, e.g. for two identical sets of distinct masks); ``include_self_pairs=True`` averages over
    all pairs including i == j (the energy distance of the two empirical distributions: exactly 0 for identical
    sets, biased upwards for independent draws from one distribution).
    """
    samples, references = _mask_set(samples, "samples"), _mask_set(references, "references")
    cross = float(pairwise_iou_distance(samples, references).mean())
    return (2.0 * cross - sample_diversity(samples, include_self_pairs)
            - sample_diversity(references, include_self_pairs))


def voxel_variance(samples) -> np.ndarray:
    """Per-voxel variance of N binary samples (axis 0): the population variance (ddof = 0) p (1 - p), p = mean.

    Values lie in [0, 0.25]; 0.25 means half of the samples contain the voxel. Returns float32 of shape (...).
    """
    samples = _binary(samples)
    if samples.ndim < 1 or samples.shape[0] == 0:
        raise ValueError(f"samples must have shape (N, ...) with N >= 1, got {samples.shape}")
    p = samples.mean(axis=0, dtype=np.float64)
    return (p * (1.0 - p)).astype(np.float32)


def rater_disagreement(rater_masks) -> np.ndarray:
    """Boolean map of voxels where the raters (axis 0) do not all agree."""
    masks = _binary(rater_masks)
    return np.logical_and(masks.any(axis=0), ~masks.all(axis=0))


def gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    """Normalised 1D Gaussian weights; their outer product is the 2D SSIM window (sum 1)."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    w = np.exp(-(x ** 2) / (2.0 * sigma ** 2))
    return w / w.sum()


def _local_mean(image: np.ndarray, window: np.ndarray) -> np.ndarray:
    """Weighted mean over every full window position ('valid') on the last two axes (separable filter)."""
    rows = np.lib.stride_tricks.sliding_window_view(image, window.size, axis=-2) @ window
    return np.lib.stride_tricks.sliding_window_view(rows, window.size, axis=-1) @ window


def auroc(scores, labels) -> float:
    """Area under the ROC curve as the normalised Mann-Whitney U statistic (Hanley & McNeil 1982,
    Radiology 143:29-36: the ROC area equals the Wilcoxon / Mann-Whitney statistic U / (n_pos n_neg)).

        AUROC = (R_pos - n_pos (n_pos + 1) / 2) / (n_pos n_neg)

    R_pos is the sum of the ranks (1-based, ties given their average rank) of the positive scores; equivalently
    P(score_pos > score_neg) + 0.5 P(tie). Used with per-voxel sample variance as the score and rater disagreement
    as the label. Raises ValueError when the labels are all positive or all negative.
    """
    scores = _to_numpy(scores).astype(np.float64).ravel()
    labels = _binary(labels).ravel()
    if scores.shape != labels.shape:
        raise ValueError(f"scores and labels differ in size: {scores.size} vs {labels.size}")
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUROC needs both positive and negative labels; pool more voxels or images")
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    average_rank = np.cumsum(counts) - (counts - 1) / 2.0  # ranks of tied values averaged
    rank_sum_pos = float(average_rank[inverse.ravel()][labels].sum())
    return (rank_sum_pos - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
