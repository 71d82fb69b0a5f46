"""sdseg.metrics against hand computations and brute-force reference implementations."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from sdseg import metrics

# 1D masks of 6 voxels, used for hand computations.
A = np.array([1, 1, 0, 0, 0, 0], bool)
B = np.array([0, 0, 1, 1, 0, 0], bool)
UNION_AB = A | B
TAIL = np.array([0, 0, 0, 0, 1, 1], bool)
EMPTY = np.zeros(6, bool)


def test_dice_and_iou_hand_values_and_empty_convention():
    small = np.array([1, 1, 0, 0, 0, 0])
    assert metrics.dice(UNION_AB, small) == pytest.approx(2 * 2 / (4 + 2))
    assert metrics.iou(UNION_AB, small) == pytest.approx(2 / 4)
    assert metrics.dice(EMPTY, EMPTY) == 1.0 and metrics.iou(EMPTY, EMPTY) == 1.0
    assert metrics.dice(EMPTY, A) == 0.0 and metrics.iou(A, EMPTY) == 0.0
    assert metrics.dice(A, B) == 0.0


def test_masks_accept_torch_tensors_and_threshold_soft_masks_at_half():
    soft = torch.tensor([0.9, 0.51, 0.5, 0.2, 0.0, 0.7])  # -> 1 1 0 0 0 1
    assert metrics.iou(soft, np.array([1, 1, 0, 0, 0, 0])) == pytest.approx(2 / 3)
    assert metrics.dice(torch.from_numpy(UNION_AB), torch.from_numpy(A)) == pytest.approx(2 * 2 / 6)
    with pytest.raises(ValueError, match="shape"):
        metrics.dice(A, np.ones(5))


def test_pairwise_iou_distance_matches_loop():
    rng = np.random.default_rng(0)
    set_a = rng.random((5, 7, 6)) > 0.6
    set_b = rng.random((3, 7, 6)) > 0.4
    set_a[2] = False
    set_b[1] = False  # empty vs empty must give distance 0
    expected = np.array([[1 - metrics.iou(a, b) for b in set_b] for a in set_a])
    np.testing.assert_allclose(metrics.pairwise_iou_distance(set_a, set_b), expected, atol=1e-12)
    assert metrics.pairwise_iou_distance(set_a, set_b)[2, 1] == 0.0


def test_ged_hand_computation_both_pair_conventions():
    samples, references = np.stack([A, B]), np.stack([UNION_AB, TAIL])
    # d(A, A|B) = d(B, A|B) = 1 - 2/4 = 1/2; d(A, TAIL) = d(B, TAIL) = 1; cross mean = (1/2+1/2+1+1)/4 = 3/4.
    # d(A, B) = d(A|B, TAIL) = 1: within means are 1 over i != j and 2/4 = 1/2 with the i == j pairs.
    assert metrics.generalized_energy_distance(samples, references) == pytest.approx(2 * 0.75 - 1 - 1)
    assert metrics.generalized_energy_distance(samples, references, include_self_pairs=True) == pytest.approx(
        2 * 0.75 - 0.5 - 0.5)
    assert metrics.sample_diversity(samples) == pytest.approx(1.0)
    assert metrics.sample_diversity(samples, include_self_pairs=True) == pytest.approx(0.5)


def test_ged_of_disjoint_and_empty_sets():
    # Samples always A, raters always B (disjoint): d(S, Y) = 1, no spread -> GED = 2 under both conventions.
    for include_self_pairs in (False, True):
        assert metrics.generalized_energy_distance(np.stack([A, A, A]), np.stack([B, B]),
                                                   include_self_pairs) == pytest.approx(2.0)
    # Empty vs empty is distance 0: predicting "no lesion" for a lesion-free image is perfect.
    assert metrics.generalized_energy_distance(np.stack([EMPTY] * 3), np.stack([EMPTY] * 4)) == 0.0
    assert metrics.generalized_energy_distance(np.stack([EMPTY] * 3), np.stack([A] * 4)) == pytest.approx(2.0)


def test_ged_of_identical_sample_sets():
    rng = np.random.default_rng(1)
    masks = rng.random((4, 8, 8)) > 0.5
    n = len(masks)
    off_diagonal_sum = sum(1 - metrics.iou(masks[i], masks[j]) for i in range(n) for j in range(n) if i != j)
    assert off_diagonal_sum > 0
    # i == j included: the energy distance of identical empirical distributions is exactly 0.
    assert metrics.generalized_energy_distance(masks, masks, include_self_pairs=True) == pytest.approx(0, abs=1e-12)
    # i != j (default): 2 S/n^2 - 2 S/(n(n-1)) = -2 S / (n^2 (n-1)), slightly negative for a finite set.
    assert metrics.generalized_energy_distance(masks, masks) == pytest.approx(
        -2 * off_diagonal_sum / (n ** 2 * (n - 1)))


def test_ged_expectation_over_iid_draws_from_one_distribution():
    """Exact expectation over every draw of n samples and m raters from {A w.p. p, B w.p. 1-p}."""
    p, n, m = 0.3, 2, 3
    masks = {0: A, 1: UNION_AB}
    c = 2 * p * (1 - p) * (1 - metrics.iou(A, UNION_AB))  # E[d(X, X')] for independent X, X'
    expected = {False: 0.0, True: 0.0}
    for draw in itertools.product((0, 1), repeat=n + m):
        probability = math.prod(p if k == 0 else 1 - p for k in draw)
        samples = np.stack([masks[k] for k in draw[:n]])
        references = np.stack([masks[k] for k in draw[n:]])
        for include_self_pairs in expected:
            expected[include_self_pairs] += probability * metrics.generalized_energy_distance(
                samples, references, include_self_pairs)
    assert expected[False] == pytest.approx(0.0, abs=1e-12)  # unbiased: same distribution -> 0
    assert expected[True] == pytest.approx(c * (1 / n + 1 / m))  # biased upwards by c (1/n + 1/m)


def test_voxel_variance_is_population_bernoulli_variance():
    samples = np.array([[0, 1, 1, 1, 1], [0, 0, 1, 1, 1], [0, 0, 0, 1, 1], [0, 0, 0, 0, 1]])  # p = 0, 1/4 .. 1
    variance = metrics.voxel_variance(samples)
    np.testing.assert_allclose(variance, [0, 3 / 16, 1 / 4, 3 / 16, 0])
    assert variance.dtype == np.float32
    rng = np.random.default_rng(2)
    random_samples = rng.random((7, 5, 6)) > 0.5
    np.testing.assert_allclose(metrics.voxel_variance(torch.from_numpy(random_samples)),
                               random_samples.var(axis=0, ddof=0), rtol=1e-6)


def test_rater_disagreement():
    raters = np.stack([A | B, A, A])
    np.testing.assert_array_equal(metrics.rater_disagreement(raters), B)


def brute_force_auroc(scores, labels):
    positives, negatives = scores[labels], scores[~labels]
    wins = sum((p > n) + 0.5 * (p == n) for p in positives for n in negatives)
    return wins / (len(positives) * len(negatives))


def test_auroc_matches_pair_count_with_ties():
    rng = np.random.default_rng(5)
    scores = rng.integers(0, 5, size=60).astype(float)  # many ties
    labels = rng.random(60) < 0.4 + 0.1 * scores
    assert metrics.auroc(scores, labels) == pytest.approx(brute_force_auroc(scores, labels), abs=1e-12)
    variance = rng.random((6, 7))
    disagreement = variance > 0.5
    assert metrics.auroc(torch.from_numpy(variance), disagreement) == 1.0
    assert metrics.auroc(-variance, disagreement) == 0.0


def test_auroc_needs_both_classes():
    with pytest.raises(ValueError, match="both positive and negative"):
        metrics.auroc(np.arange(4.0), np.zeros(4, bool))
