"""Continuous-time schedule (sdseg.continuous_schedule) and loss weightings (sdseg.weighting), checked numerically."""

from __future__ import annotations

import math

import pytest
import torch

from sdseg import weighting
from sdseg.continuous_schedule import (alpha_sigma, cosine_gamma, input_scaled_gamma, log_snr, schedule_log_snr,
                                       snr)


def test_cosine_gamma_hand_values():
    t = torch.tensor([0.0, 0.5, 1.0, 1.0 / 3.0], dtype=torch.float64)
    expected = torch.tensor([1.0, 0.5, 0.0, 0.75], dtype=torch.float64)  # cos^2(pi/6) = 3/4
    assert torch.allclose(cosine_gamma(t), expected, atol=1e-12)


@pytest.mark.parametrize("b", [0.1, 0.3, 0.7])
def test_input_scaling_multiplies_the_snr_by_b_squared(b):
    gamma = torch.linspace(1e-4, 1 - 1e-4, 101, dtype=torch.float64)
    gamma_b = input_scaled_gamma(gamma, b)
    assert torch.allclose(gamma_b / (1 - gamma_b), b * b * gamma / (1 - gamma), rtol=1e-10)
    # The paper's form of the same formula.
    assert torch.allclose(gamma_b, b * b * gamma / ((b * b - 1) * gamma + 1), rtol=1e-12)
    assert bool((gamma_b < gamma).all())  # harder: noisier at every t


def test_input_scaling_keeps_the_end_points_and_b_one_is_the_identity():
    gamma = torch.tensor([0.0, 0.25, 1.0])
    assert torch.equal(input_scaled_gamma(gamma, 0.1)[[0, 2]], torch.tensor([0.0, 1.0]))
    assert torch.allclose(input_scaled_gamma(gamma, 1.0), gamma)


def test_log_snr_is_clipped_to_plus_minus_20():
    gamma = torch.tensor([1.0, 0.0, 0.5, 0.9, 1 - 1e-12], dtype=torch.float64)
    lam = log_snr(gamma)
    assert lam.tolist()[:4] == pytest.approx([20.0, -20.0, 0.0, math.log(9.0)])
    assert lam[4] == 20.0
    assert log_snr(gamma, clip=5.0).tolist()[:2] == [5.0, -5.0]


def test_schedule_log_snr_matches_closed_form_and_is_finite_in_float32():
    t = torch.linspace(0.0, 1.0, 1001)
    lam = schedule_log_snr(t, b=0.1)
    assert lam.dtype == torch.float32 and bool(torch.isfinite(lam).all())
    assert lam[0] == 20.0 and lam[-1] == -20.0
    assert bool((lam[1:] <= lam[:-1]).all())  # decreasing in t
    # Interior: log(b^2 cot^2(pi t / 2)), an independent way to write the same logSNR.
    t_in = torch.tensor([0.05, 0.3, 0.5, 0.8, 0.95], dtype=torch.float64)
    expected = 2 * math.log(0.1) + 2 * torch.log(1 / torch.tan(t_in * math.pi / 2))
    assert torch.allclose(schedule_log_snr(t_in, b=0.1), expected, rtol=1e-10)


def test_alpha_sigma_are_variance_preserving_and_accurate_at_the_clip():
    lam = torch.tensor([-20.0, -3.0, 0.0, 2.5, 20.0])
    alpha, sigma = alpha_sigma(lam)
    assert torch.allclose(alpha ** 2 + sigma ** 2, torch.ones(5), atol=1e-6)
    assert torch.allclose(alpha ** 2 / sigma ** 2, snr(lam), rtol=1e-4)
    assert sigma[-1].item() == pytest.approx(math.exp(-10.0), rel=1e-4)  # sigma^2 = sigmoid(-20) ~ e^-20
    assert alpha[0].item() == pytest.approx(math.exp(-10.0), rel=1e-4)
    assert torch.allclose(snr(torch.tensor([0.0, math.log(4.0)])), torch.tensor([1.0, 4.0]))


SNRS = torch.tensor([0.25, 1.0, 4.0], dtype=torch.float64)
LAMS = torch.log(SNRS)


@pytest.mark.parametrize("name, expected", [
    ("trunc_snr", [1.0, 1.0, 4.0]),
    ("snr_plus_one", [1.25, 2.0, 5.0]),
    ("snr", [0.25, 1.0, 4.0]),
    ("uniform", [1.0, 1.0, 1.0]),
    ("sigmoid", [0.2, 0.5, 0.8]),  # sigmoid(log s) = s / (1 + s)
])
def test_weighting_values_by_hand(name, expected):
    assert weighting.loss_weighting(name)(LAMS).tolist() == pytest.approx(expected)


def test_sigmoid_weighting_bias_and_relation_to_kingma_gao():
    bias = math.log(4.0)
    w = weighting.loss_weighting("sigmoid", sigmoid_bias=bias)(LAMS)
    assert w.tolist() == pytest.approx([0.25 / 4.25, 0.2, 0.5])  # (s/4) / (1 + s/4)
    kingma_gao_eps_weight = torch.sigmoid(bias - LAMS)
    assert torch.allclose(SNRS * kingma_gao_eps_weight, math.exp(bias) * w)


def test_unknown_weighting_names_the_choices():
    with pytest.raises(ValueError, match="trunc_snr"):
        weighting.loss_weighting("snr_squared")
