"""SDSeg: latent diffusion segmentation with a single-step reverse process (Lin et al. 2024, MICCAI).

Pipeline: masks in {0, 1} are mapped to {-1, 1} and encoded by an f8 KL mask autoencoder into 4-channel latents,
scaled by ``config["latent_scale_factor"]`` (1/std of training latents) to unit variance. The image goes through
a trainable image encoder of the same architecture to a 4-channel image latent. The denoiser (diffusers
``UNet2DModel``, 8 input channels) sees the concatenation [noisy mask latent (0-3), image latent (4-7)] and predicts
eps under Stable Diffusion's scaled-linear schedule (0.0015 -> 0.0155, T = 1000). Training adds the latent
estimation loss |z0_hat - z0| to the noise loss. Inference runs one step at t = T-1 from pure noise (the z0
estimate), or k deterministic DDIM steps, then decodes.

Training runs in two stages: "autoencoder" (mask autoencoder only) then "diffusion" (image encoder + UNet, with
the autoencoder frozen). ``begin_stage("diffusion", batches)`` measures the latent scale factor once.
"""

from __future__ import annotations

import itertools
from typing import Iterable, Sequence

import torch

from sdseg.discrete_schedule import (alpha_bar_at, predict_z0_from_eps, q_sample, random_timesteps, reverse_process,
                                     strided_timesteps)
from sdseg.models.autoencoder import (DOWNSAMPLING_FACTOR, ImageEncoder, autoencoder_loss,
                                      build_mask_autoencoder)
from sdseg.models.discrete_model import (DiscreteDiffusionModel, build_unet, check_sample_inputs,
                                         unet_size_multiple)
from sdseg.noise import standard_normal

STAGES = ("autoencoder", "diffusion")
SCALE_FACTOR_MAX_BATCHES = 32

_COMMON = {
    "image_channels": 1,
    "preprocessing": {"normalization": "percentile", "percentiles": [0.5, 99.5]},
    "schedule": {"beta_schedule": "scaled_linear", "beta_start": 0.0015, "beta_end": 0.0155,
                 "num_train_timesteps": 1000},
    "latent_loss_weight": 1.0,
    "kl_weight": 1e-6,
    "latent_scale_factor": None,
    "sampling_steps": 1,
}

PRESETS = {
    # < 0.5 M parameters, for tests.
    "tiny": {**_COMMON, "image_size": 32,
             "autoencoder": {"block_out_channels": [8, 8, 16, 16], "layers_per_block": 1, "norm_num_groups": 4,
                             "latent_channels": 4},
             "unet": {"block_out_channels": [16, 32], "layers_per_block": 1, "attention": [False, True],
                      "attention_head_dim": 8, "norm_num_groups": 8}},
    # CPU default, about 5.4 M parameters (4 M in the UNet, which runs on 16 x 16 latents of 128 x 128 images, or
    # 8 x 8 of 64 x 64; the full-resolution autoencoder levels are kept narrow because they dominate CPU time;
    # about 11 MB of float16 weights to ship).
    "small": {**_COMMON, "image_size": 128,
              "autoencoder": {"block_out_channels": [16, 32, 64, 64], "layers_per_block": 1,
                              "norm_num_groups": 8, "latent_channels": 4},
              "unet": {"block_out_channels": [32, 64, 128], "layers_per_block": 2, "attention": [False, True, True],
                       "attention_head_dim": 32, "norm_num_groups": 16}},
    # Stable Diffusion sizes: KL-f8 autoencoder (128/256/512/512) and an SD-v1-width UNet (320/640/1280/1280,
    # attention on the three highest resolutions) without text cross-attention; 256 x 256 images.
    "paper": {**_COMMON, "image_size": 256,
              "autoencoder": {"block_out_channels": [128, 256, 512, 512], "layers_per_block": 2,
                              "norm_num_groups": 32, "latent_channels": 4},
              "unet": {"block_out_channels": [320, 640, 1280, 1280], "layers_per_block": 2,
                       "attention": [True, True, True, False], "attention_head_dim": 64, "norm_num_groups": 32}},
}


def latent_scale_factor(latents: torch.Tensor) -> float:
    """s = 1 / std(z) over all training-latent elements, so that s z has unit variance (Rombach et al. 2022, LDM:
    rescaling of KL-regularised latents before diffusion; SDSeg keeps it)."""
    return float(1.0 / latents.double().std(correction=0))


def sdseg_loss(eps_hat: torch.Tensor, eps: torch.Tensor, z0_hat: torch.Tensor, z0: torch.Tensor,
               latent_weight: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SDSeg objective L = |eps_hat - eps|_1 + lambda |z0_hat - z0|_1 (Lin et al. 2024: noise loss + latent
    estimation loss, lambda = 1). Returns (loss, noise term, latent term)."""
    noise_term = (eps_hat - eps).abs().mean()
    latent_term = (z0_hat - z0).abs().mean()
    return noise_term + latent_weight * latent_term, noise_term, latent_term


class SDSegModel(DiscreteDiffusionModel):
    """SDSeg (see the module docstring). ``config["latent_scale_factor"]`` is None until measured by
    ``begin_stage("diffusion", ...)``; an unmeasured model uses 1."""

    kind = "sdseg"
    PRESETS = PRESETS

    def __init__(self, config: dict):
        super().__init__(config)
        autoencoder_config = self.config["autoencoder"]
        latent = autoencoder_config["latent_channels"]
        self.mask_autoencoder = build_mask_autoencoder(autoencoder_config)
        self.image_encoder = ImageEncoder(autoencoder_config, self.config["image_channels"])
        self.unet = build_unet(self.config["unet"], 2 * latent, latent,
                               self.config["image_size"] // DOWNSAMPLING_FACTOR)

    @property
    def latent_scale(self) -> float:
        factor = self.config.get("latent_scale_factor")
        return 1.0 if factor is None else float(factor)

    def training_stages(self) -> list[str]:
        return list(STAGES)

    def _check_stage(self, stage: str) -> None:
        if stage not in STAGES:
            raise ValueError(f"SDSeg trains in stages {', '.join(STAGES)} (in that order), not {stage!r}")

    def parameters_for_stage(self, stage: str) -> list[torch.nn.Parameter]:
        """Stage "autoencoder" trains the mask autoencoder; "diffusion" the image encoder + UNet (AE frozen)."""
        self._check_stage(stage)
        if stage == "autoencoder":
            return list(self.mask_autoencoder.parameters())
        return list(self.image_encoder.parameters()) + list(self.unet.parameters())

    def begin_stage(self, stage: str, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Stage "autoencoder" forgets the latent scale factor (a retrained autoencoder changes it); "diffusion"
        measures it on up to ``SCALE_FACTOR_MAX_BATCHES`` training batches when it is not set yet, and keeps it
        otherwise (a resumed diffusion stage must keep the scale its UNet was trained with)."""
        self._check_stage(stage)
        if stage == "autoencoder":
            self.config["latent_scale_factor"] = None
            return
        if self.config.get("latent_scale_factor") is not None:
            return
        device = self.alphas_cumprod.device
        with torch.no_grad():
            latents = [self.encode_mask(mask.to(device), scaled=False)
                       for _, mask in itertools.islice(batches, SCALE_FACTOR_MAX_BATCHES)]
        if not latents:
            raise ValueError("begin_stage('diffusion') needs at least one training batch to measure the latent "
                             "scale factor")
        self.config["latent_scale_factor"] = latent_scale_factor(torch.cat(latents))

    def encode_mask(self, mask: torch.Tensor, scaled: bool = True) -> torch.Tensor:
        """(B, 1, H, W) mask in {0, 1} -> mask latent (posterior mean of the autoencoder on the {-1, 1} mask),
        multiplied by the latent scale factor when ``scaled``."""
        mean = self.mask_autoencoder.encode(2.0 * mask - 1.0).latent_dist.mean
        return mean * self.latent_scale if scaled else mean

    def decode_latent(self, z0: torch.Tensor) -> torch.Tensor:
        """Scaled mask latent -> soft mask (decoded + 1) / 2 clamped to [0, 1], shape (B, 1, H, W)."""
        decoded = self.mask_autoencoder.decode(z0 / self.latent_scale).sample
        return ((decoded + 1.0) / 2.0).clamp(0.0, 1.0)

    def predict_eps(self, z_t: torch.Tensor, t: torch.Tensor, image_latent: torch.Tensor) -> torch.Tensor:
        """eps estimate from the concatenation [noisy mask latent, image latent] (SDSeg's concatenate fusion)."""
        return self.unet(torch.cat([z_t, image_latent], dim=1), t).sample

    def training_loss(self, image: torch.Tensor, mask: torch.Tensor, generator: torch.Generator | None = None,
                      stage: str = "main"):
        self._check_stage(stage)
        if stage == "autoencoder":
            return self._autoencoder_loss(mask, generator)
        return self._diffusion_loss(image, mask, generator)

    def _autoencoder_loss(self, mask: torch.Tensor, generator: torch.Generator | None):
        target = 2.0 * mask - 1.0
        posterior = self.mask_autoencoder.encode(target).latent_dist
        z = posterior.mean + posterior.std * standard_normal(posterior.mean.shape, generator, target.device,
                                                             target.dtype)
        reconstruction = self.mask_autoencoder.decode(z).sample
        loss, reconstruction_term, kl_term = autoencoder_loss(reconstruction, target, posterior.mean,
                                                              posterior.logvar, self.config["kl_weight"])
        return loss, {"loss": loss.item(), "reconstruction_l1": reconstruction_term.item(), "kl": kl_term.item()}

    def _diffusion_loss(self, image: torch.Tensor, mask: torch.Tensor, generator: torch.Generator | None):
        with torch.no_grad():
            z0 = self.encode_mask(mask)
        t = random_timesteps(z0.shape[0], self.num_train_timesteps, generator, z0.device)
        eps = standard_normal(z0.shape, generator, z0.device, z0.dtype)
        abar_t = alpha_bar_at(self.alphas_cumprod, t).to(z0.dtype)
        z_t = q_sample(z0, eps, abar_t)
        eps_hat = self.predict_eps(z_t, t, self.image_encoder(image))
        z0_hat = predict_z0_from_eps(z_t, eps_hat, abar_t)
        loss, noise_term, latent_term = sdseg_loss(eps_hat, eps, z0_hat, z0, self.config["latent_loss_weight"])
        return loss, {"loss": loss.item(), "noise_l1": noise_term.item(), "latent_l1": latent_term.item()}

    @torch.no_grad()
    def sample(self, image: torch.Tensor, num_samples: int, steps: int | None = None,
               generator: torch.Generator | Sequence[torch.Generator] | None = None,
               sampler: str | None = None) -> torch.Tensor:
        """``num_samples`` soft masks per image, (B, N, H, W) in [0, 1]. Default: one step at t = T-1 from pure
        noise (``steps=k`` runs k DDIM steps, the only sampler). The image latent is computed once per image.
        ``generator`` may be one generator or B * N of them, one per sample, image-major (a sample then does not
        depend on the batch it runs in)."""
        check_sample_inputs(image, num_samples, self.config["image_channels"],
                            DOWNSAMPLING_FACTOR * unet_size_multiple(self.config["unet"]))
        if sampler not in (None, "ddim"):
            raise ValueError(f"SDSeg samples with the deterministic DDIM step only (sampler 'ddim'), not {sampler!r}")
        steps = self.config[self.steps_config_key] if steps is None else steps
        timesteps = strided_timesteps(self.num_train_timesteps, steps)
        batch, _, height, width = image.shape
        image_latent = self.image_encoder(image).repeat_interleave(num_samples, dim=0)
        z_T = standard_normal(image_latent.shape, generator, image_latent.device, image_latent.dtype)
        z0 = reverse_process(lambda z_t, t: self.predict_eps(z_t, t, image_latent), z_T, timesteps,
                             self.alphas_cumprod, "ddim", generator)
        return self.decode_latent(z0).view(batch, num_samples, height, width)
