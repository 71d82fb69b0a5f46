"""Residual-in-residual dense blocks (RRDB; Wang et al. 2018, ESRGAN, Sec. 3.1), SegDiff's image encoder G."""

from __future__ import annotations

import torch
from torch import nn

RESIDUAL_SCALE = 0.2  # ESRGAN's residual scaling beta
DENSE_LAYERS = 5
DENSE_BLOCKS_PER_RRDB = 3


class ResidualDenseBlock(nn.Module):
    """Five 3x3 convolutions, each seeing the block input and all earlier outputs (dense connections, LeakyReLU
    0.2 between them); the last maps back to ``channels`` and is added to the input scaled by beta = 0.2."""

    def __init__(self, channels: int, growth_channels: int):
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv2d(channels + i * growth_channels, growth_channels if i < DENSE_LAYERS - 1 else channels,
                      kernel_size=3, padding=1)
            for i in range(DENSE_LAYERS))
        self.activation = nn.LeakyReLU(0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for conv in self.convs[:-1]:
            features.append(self.activation(conv(torch.cat(features, dim=1))))
        return x + RESIDUAL_SCALE * self.convs[-1](torch.cat(features, dim=1))


class RRDB(nn.Module):
    """Three residual dense blocks inside an outer residual connection, also scaled by beta = 0.2."""

    def __init__(self, channels: int, growth_channels: int):
        super().__init__()
        self.blocks = nn.Sequential(*(ResidualDenseBlock(channels, growth_channels)
                                      for _ in range(DENSE_BLOCKS_PER_RRDB)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + RESIDUAL_SCALE * self.blocks(x)


class RRDBEncoder(nn.Module):
    """Image encoder: 3x3 conv to ``channels``, ``num_blocks`` RRDBs, a 3x3 trunk conv and a long skip
    (ESRGAN's trunk, without its upsampling head). Keeps the spatial size: (B, C_in, H, W) -> (B, channels, H, W)."""

    def __init__(self, in_channels: int, channels: int, num_blocks: int, growth_channels: int):
        super().__init__()
        self.head = nn.Conv2d(in_channels, channels, kernel_size=3, padding=1)
        self.blocks = nn.Sequential(*(RRDB(channels, growth_channels) for _ in range(num_blocks)))
        self.trunk = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        features = self.head(image)
        return features + self.trunk(self.blocks(features))
