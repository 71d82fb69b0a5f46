"""Samplers for continuous-time diffusion models parameterised by the logSNR ``lambda(t)``.

``z_t = alpha_t x + sigma_t eps`` with ``alpha_t^2 = sigmoid(lambda_t)``, ``sigma_t^2 = sigmoid(-lambda_t)``
(see :mod:`sdseg.continuous_schedule`). The network's output is turned into an estimate ``x_hat`` of the clean
data; both samplers walk a uniform time grid from t = 1 to t = 0 and return the last ``x_hat`` itself (no noise
is added at the last step), as in Christensen et al., "Diffusion Based Ambiguous Image Segmentation" (SCIA 2025).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from sdseg.continuous_schedule import alpha_sigma
from sdseg.noise import standard_normal

PREDICTIONS = ("x", "v", "eps")
SAMPLERS = ("ddpm", "ddim")


def x_from_eps(z: torch.Tensor, eps: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """``x = (z - sigma eps) / alpha`` (inverting ``z = alpha x + sigma eps``; Ho et al. 2020, Eq. 4)."""
    return (z - sigma * eps) / alpha


def eps_from_x(z: torch.Tensor, x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """``eps = (z - alpha x) / sigma`` (inverting ``z = alpha x + sigma eps``)."""
    return (z - alpha * x) / sigma


def x_from_v(z: torch.Tensor, v: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """``x = alpha z - sigma v`` for ``v = alpha eps - sigma x`` (Salimans & Ho 2022, Sec. 4)."""
    return alpha * z - sigma * v


def x_from_prediction(prediction: str, output: torch.Tensor, z: torch.Tensor, alpha: torch.Tensor,
                      sigma: torch.Tensor) -> torch.Tensor:
    """Estimate of ``x`` from a network ``output`` that predicts ``prediction`` ("x", "v" or "eps")."""
    if prediction == "x":
        return output
    if prediction == "v":
        return x_from_v(z, output, alpha, sigma)
    if prediction == "eps":
        return x_from_eps(z, output, alpha, sigma)
    raise ValueError(f"unknown prediction type {prediction!r}; choose one of: {', '.join(PREDICTIONS)}")


def vdm_posterior(z_t: torch.Tensor, x: torch.Tensor, lam_t: torch.Tensor, lam_s: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of ``q(z_s | z_t, x)`` for ``s < t`` (Kingma et al., VDM, NeurIPS 2021, Sec. 3.3, App. A):

    ``mean = (alpha_{t|s} sigma_s^2 / sigma_t^2) z_t + (alpha_s sigma_{t|s}^2 / sigma_t^2) x``,
    ``var = sigma_{t|s}^2 sigma_s^2 / sigma_t^2``, with ``alpha_{t|s} = alpha_t / alpha_s`` and
    ``sigma_{t|s}^2 = sigma_t^2 - alpha_{t|s}^2 sigma_s^2``.
    The ratio ``sigma_{t|s}^2 / sigma_t^2 = 1 - SNR(t) / SNR(s) = -expm1(lambda_t - lambda_s)`` is evaluated in
    that form, which stays accurate when both SNRs are tiny or huge.
    """
    alpha_t, sigma_t = alpha_sigma(lam_t)
    alpha_s, sigma_s = alpha_sigma(lam_s)
    ratio = -torch.expm1(lam_t - lam_s)
    mean = (alpha_t * sigma_s ** 2 / (alpha_s * sigma_t ** 2)) * z_t + alpha_s * ratio * x
    return mean, ratio * sigma_s ** 2


def ddpm_step(z_t: torch.Tensor, x_hat: torch.Tensor, lam_t: torch.Tensor, lam_s: torch.Tensor,
              noise: torch.Tensor) -> torch.Tensor:
    """Ancestral step ``z_s ~ q(z_s | z_t, x = x_hat)`` (VDM Sec. 3.3, ``p(z_s|z_t) = q(z_s|z_t, x_hat)``)."""
    mean, var = vdm_posterior(z_t, x_hat, lam_t, lam_s)
    return mean + var.sqrt() * noise


def ddim_step(z_t: torch.Tensor, x_hat: torch.Tensor, lam_t: torch.Tensor, lam_s: torch.Tensor) -> torch.Tensor:
    """Deterministic DDIM step (eta = 0): ``z_s = alpha_s x_hat + sigma_s eps_hat`` with
    ``eps_hat = (z_t - alpha_t x_hat) / sigma_t`` (Song et al., DDIM, ICLR 2021, Eq. 12)."""
    alpha_t, sigma_t = alpha_sigma(lam_t)
    alpha_s, sigma_s = alpha_sigma(lam_s)
    return alpha_s * x_hat + sigma_s * eps_from_x(z_t, x_hat, alpha_t, sigma_t)


def time_grid(steps: int) -> torch.Tensor:
    """The ``steps + 1`` times ``1, (steps - 1) / steps, ..., 0`` of a uniform sampler grid (float64)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"the number of sampling steps must be a positive integer, got {steps!r}")
    return torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)


def sample(denoise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
           log_snr_fn: Callable[[torch.Tensor], torch.Tensor], shape, steps: int, sampler: str = "ddpm",
           generator: torch.Generator | Sequence[torch.Generator] | None = None, device="cpu",
           dtype=torch.float32) -> torch.Tensor:
    """Draw ``x`` of ``shape`` by walking ``time_grid(steps)`` from pure noise ``z_1 ~ N(0, I)``.

    ``denoise(z_t, t)`` returns ``x_hat`` for a batch (``t`` has shape (B,)); ``log_snr_fn(t)`` is the schedule.
    At every step but the last, ``z_s`` comes from :func:`ddpm_step` or :func:`ddim_step`; the last step
    (``s = 0``) returns ``x_hat`` without adding noise. Noise comes from ``generator`` (see :func:`standard_normal`).
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of: {', '.join(SAMPLERS)}")
    times = time_grid(steps).to(device=device, dtype=dtype)
    lams = log_snr_fn(times)
    z = standard_normal(shape, generator, device, dtype)
    for i in range(steps - 1):
        x_hat = denoise(z, times[i].expand(shape[0]))
        if sampler == "ddpm":
            z = ddpm_step(z, x_hat, lams[i], lams[i + 1], standard_normal(shape, generator, device, dtype))
        else:
            z = ddim_step(z, x_hat, lams[i], lams[i + 1])
    return denoise(z, times[steps - 1].expand(shape[0]))
