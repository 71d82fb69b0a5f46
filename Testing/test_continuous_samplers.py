"""Continuous-time samplers (sdseg.continuous_samplers): conversions, VDM posterior, DDPM/DDIM loops."""

from __future__ import annotations

import math

import pytest
import torch

from sdseg.continuous_samplers import (ddim_step, ddpm_step, eps_from_x, sample, time_grid,
                                       vdm_posterior, x_from_eps, x_from_prediction, x_from_v)
from sdseg.continuous_schedule import alpha_sigma, schedule_log_snr
from sdseg.noise import standard_normal

LAM_PAIRS = [(-20.0, -19.0), (-5.0, -1.0), (-1.0, 2.0), (0.5, 6.0), (3.0, 20.0), (-20.0, 20.0)]


def _noisy(lam: float, shape=(4, 1, 5, 5), seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64).tanh()
    eps = torch.randn(shape, generator=g, dtype=torch.float64)
    alpha, sigma = alpha_sigma(torch.tensor(lam, dtype=torch.float64))
    return x, eps, alpha, sigma, alpha * x + sigma * eps


@pytest.mark.parametrize("lam", [-8.0, -1.0, 0.0, 3.0, 8.0])
def test_x_eps_v_conversions_invert_each_other(lam):
    x, eps, alpha, sigma, z = _noisy(lam)
    v = alpha * eps - sigma * x
    assert torch.allclose(x_from_eps(z, eps, alpha, sigma), x, atol=1e-9)
    assert torch.allclose(eps_from_x(z, x, alpha, sigma), eps, atol=1e-9)
    assert torch.allclose(x_from_v(z, v, alpha, sigma), x, atol=1e-12)
    for kind, output in (("x", x), ("eps", eps), ("v", v)):
        assert torch.allclose(x_from_prediction(kind, output, z, alpha, sigma), x, atol=1e-9)
    with pytest.raises(ValueError, match="eps"):
        x_from_prediction("score", eps, z, alpha, sigma)


@pytest.mark.parametrize("lam_t, lam_s", LAM_PAIRS)
def test_vdm_posterior_matches_gaussian_conditioning(lam_t, lam_s):
    """Closed form by Bayes' rule for z_s ~ N(alpha_s x, sigma_s^2), z_t | z_s ~ N(alpha_ts z_s, sigma_ts^2)."""
    x, _, _, _, z_t = _noisy(lam_t)
    lt, ls = torch.tensor(lam_t, dtype=torch.float64), torch.tensor(lam_s, dtype=torch.float64)
    mean, var = vdm_posterior(z_t, x, lt, ls)
    alpha_t, sigma_t = alpha_sigma(lt)
    alpha_s, sigma_s = alpha_sigma(ls)
    alpha_ts = alpha_t / alpha_s
    sigma2_ts = sigma_t ** 2 - alpha_ts ** 2 * sigma_s ** 2
    precision = 1 / sigma_s ** 2 + alpha_ts ** 2 / sigma2_ts
    expected_var = 1 / precision
    expected_mean = expected_var * (alpha_s * x / sigma_s ** 2 + alpha_ts * z_t / sigma2_ts)
    assert var.item() == pytest.approx(expected_var.item(), rel=1e-6)
    assert torch.allclose(mean, expected_mean, rtol=1e-6, atol=1e-9)


def test_ddpm_step_is_the_posterior_mean_plus_scaled_noise():
    x, eps, _, _, z_t = _noisy(-1.0)
    lt, ls = torch.tensor(-1.0, dtype=torch.float64), torch.tensor(2.0, dtype=torch.float64)
    mean, var = vdm_posterior(z_t, x, lt, ls)
    assert torch.equal(ddpm_step(z_t, x, lt, ls, torch.zeros_like(x)), mean)
    assert torch.allclose(ddpm_step(z_t, x, lt, ls, eps) - mean, var.sqrt() * eps)


def test_ddim_step_with_the_true_x_moves_along_the_same_noise():
    x, eps, _, _, z_t = _noisy(-2.0)
    lt, ls = torch.tensor(-2.0, dtype=torch.float64), torch.tensor(4.0, dtype=torch.float64)
    alpha_s, sigma_s = alpha_sigma(ls)
    assert torch.allclose(ddim_step(z_t, x, lt, ls), alpha_s * x + sigma_s * eps, atol=1e-12)


def test_time_grid_and_bad_step_counts():
    assert time_grid(10).tolist() == pytest.approx([1 - i / 10 for i in range(11)])
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="positive integer"):
            time_grid(bad)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_sample_calls_the_denoiser_at_each_time_and_returns_the_last_x_hat_exactly(sampler):
    calls, outputs = [], []

    def denoise(z, t):
        calls.append((z.clone(), t.clone()))
        outputs.append(torch.tanh(z * 3.0 + t.view(-1, 1, 1, 1)))
        return outputs[-1]

    shape = (3, 1, 4, 4)
    result = sample(denoise, schedule_log_snr, shape, 10, sampler, torch.Generator().manual_seed(5))
    assert [c[1][0].item() for c in calls] == pytest.approx([1 - i / 10 for i in range(10)])
    assert all(c[1].shape == (3,) for c in calls)
    assert result is outputs[-1]
    assert torch.equal(calls[0][0], torch.randn(shape, generator=torch.Generator().manual_seed(5)))


def test_sample_is_reproducible_with_a_seed_and_rejects_unknown_samplers():
    def denoise(z, t):
        return torch.tanh(z)

    def run(seed):
        return sample(denoise, schedule_log_snr, (2, 1, 4, 4), 5, "ddpm", torch.Generator().manual_seed(seed))

    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1), run(2))
    with pytest.raises(ValueError, match="ddim"):
        sample(denoise, schedule_log_snr, (1, 1, 2, 2), 5, "euler")


def test_one_generator_per_batch_row_makes_each_row_independent_of_the_batch():
    def generators(seeds):
        return [torch.Generator().manual_seed(seed) for seed in seeds]

    rows = standard_normal((3, 1, 4, 4), generators([7, 8, 9]), "cpu")
    assert torch.equal(rows[1], torch.randn((1, 4, 4), generator=torch.Generator().manual_seed(8)))

    def denoise(z, t):
        return torch.tanh(2 * z)

    alone = sample(denoise, schedule_log_snr, (1, 1, 4, 4), 5, "ddpm", generators([8]))
    together = sample(denoise, schedule_log_snr, (3, 1, 4, 4), 5, "ddpm", generators([7, 8, 9]))
    assert torch.equal(alone[0], together[1])
    with pytest.raises(ValueError, match="one per batch row"):
        standard_normal((3, 2), generators([1, 2]), "cpu")


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_samplers_reproduce_a_two_point_distribution_with_the_exact_denoiser(sampler):
    """Data x = +1 with probability p, -1 otherwise: E[x | z_t] = tanh(alpha z / sigma^2 + atanh(2p - 1))."""
    p = 0.8

    def exact_denoiser(z, t):
        alpha, sigma = alpha_sigma(schedule_log_snr(t[:1]))  # every row is at the same time
        return torch.tanh(alpha * z / sigma ** 2 + math.atanh(2 * p - 1))

    x = sample(exact_denoiser, schedule_log_snr, (10000, 1), 200, sampler, torch.Generator().manual_seed(0),
               dtype=torch.float64)
    assert (x > 0).double().mean().item() == pytest.approx(p, abs=0.02)
    assert x.abs().min().item() > 0.99
