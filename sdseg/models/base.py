"""Interface shared by every segmentation diffusion model (see docs/architecture.md)."""

from __future__ import annotations

import torch


class SegmentationDiffusionModel(torch.nn.Module):
    """A conditional diffusion model p(mask | image).

    Subclasses set ``kind`` and keep a JSON-serialisable ``config`` that rebuilds them. Images reach the model
    scaled to [-1, 1] with shape (B, C, H, W); masks are (B, 1, H, W) in {0, 1}.
    """

    kind: str = ""

    def __init__(self, config: dict):
        super().__init__()
        self.config = dict(config)

    def training_loss(self, image: torch.Tensor, mask: torch.Tensor, generator: torch.Generator | None = None):
        """Return ``(loss, logs)`` for one batch; ``logs`` maps names to floats."""
        raise NotImplementedError

    @torch.no_grad()
    def sample(self, image: torch.Tensor, num_samples: int, steps: int | None = None,
               generator: torch.Generator | None = None, sampler: str | None = None) -> torch.Tensor:
        """Return ``num_samples`` soft masks per image, shape (B, N, H, W), values in [0, 1]."""
        raise NotImplementedError

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
