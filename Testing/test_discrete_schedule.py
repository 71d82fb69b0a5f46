"""sdseg.discrete_schedule: beta schedules, forward process, z0 estimate, DDIM / DDPM steps, timestep lists and the
reverse-process loop, checked against independent computations of the same identities."""

from __future__ import annotations

import math

import pytest
import torch

from sdseg import discrete_schedule as ds

T = 1000


def sdseg_table():
    return ds.alphas_cumprod(ds.make_betas({"beta_schedule": "scaled_linear", "beta_start": 0.0015,
                                            "beta_end": 0.0155, "num_train_timesteps": T}))


def test_scaled_linear_betas_are_squares_of_evenly_spaced_roots():
    betas = ds.scaled_linear_betas(0.0015, 0.0155, T)
    assert betas.shape == (T,)
    assert betas[0].item() == pytest.approx(0.0015, abs=1e-12)
    assert betas[-1].item() == pytest.approx(0.0155, abs=1e-12)
    roots = betas.sqrt()
    steps = roots[1:] - roots[:-1]
    assert torch.allclose(steps, torch.full_like(steps, (math.sqrt(0.0155) - math.sqrt(0.0015)) / (T - 1)))
    # Not the plain linear schedule: the midpoint is below the linear midpoint (square of the mean root).
    assert betas[T // 2].item() < (0.0015 + 0.0155) / 2 - 1e-4


def test_linear_betas_endpoints_and_even_spacing():
    betas = ds.linear_betas(1e-4, 2e-2, T)
    assert betas.shape == (T,)
    assert betas[0].item() == pytest.approx(1e-4, abs=1e-12)
    assert betas[-1].item() == pytest.approx(2e-2, abs=1e-12)
    steps = betas[1:] - betas[:-1]
    assert torch.allclose(steps, torch.full_like(steps, (2e-2 - 1e-4) / (T - 1)))


def test_make_betas_dispatches_and_rejects_unknown_schedules():
    linear = ds.make_betas({"beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 2e-2, "num_train_timesteps": 10})
    assert torch.equal(linear, ds.linear_betas(1e-4, 2e-2, 10))
    with pytest.raises(ValueError, match="scaled_linear"):
        ds.make_betas({"beta_schedule": "cosine", "beta_start": 0, "beta_end": 1, "num_train_timesteps": 10})


def test_alphas_cumprod_is_the_running_product():
    betas = ds.linear_betas(1e-4, 2e-2, 50)
    table = ds.alphas_cumprod(betas)
    for t in (0, 7, 49):
        assert table[t].item() == pytest.approx(math.prod(1.0 - b for b in betas[: t + 1].tolist()), rel=1e-12)
    assert bool((table[1:] < table[:-1]).all())


def test_alpha_bar_at_gathers_and_is_one_before_the_first_step():
    table = sdseg_table()
    values = ds.alpha_bar_at(table, torch.tensor([-1, 0, 999]))
    assert values.shape == (3, 1, 1, 1)
    assert values.flatten().tolist() == [1.0, table[0].item(), table[999].item()]


def test_z0_estimate_recovers_z0_exactly_when_eps_hat_is_eps():
    generator = torch.Generator().manual_seed(0)
    z0 = torch.randn(4, 4, 8, 8, generator=generator, dtype=torch.float64)
    eps = torch.randn(4, 4, 8, 8, generator=generator, dtype=torch.float64)
    abar = ds.alpha_bar_at(sdseg_table(), torch.tensor([0, 10, 500, 999]))
    z_t = ds.q_sample(z0, eps, abar)
    assert torch.allclose(ds.predict_z0_from_eps(z_t, eps, abar), z0, atol=1e-10)
    # And it is sensitive to the eps estimate (the test could fail).
    assert not torch.allclose(ds.predict_z0_from_eps(z_t, eps + 0.1, abar), z0, atol=1e-3)


def test_q_sample_keeps_unit_variance_for_unit_variance_data():
    generator = torch.Generator().manual_seed(1)
    z0 = torch.randn(200_000, generator=generator, dtype=torch.float64).view(-1, 1, 1, 1)
    eps = torch.randn(200_000, generator=generator, dtype=torch.float64).view(-1, 1, 1, 1)
    abar = ds.alpha_bar_at(sdseg_table(), torch.tensor([300]))
    assert ds.q_sample(z0, eps, abar).std().item() == pytest.approx(1.0, abs=0.01)


def test_ddim_step_with_true_eps_lands_on_the_forward_marginal():
    generator = torch.Generator().manual_seed(2)
    z0 = torch.randn(3, 4, 5, 5, generator=generator, dtype=torch.float64)
    eps = torch.randn(3, 4, 5, 5, generator=generator, dtype=torch.float64)
    table = sdseg_table()
    abar_t = ds.alpha_bar_at(table, torch.tensor([999] * 3))
    abar_prev = ds.alpha_bar_at(table, torch.tensor([499] * 3))
    z_t = ds.q_sample(z0, eps, abar_t)
    assert torch.allclose(ds.ddim_step(z_t, eps, abar_t, abar_prev), ds.q_sample(z0, eps, abar_prev), atol=1e-10)
    last = ds.ddim_step(z_t, eps, abar_t, ds.alpha_bar_at(table, torch.tensor([-1] * 3)))
    assert torch.allclose(last, z0, atol=1e-10)


def test_ddpm_posterior_matches_the_x0_form_of_q_posterior():
    generator = torch.Generator().manual_seed(3)
    x0 = torch.randn(2, 1, 6, 6, generator=generator, dtype=torch.float64)
    eps = torch.randn(2, 1, 6, 6, generator=generator, dtype=torch.float64)
    betas = ds.linear_betas(1e-4, 2e-2, T)
    table = ds.alphas_cumprod(betas)
    for t, t_prev in ((600, 599), (999, 899), (9, -1)):
        abar_t = ds.alpha_bar_at(table, torch.tensor([t, t]))
        abar_prev = ds.alpha_bar_at(table, torch.tensor([t_prev, t_prev]))
        x_t = ds.q_sample(x0, eps, abar_t)
        beta = 1 - abar_t / abar_prev
        # DDPM eq. 7: mu_tilde = sqrt(abar_prev) beta / (1 - abar_t) x0
        #                      + sqrt(1 - beta) (1 - abar_prev) / (1 - abar_t) x_t
        expected = (abar_prev.sqrt() * beta / (1 - abar_t) * x0
                    + (1 - beta).sqrt() * (1 - abar_prev) / (1 - abar_t) * x_t)
        assert torch.allclose(ds.ddpm_posterior_mean(x_t, eps, abar_t, abar_prev), expected, atol=1e-10)
    consecutive = ds.ddpm_posterior_variance(table[600:601], table[599:600])
    assert consecutive.item() == pytest.approx(betas[600].item() * (1 - table[599].item()) / (1 - table[600].item()))
    assert ds.ddpm_posterior_variance(table[9:10], torch.ones(1, dtype=torch.float64)).item() == 0.0


def test_ddpm_last_step_adds_no_noise():
    table = ds.alphas_cumprod(ds.linear_betas(1e-4, 2e-2, T))
    x_t = torch.randn(1, 1, 4, 4)
    eps_hat = torch.randn(1, 1, 4, 4)
    abar_t, abar_prev = table[9].float().view(1, 1, 1, 1), torch.ones(1, 1, 1, 1)
    first = ds.ddpm_step(x_t, eps_hat, abar_t, abar_prev, torch.randn(1, 1, 4, 4))
    second = ds.ddpm_step(x_t, eps_hat, abar_t, abar_prev, torch.randn(1, 1, 4, 4))
    assert torch.equal(first, second)
    assert torch.allclose(first, ds.predict_z0_from_eps(x_t, eps_hat, abar_t))


def test_strided_timesteps_start_at_T_minus_1():
    assert ds.strided_timesteps(T, 1) == [999]
    assert ds.strided_timesteps(T, 4) == [999, 749, 499, 249]
    assert ds.strided_timesteps(T, 100)[:3] == [999, 989, 979] and ds.strided_timesteps(T, 100)[-1] == 9
    assert ds.strided_timesteps(T, T) == list(range(T - 1, -1, -1))
    for steps in (3, 7, 333):
        timesteps = ds.strided_timesteps(T, steps)
        assert len(timesteps) == steps and timesteps[0] == T - 1
        assert all(a > b >= 0 for a, b in zip(timesteps, timesteps[1:]))
    for bad in (0, T + 1):
        with pytest.raises(ValueError, match="steps must be between 1 and 1000"):
            ds.strided_timesteps(T, bad)


def oracle(z0, table):
    """eps predictor that knows z0: eps = (x_t - sqrt(abar_t) z0) / sqrt(1 - abar_t); records the timesteps."""
    calls = []

    def predict_eps(x_t, t):
        calls.append(t.tolist())
        abar_t = ds.alpha_bar_at(table, t).to(x_t.dtype)
        return (x_t - abar_t.sqrt() * z0) / (1 - abar_t).sqrt()

    return predict_eps, calls


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
@pytest.mark.parametrize("steps", [1, 5])
def test_reverse_process_with_an_oracle_recovers_z0(sampler, steps):
    generator = torch.Generator().manual_seed(4)
    z0 = torch.randn(2, 4, 3, 3, generator=generator, dtype=torch.float64)
    table = sdseg_table()
    predict_eps, calls = oracle(z0, table)
    x_T = torch.randn(2, 4, 3, 3, generator=generator, dtype=torch.float64)
    timesteps = ds.strided_timesteps(T, steps)
    result = ds.reverse_process(predict_eps, x_T, timesteps, table, sampler, torch.Generator().manual_seed(5))
    assert torch.allclose(result, z0, atol=1e-8)
    assert calls == [[t, t] for t in timesteps]


def test_reverse_process_rejects_unknown_samplers():
    with pytest.raises(ValueError, match="ddim, ddpm"):
        ds.reverse_process(lambda x, t: x, torch.zeros(1, 1, 2, 2), [999], sdseg_table(), "euler")


def test_training_timesteps_follow_the_generator_and_cover_the_range():
    a = ds.random_timesteps(10_000, T, torch.Generator().manual_seed(7), "cpu")
    assert torch.equal(a, ds.random_timesteps(10_000, T, torch.Generator().manual_seed(7), "cpu"))
    assert not torch.equal(a, ds.random_timesteps(10_000, T, torch.Generator().manual_seed(8), "cpu"))
    assert a.dtype == torch.long and a.min().item() >= 0 and a.max().item() <= T - 1
    assert a.min().item() < 10 and a.max().item() > T - 10
