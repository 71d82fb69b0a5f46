"""Continuous-time variance-preserving noise schedule with input scaling.

Used by the ambiguous-segmentation diffusion model of Christensen et al., "Diffusion Based Ambiguous Image
Segmentation" (SCIA 2025, arXiv:2504.05977), Sec. 3. Time runs from t = 0 (data) to t = 1 (noise); the noisy
sample is ``z_t = alpha(t) x + sigma(t) eps`` with ``alpha^2 + sigma^2 = 1``, parameterised by
``gamma(t) = alpha(t)^2`` (Kingma et al., "Variational Diffusion Models", NeurIPS 2021, Sec. 3).
All functions take and return tensors element-wise.
"""

from __future__ import annotations

import math

import torch

DEFAULT_INPUT_SCALE = 0.1
DEFAULT_LOG_SNR_CLIP = 20.0


def cosine_gamma(t: torch.Tensor) -> torch.Tensor:
    """Cosine schedule ``gamma(t) = cos^2(pi t / 2)`` (Christensen et al. Sec. 3; Nichol & Dhariwal 2021)."""
    return torch.cos(t * (math.pi / 2)) ** 2


def input_scaled_gamma(gamma: torch.Tensor, b: float) -> torch.Tensor:
    """Input-scaled schedule ``gamma_b = b^2 gamma / ((b^2 - 1) gamma + 1)`` (Christensen et al. Sec. 3).

    It is the variance-preserving schedule whose SNR is that of ``gamma`` times ``b^2``
    (``gamma_b / (1 - gamma_b) = b^2 gamma / (1 - gamma)``), i.e. the effect of scaling the data by ``b``
    without changing the unit variance of ``z_t``. ``b < 1`` makes the schedule harder (noisier).
    The denominator is evaluated as ``b^2 gamma + (1 - gamma)`` so that ``gamma = 1`` maps exactly to 1.
    """
    b2 = b * b
    return b2 * gamma / (b2 * gamma + (1.0 - gamma))


def log_snr(gamma: torch.Tensor, clip: float = DEFAULT_LOG_SNR_CLIP) -> torch.Tensor:
    """``lambda = log(gamma / (1 - gamma))`` clipped to ``[-clip, clip]`` (Christensen et al. Sec. 3).

    The clipping keeps ``t = 0`` (gamma = 1) and ``t = 1`` (gamma = 0) finite.
    """
    return (torch.log(gamma) - torch.log1p(-gamma)).clamp(-clip, clip)


def snr(lam: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio ``SNR = alpha^2 / sigma^2 = exp(lambda)`` (VDM Sec. 3)."""
    return torch.exp(lam)


def alpha_sigma(lam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``alpha = sqrt(gamma)``, ``sigma = sqrt(1 - gamma)`` with ``gamma = sigmoid(lambda)`` (VDM Sec. 3).

    Taking them from the (clipped) logSNR keeps the clipped schedule variance preserving; ``1 - gamma`` is
    computed as ``sigmoid(-lambda)`` so that ``sigma`` stays accurate in float32 near ``lambda = 20``.
    """
    return torch.sqrt(torch.sigmoid(lam)), torch.sqrt(torch.sigmoid(-lam))


def schedule_log_snr(t: torch.Tensor, b: float = DEFAULT_INPUT_SCALE,
                     clip: float = DEFAULT_LOG_SNR_CLIP) -> torch.Tensor:
    """Clipped logSNR of the input-scaled cosine schedule at times ``t`` in [0, 1].

    Evaluated in float64 on the CPU (``1 - gamma`` underflows in float32 near t = 0; some accelerators have
    no float64) and returned on ``t``'s device in ``t``'s dtype.
    """
    lam = log_snr(input_scaled_gamma(cosine_gamma(t.detach().cpu().double()), b), clip)
    return lam.to(device=t.device, dtype=t.dtype)
