"""Exponential moving average (EMA) of a model's weights during training, with a warm-up of the decay."""

from __future__ import annotations

import contextlib

import torch


def ema_decay(decay: float, updates: int) -> float:
    """EMA decay after ``updates`` updates: ``min(decay, (1 + n) / (10 + n))``, so that early averages do not
    cling to the random initialisation (TensorFlow's ExponentialMovingAverage with num_updates)."""
    return min(decay, (1.0 + updates) / (10.0 + updates))


class WeightEMA:
    """Exponential moving average of a model's parameters: ``shadow <- d shadow + (1 - d) param``."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.updates = 0
        self.shadow = {name: p.detach().clone() for name, p in model.named_parameters()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module, names: list[str]) -> None:
        """One EMA step of the parameters ``names`` with decay :func:`ema_decay`."""
        weight = 1.0 - ema_decay(self.decay, self.updates)
        parameters = dict(model.named_parameters())
        for name in names:
            self.shadow[name].lerp_(parameters[name], weight)
        self.updates += 1

    @torch.no_grad()
    def copy_to(self, model: torch.nn.Module, names: list[str] | None = None) -> None:
        for name, p in model.named_parameters():
            if names is None or name in names:
                p.copy_(self.shadow[name])

    @contextlib.contextmanager
    def applied(self, model: torch.nn.Module):
        """Temporarily give ``model`` the EMA weights."""
        saved = {name: p.detach().clone() for name, p in model.named_parameters()}
        self.copy_to(model)
        try:
            yield model
        finally:
            with torch.no_grad():
                for name, p in model.named_parameters():
                    p.copy_(saved[name])
