"""Discrete-time diffusion (t = 0 .. T-1) shared by SDSeg and SegDiff: beta schedules, the forward process, the
z0 estimate, the deterministic DDIM step, the DDPM ancestral step and the reverse-process loop.

Conventions: ``alphas_cumprod[t]`` is abar_t for integer t in [0, T); abar at t = -1 ("after the last step") is 1,
so a step to t_prev = -1 returns the clean estimate. Per-sample abar values have shape (B, 1, 1, 1) and broadcast
over the sample. Timestep lists are explicit and decreasing; a 1-step list is [T-1] (never diffusers' "leading"
spacing, which would run a single step at t = 0).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from sdseg.noise import generator_device, standard_normal

SCHEDULE_KINDS = ("scaled_linear", "linear")
SAMPLERS = ("ddim", "ddpm")


def scaled_linear_betas(beta_start: float, beta_end: float, num_timesteps: int) -> torch.Tensor:
    """Stable Diffusion's "scaled_linear" betas: beta_t = (sqrt(b0) + t/(T-1) (sqrt(b1) - sqrt(b0)))^2.

    Rombach et al. 2022 (LDM); SDSeg (Lin et al. 2024) keeps Stable Diffusion's b0 = 0.0015, b1 = 0.0155, T = 1000.
    Returned in float64, shape (T,).
    """
    return torch.linspace(beta_start ** 0.5, beta_end ** 0.5, num_timesteps, dtype=torch.float64) ** 2


def linear_betas(beta_start: float, beta_end: float, num_timesteps: int) -> torch.Tensor:
    """DDPM linear betas: beta_t = b0 + t/(T-1) (b1 - b0) (Ho et al. 2020, Sec. 4; SegDiff, Amit et al. 2021,
    Sec. 3, uses b0 = 1e-4, b1 = 2e-2). Returned in float64, shape (T,)."""
    return torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)


def make_betas(schedule: dict) -> torch.Tensor:
    """Betas of a schedule config ``{"beta_schedule", "beta_start", "beta_end", "num_train_timesteps"}``."""
    kind = schedule.get("beta_schedule")
    if kind not in SCHEDULE_KINDS:
        raise ValueError(f"unknown beta schedule {kind!r}; use one of {', '.join(SCHEDULE_KINDS)}")
    make = scaled_linear_betas if kind == "scaled_linear" else linear_betas
    return make(float(schedule["beta_start"]), float(schedule["beta_end"]), int(schedule["num_train_timesteps"]))


def alphas_cumprod(betas: torch.Tensor) -> torch.Tensor:
    """abar_t = prod_{s<=t} (1 - beta_s) (Ho et al. 2020, Sec. 2, notation alpha_bar_t)."""
    return torch.cumprod(1.0 - betas, dim=0)


def alpha_bar_at(alphas_cumprod_table: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """abar at integer timesteps ``t`` (shape (B,)), with abar = 1 where t < 0; returned with shape (B, 1, 1, 1)."""
    t = t.to(alphas_cumprod_table.device).long()
    values = alphas_cumprod_table[t.clamp(min=0)]
    values = torch.where(t < 0, torch.ones_like(values), values)
    return values.view(-1, 1, 1, 1)


def q_sample(z0: torch.Tensor, eps: torch.Tensor, abar_t: torch.Tensor) -> torch.Tensor:
    """Forward process in closed form: z_t = sqrt(abar_t) z0 + sqrt(1 - abar_t) eps (Ho et al. 2020, eq. 4)."""
    return abar_t.sqrt() * z0 + (1.0 - abar_t).sqrt() * eps


def predict_z0_from_eps(z_t: torch.Tensor, eps_hat: torch.Tensor, abar_t: torch.Tensor) -> torch.Tensor:
    """Latent estimate z0_hat = (z_t - sqrt(1 - abar_t) eps_hat) / sqrt(abar_t).

    SDSeg (Lin et al. 2024, "latent estimation" for the single-step reverse process): the one-step inference and
    the latent loss both use this inversion of the forward process.
    """
    return (z_t - (1.0 - abar_t).sqrt() * eps_hat) / abar_t.sqrt()


def ddim_step(z_t: torch.Tensor, eps_hat: torch.Tensor, abar_t: torch.Tensor, abar_prev: torch.Tensor) -> torch.Tensor:
    """Deterministic DDIM step (eta = 0), Song et al. 2021, eq. 12 with sigma_t = 0:
    z_prev = sqrt(abar_prev) z0_hat + sqrt(1 - abar_prev) eps_hat. With abar_prev = 1 it returns z0_hat."""
    z0_hat = predict_z0_from_eps(z_t, eps_hat, abar_t)
    return abar_prev.sqrt() * z0_hat + (1.0 - abar_prev).sqrt() * eps_hat


def ddpm_posterior_mean(x_t: torch.Tensor, eps_hat: torch.Tensor, abar_t: torch.Tensor,
                        abar_prev: torch.Tensor) -> torch.Tensor:
    """DDPM reverse mean mu = (x_t - beta / sqrt(1 - abar_t) eps_hat) / sqrt(alpha) (Ho et al. 2020, eq. 11),
    for a possibly strided step t -> t_prev with alpha = abar_t / abar_prev and beta = 1 - alpha
    (the respacing of Nichol & Dhariwal 2021, Sec. 4)."""
    alpha = abar_t / abar_prev
    return (x_t - (1.0 - alpha) / (1.0 - abar_t).sqrt() * eps_hat) / alpha.sqrt()


def ddpm_posterior_variance(abar_t: torch.Tensor, abar_prev: torch.Tensor) -> torch.Tensor:
    """DDPM reverse variance beta_tilde = (1 - abar_prev) / (1 - abar_t) * beta (Ho et al. 2020, eq. 7; the
    "fixed small" choice), beta = 1 - abar_t / abar_prev. It is 0 at the last step (abar_prev = 1)."""
    return (1.0 - abar_prev) / (1.0 - abar_t) * (1.0 - abar_t / abar_prev)


def ddpm_step(x_t: torch.Tensor, eps_hat: torch.Tensor, abar_t: torch.Tensor, abar_prev: torch.Tensor,
              noise: torch.Tensor) -> torch.Tensor:
    """Ancestral DDPM step x_prev = mu + sqrt(beta_tilde) noise (Ho et al. 2020, Algorithm 2; used by SegDiff,
    Amit et al. 2021, Sec. 3). The last step (abar_prev = 1) adds no noise."""
    mean = ddpm_posterior_mean(x_t, eps_hat, abar_t, abar_prev)
    return mean + ddpm_posterior_variance(abar_t, abar_prev).sqrt() * noise


def strided_timesteps(num_train_timesteps: int, steps: int) -> list[int]:
    """Decreasing list of ``steps`` timesteps evenly spaced over [0, T) that always starts at T-1
    ("trailing" spacing): steps = 1 -> [T-1]; steps = T -> [T-1, ..., 0]."""
    if not 1 <= steps <= num_train_timesteps:
        raise ValueError(f"steps must be between 1 and {num_train_timesteps} (the training timesteps), got {steps}")
    stride = num_train_timesteps / steps
    return [int(round(num_train_timesteps - i * stride)) - 1 for i in range(steps)]


def random_timesteps(batch: int, num_train_timesteps: int, generator: torch.Generator | None, device) -> torch.Tensor:
    """Training timesteps t ~ U{0, ..., T-1}, shape (batch,), drawn on the generator's device (so a CPU generator
    gives the same timesteps for any model device), then moved to ``device``."""
    return torch.randint(0, num_train_timesteps, (batch,), generator=generator,
                         device=generator_device(generator, device)).to(device)


def reverse_process(predict_eps: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x_T: torch.Tensor,
                    timesteps: list[int], alphas_cumprod_table: torch.Tensor, sampler: str,
                    generator: torch.Generator | Sequence[torch.Generator] | None = None) -> torch.Tensor:
    """Run the reverse process from ``x_T`` over the decreasing ``timesteps`` and return the clean estimate.

    ``predict_eps(x_t, t)`` gets ``t`` as a (B,) long tensor. Each step goes from timesteps[i] to timesteps[i+1],
    the last one to t = -1 (abar = 1), so the result is the model's x0 estimate. ``sampler`` is "ddim"
    (:func:`ddim_step`) or "ddpm" (:func:`ddpm_step`, noise from ``generator``: one generator or one per batch row,
    see :func:`sdseg.continuous_samplers.standard_normal`).
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; use one of {', '.join(SAMPLERS)}")
    x = x_T
    batch = x.shape[0]
    for index, t in enumerate(timesteps):
        t_prev = timesteps[index + 1] if index + 1 < len(timesteps) else -1
        t_batch = torch.full((batch,), t, dtype=torch.long, device=x.device)
        abar_t = alpha_bar_at(alphas_cumprod_table, t_batch).to(x.dtype)
        abar_prev = alpha_bar_at(alphas_cumprod_table, torch.full_like(t_batch, t_prev)).to(x.dtype)
        eps_hat = predict_eps(x, t_batch)
        if sampler == "ddim":
            x = ddim_step(x, eps_hat, abar_t, abar_prev)
        else:
            noise = standard_normal(x.shape, generator, x.device, x.dtype)
            x = ddpm_step(x, eps_hat, abar_t, abar_prev, noise)
    return x
