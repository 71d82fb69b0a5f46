"""SegDiff (Amit et al. 2021, "SegDiff: Image Segmentation with Diffusion Probabilistic Models"), a pixel-space
baseline.

The noisy mask x_t (masks mapped to {-1, 1}) is encoded by F (a 3x3 convolution) and the image by G (an RRDB
encoder); the sum F(x_t) + G(I) goes through a diffusers ``UNet2DModel`` trunk (encoder-decoder with the timestep
embedding) that predicts eps. Linear betas 1e-4 -> 2e-2 over T = 1000 training steps, DDPM ancestral sampling over
a strided subset of the timesteps (``config["sampling_steps"]``). G(I) is computed once per image and reused for
every sample and step.

Consensus: SegDiff's prediction is the average of several independent samples (Amit et al. 2021, abstract: the
model "is applied multiple times, and the results are merged"); here, as for every model, each of the N samples
returned by ``sample()`` is binarised at 0.5 and the consensus is their majority vote (computed downstream,
sdseg.inference.consensus_mask, not by this class).
"""

from __future__ import annotations

from typing import Sequence

import torch

from sdseg.discrete_schedule import (SAMPLERS, alpha_bar_at, q_sample,
                                     random_timesteps, reverse_process, strided_timesteps)
from sdseg.models.rrdb import RRDBEncoder
from sdseg.models.discrete_model import (DiscreteDiffusionModel, build_unet, check_sample_inputs,
                                         unet_size_multiple)
from sdseg.noise import standard_normal

_COMMON = {
    "image_channels": 1,
    "preprocessing": {"normalization": "percentile", "percentiles": [0.5, 99.5]},
    "schedule": {"beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 2e-2, "num_train_timesteps": 1000},
    "sampling_steps": 100,
    "sampler": "ddpm",
}

PRESETS = {
    # < 0.5 M parameters, for tests.
    "tiny": {**_COMMON, "image_size": 32, "sampling_steps": 10, "feature_channels": 8,
             "rrdb": {"num_blocks": 1, "growth_channels": 8},
             "unet": {"block_out_channels": [16, 32], "layers_per_block": 1, "attention": [False, True],
                      "attention_head_dim": 8, "norm_num_groups": 8}},
    # CPU default, about 3 M parameters: pixel-space diffusion with 100 steps per sample is costly on a CPU,
    # so 64 x 64 inputs and a narrow UNet.
    "small": {**_COMMON, "image_size": 64, "feature_channels": 32,
              "rrdb": {"num_blocks": 2, "growth_channels": 16},
              "unet": {"block_out_channels": [32, 64, 128], "layers_per_block": 1,
                       "attention": [False, False, True], "attention_head_dim": 32, "norm_num_groups": 16}},
    # Improved-DDPM-size UNet for 256 x 256 inputs (128 base channels, multipliers 1,1,2,2,4,4, attention at
    # 16 x 16 and below) with a 128-channel, 10-RRDB image encoder.
    "paper": {**_COMMON, "image_size": 256, "feature_channels": 128,
              "rrdb": {"num_blocks": 10, "growth_channels": 32},
              "unet": {"block_out_channels": [128, 128, 256, 256, 512, 512], "layers_per_block": 2,
                       "attention": [False, False, False, False, True, True], "attention_head_dim": 64,
                       "norm_num_groups": 32}},
}


def eps_mse_loss(eps_hat: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """DDPM's simple objective L = mean ||eps - eps_theta(x_t, t)||^2 (Ho et al. 2020, eq. 14), SegDiff's loss."""
    return (eps_hat - eps).pow(2).mean()


class SegDiffModel(DiscreteDiffusionModel):
    """SegDiff (see the module docstring): eps_theta(x_t, I, t) = UNet(F(x_t) + G(I), t)."""

    kind = "segdiff"
    PRESETS = PRESETS

    def __init__(self, config: dict):
        super().__init__(config)
        channels = self.config["feature_channels"]
        self.mask_encoder = torch.nn.Conv2d(1, channels, kernel_size=3, padding=1)
        self.image_encoder = RRDBEncoder(self.config["image_channels"], channels,
                                         self.config["rrdb"]["num_blocks"], self.config["rrdb"]["growth_channels"])
        self.unet = build_unet(self.config["unet"], channels, 1, self.config["image_size"])

    def predict_eps(self, x_t: torch.Tensor, t: torch.Tensor, image_features: torch.Tensor) -> torch.Tensor:
        """eps estimate from the summed encodings F(x_t) + G(I) (``image_features`` = G(I))."""
        return self.unet(self.mask_encoder(x_t) + image_features, t).sample

    def training_loss(self, image: torch.Tensor, mask: torch.Tensor, generator: torch.Generator | None = None,
                      stage: str = "main"):
        if stage != "main":
            raise ValueError(f"SegDiff trains in one stage ('main'), not {stage!r}")
        x0 = 2.0 * mask - 1.0
        t = random_timesteps(x0.shape[0], self.num_train_timesteps, generator, x0.device)
        eps = standard_normal(x0.shape, generator, x0.device, x0.dtype)
        x_t = q_sample(x0, eps, alpha_bar_at(self.alphas_cumprod, t).to(x0.dtype))
        loss = eps_mse_loss(self.predict_eps(x_t, t, self.image_encoder(image)), eps)
        return loss, {"loss": loss.item()}

    @torch.no_grad()
    def sample(self, image: torch.Tensor, num_samples: int, steps: int | None = None,
               generator: torch.Generator | Sequence[torch.Generator] | None = None,
               sampler: str | None = None) -> torch.Tensor:
        """``num_samples`` soft masks per image, (B, N, H, W) in [0, 1]: ``steps`` strided reverse steps
        (default ``config["sampling_steps"]``) with the DDPM ancestral step ("ddpm", default) or DDIM ("ddim"),
        from pure noise; soft mask = (x0 + 1) / 2 clamped to [0, 1]. ``generator`` may be one generator or B * N
        of them, one per sample, image-major (a sample then does not depend on the batch it runs in)."""
        check_sample_inputs(image, num_samples, self.config["image_channels"], unet_size_multiple(self.config["unet"]))
        sampler = self.config["sampler"] if sampler is None else sampler
        if sampler not in SAMPLERS:
            raise ValueError(f"SegDiff samplers are {', '.join(SAMPLERS)}, not {sampler!r}")
        steps = self.config[self.steps_config_key] if steps is None else steps
        timesteps = strided_timesteps(self.num_train_timesteps, steps)
        batch, _, height, width = image.shape
        image_features = self.image_encoder(image).repeat_interleave(num_samples, dim=0)
        x_T = standard_normal((batch * num_samples, 1, height, width), generator, image.device, image.dtype)
        x0 = reverse_process(lambda x_t, t: self.predict_eps(x_t, t, image_features), x_T, timesteps,
                             self.alphas_cumprod, sampler, generator)
        return ((x0 + 1.0) / 2.0).clamp(0.0, 1.0).view(batch, num_samples, height, width)
