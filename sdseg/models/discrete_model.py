"""Plumbing shared by the discrete-time models (SDSeg, SegDiff): presets, the diffusers UNet, the noise table."""

from __future__ import annotations

import copy

import torch
from diffusers import UNet2DModel

from sdseg.discrete_schedule import alphas_cumprod, make_betas
from sdseg.models.base import SHARED_CONFIG_KEYS, SegmentationDiffusionModel


def merge_preset(presets: dict, name: str, overrides: dict) -> dict:
    """A deep copy of ``presets[name]`` with top-level ``overrides`` (its own keys or the keys every model takes,
    SHARED_CONFIG_KEYS); unknown names or keys raise ValueError."""
    if name not in presets:
        raise ValueError(f"unknown preset {name!r}; use one of {', '.join(presets)}")
    config = copy.deepcopy(presets[name])
    unknown = sorted(set(overrides) - set(config) - SHARED_CONFIG_KEYS)
    if unknown:
        raise ValueError(f"unknown config keys {unknown}; known keys: {', '.join(sorted(config))}")
    config.update(copy.deepcopy(overrides))
    return config


def build_unet(unet_config: dict, in_channels: int, out_channels: int, sample_size: int) -> UNet2DModel:
    """A diffusers ``UNet2DModel`` from ``{"block_out_channels", "layers_per_block", "attention" (one bool per
    level), "attention_head_dim", "norm_num_groups"}``; timesteps are the integers 0..T-1."""
    attention = list(unet_config["attention"])
    if len(attention) != len(unet_config["block_out_channels"]):
        raise ValueError("unet config: 'attention' needs one entry per 'block_out_channels' level")
    down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attention)
    up = tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention))
    return UNet2DModel(sample_size=sample_size, in_channels=in_channels, out_channels=out_channels,
                       block_out_channels=tuple(unet_config["block_out_channels"]),
                       layers_per_block=unet_config["layers_per_block"], down_block_types=down, up_block_types=up,
                       attention_head_dim=unet_config["attention_head_dim"],
                       norm_num_groups=unet_config["norm_num_groups"])


def unet_size_multiple(unet_config: dict) -> int:
    """Input sizes of a UNet from :func:`build_unet` must be multiples of this (one halving per extra level)."""
    return 2 ** (len(unet_config["block_out_channels"]) - 1)


def check_sample_inputs(image: torch.Tensor, num_samples: int, channels: int, multiple: int) -> None:
    """Raise ValueError saying what to do when ``sample()`` gets an unusable image batch or sample count."""
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
    if image.ndim != 4 or image.shape[1] != channels:
        raise ValueError(f"image must have shape (batch, {channels}, height, width), got {tuple(image.shape)}")
    if image.shape[2] % multiple or image.shape[3] % multiple:
        raise ValueError(f"image height and width must be multiples of {multiple} for this model, got "
                         f"{image.shape[2]}x{image.shape[3]}; resize to the model's image_size")


class DiscreteDiffusionModel(SegmentationDiffusionModel):
    """A model on a discrete T-step schedule ``config["schedule"]``; subclasses define ``PRESETS``.

    Registers the (non-persistent) buffer ``alphas_cumprod`` = abar_t, t = 0..T-1.
    """

    PRESETS: dict = {}

    def __init__(self, config: dict):
        super().__init__(config)
        self.register_buffer("alphas_cumprod", alphas_cumprod(make_betas(self.config["schedule"])).float(),
                             persistent=False)

    @classmethod
    def preset(cls, name: str, **overrides) -> dict:
        return merge_preset(cls.PRESETS, name, overrides)

    @property
    def num_train_timesteps(self) -> int:
        return int(self.config["schedule"]["num_train_timesteps"])
