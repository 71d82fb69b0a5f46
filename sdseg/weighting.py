"""Diffusion loss weightings as functions of the logSNR ``lambda`` (``SNR = exp(lambda)``).

Every weighting here multiplies the **x-space** squared error ``||x - x_hat||^2``. Because
``||eps - eps_hat||^2 = SNR ||x - x_hat||^2`` and ``||v - v_hat||^2 = (1 + SNR) ||x - x_hat||^2``
(Salimans & Ho, "Progressive Distillation", ICLR 2022, Sec. 4), "snr" is the usual eps-prediction loss,
"snr_plus_one" the usual v-prediction loss and "uniform" the plain x-prediction loss, whatever the network
predicts. Christensen et al. ("Diffusion Based Ambiguous Image Segmentation", SCIA 2025) compare such weightings
and find that those giving enough weight to the end of the diffusion process (high SNR) work well.
"""

from __future__ import annotations

from functools import partial
from typing import Callable

import torch

from sdseg.continuous_schedule import snr


def truncated_snr_weight(lam: torch.Tensor) -> torch.Tensor:
    """Truncated SNR ``w = max(SNR, 1)`` (Salimans & Ho 2022, Sec. 4; one of the weightings Christensen et al.
    compare; the default of our ambiguous model)."""
    return torch.clamp(snr(lam), min=1.0)


def snr_plus_one_weight(lam: torch.Tensor) -> torch.Tensor:
    """``w = SNR + 1``: the v-prediction MSE written in x-space (Salimans & Ho 2022, Sec. 4)."""
    return snr(lam) + 1.0


def snr_weight(lam: torch.Tensor) -> torch.Tensor:
    """``w = SNR``: the eps-prediction MSE written in x-space (Ho et al. 2020 "simple" loss)."""
    return snr(lam)


def uniform_weight(lam: torch.Tensor) -> torch.Tensor:
    """``w = 1``: the plain x-prediction MSE."""
    return torch.ones_like(lam)


def sigmoid_weight(lam: torch.Tensor, bias: float = 0.0) -> torch.Tensor:
    """``w = sigmoid(lambda - bias)`` on the x-space MSE.

    The "sigmoid" weighting of Kingma & Gao ("Understanding Diffusion Objectives as the ELBO with Simple Data
    Augmentation", NeurIPS 2023) weights the eps-space MSE by ``sigmoid(bias - lambda)``; since
    ``SNR sigmoid(bias - lambda) = exp(bias) sigmoid(lambda - bias)``, this x-space weighting is theirs divided
    by the constant ``exp(bias)``, used here as a per-sample weight with ``t ~ U(0, 1)`` like the others
    (without their ``-d lambda / dt`` factor). It tends to 1 (x-loss) at high SNR and to ``SNR exp(-bias)``
    (eps-loss) at low SNR.
    """
    return torch.sigmoid(lam - bias)


LOSS_WEIGHTINGS: dict[str, Callable[..., torch.Tensor]] = {
    "trunc_snr": truncated_snr_weight,
    "snr_plus_one": snr_plus_one_weight,
    "snr": snr_weight,
    "uniform": uniform_weight,
    "sigmoid": sigmoid_weight,
}


def loss_weighting(name: str, sigmoid_bias: float = 0.0) -> Callable[[torch.Tensor], torch.Tensor]:
    """The weighting ``lambda -> w`` called ``name`` (one of ``LOSS_WEIGHTINGS``); ``sigmoid_bias`` is the
    bias of "sigmoid" and is ignored by the others."""
    if name not in LOSS_WEIGHTINGS:
        raise ValueError(f"unknown loss weighting {name!r}; choose one of: {', '.join(LOSS_WEIGHTINGS)}")
    if name == "sigmoid":
        return partial(sigmoid_weight, bias=sigmoid_bias)
    return LOSS_WEIGHTINGS[name]
