"""Ambiguous diffusion: pixel-space mask diffusion for ambiguous (multi-rater) segmentation.

Christensen, Hannemose, Dahl & Dahl, "Diffusion Based Ambiguous Image Segmentation" (SCIA 2025,
arXiv:2504.05977). A continuous-time diffusion model on the mask itself (mapped to {-1, 1}), conditioned on the
image by channel concatenation with ``z_t``; the cosine schedule is made harder by input scaling ``b = 0.1``
(:mod:`sdseg.continuous_schedule`), the network predicts ``x`` through a tanh (``v`` and ``eps`` selectable), the
loss is the x-space MSE weighted by a function of the SNR (:mod:`sdseg.weighting`, default ``max(SNR, 1)``),
each training step sees one random rater's mask, and a 10-step ancestral sampler whose last step returns
``x_hat`` draws the samples (:mod:`sdseg.continuous_samplers`); a sample's binary mask is ``x > 0``.
"""

from __future__ import annotations

from typing import Sequence

import torch
from diffusers import UNet2DConditionModel

from sdseg.continuous_samplers import PREDICTIONS, SAMPLERS, sample as run_sampler, x_from_prediction
from sdseg.continuous_schedule import DEFAULT_INPUT_SCALE, DEFAULT_LOG_SNR_CLIP, alpha_sigma, schedule_log_snr
from sdseg.models.base import SHARED_CONFIG_KEYS, SegmentationDiffusionModel
from sdseg.noise import generator_device, standard_normal
from sdseg.weighting import loss_weighting

DEFAULT_CONFIG = {
    "image_channels": 1,
    "preprocessing": {"normalization": "percentile", "percentiles": [0.5, 99.5]},
    "b": DEFAULT_INPUT_SCALE,
    "log_snr_clip": DEFAULT_LOG_SNR_CLIP,
    "prediction": "x",
    "weighting": "trunc_snr",
    "sigmoid_bias": 0.0,
    "sampler": "ddpm",
    "steps": 10,
    "relative_area": 0.5,
    "block_out_channels": [32, 32, 64, 128],
    "layers_per_block": [1, 2, 3, 4],
    "attention_head_dim": 32,
    "norm_num_groups": 32,
}

PRESETS = {
    "tiny": {"image_size": 32, "block_out_channels": [16, 16, 32, 32], "layers_per_block": [1, 1, 1, 1],
             "attention_head_dim": 16, "norm_num_groups": 8},
    "small": {"image_size": 64},
    "paper": {"image_size": 128},
}

TIMESTEP_SCALE = 1000.0  # diffusers' sinusoidal timestep embedding is tuned for 0..1000, our t is in [0, 1]


class AmbiguousDiffusionModel(SegmentationDiffusionModel):
    """Pixel-space conditional diffusion ``p(mask | image)`` of Christensen et al. (kind ``"ambiguous"``).

    Network: a diffusers ``UNet2DConditionModel`` (input ``[z_t, image]``, output one channel) with the paper's
    block channels (32, 32, 64, 128) and layers per block (1, 2, 3, 4) and self-attention only at the lowest
    resolution: plain ``DownBlock2D``/``UpBlock2D`` blocks, an ``AttnDownBlock2D``/``AttnUpBlock2D`` (self-attention,
    no cross-attention) at the lowest resolution and, in the middle, ``UNetMidBlock2D``, which
    ``UNet2DConditionModel`` builds as a single ResNet block without attention.
    ``UNet2DConditionModel`` is used rather than ``UNet2DModel`` because only it takes a different number of layers
    per block; with no cross-attention block the ``encoder_hidden_states`` are ``None`` and ``cross_attention_dim``
    keeps the diffusers default, which creates no weights (passing ``cross_attention_dim=None`` crashes diffusers).
    The time ``t`` in [0, 1] is fed to the timestep embedding as ``1000 t``.

    Config keys: ``image_size``, ``image_channels``, ``preprocessing``, ``b`` (input scale), ``log_snr_clip``,
    ``prediction`` ("x", "v", "eps"), ``weighting`` (see :data:`sdseg.weighting.LOSS_WEIGHTINGS`),
    ``sigmoid_bias``, ``sampler`` ("ddpm", "ddim"), ``steps``, ``relative_area`` (``r`` of the post-processing
    :func:`sdseg.masks.relative_area_filter` that the inference path applies, ``None``: none), ``block_out_channels``, ``layers_per_block``,
    ``attention_head_dim``, ``norm_num_groups``.
    """

    kind = "ambiguous"
    steps_config_key = "steps"

    def __init__(self, config: dict):
        super().__init__(validated_config(config))
        c = self.config
        self.unet = denoiser_unet(c, 1 + c["image_channels"])
        self.weighting = loss_weighting(c["weighting"], c["sigmoid_bias"])

    @classmethod
    def preset(cls, name: str, **overrides) -> dict:
        """``tiny`` (tests, < 0.5 M parameters, 32 px), ``small`` (paper channels, 64 px, CPU default) or
        ``paper`` (paper channels, 128 px), with config overrides."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r} for the ambiguous model; choose one of: {', '.join(PRESETS)}")
        return validated_config({**PRESETS[name], **overrides})

    def log_snr(self, t: torch.Tensor) -> torch.Tensor:
        """Clipped logSNR of the input-scaled cosine schedule of this model."""
        return schedule_log_snr(t, self.config["b"], self.config["log_snr_clip"])

    def predict_x(self, z: torch.Tensor, t: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """Network estimate ``x_hat`` of the clean mask from ``z_t`` at times ``t`` (B,) given the image.

        For x-prediction the output goes through tanh (the data lies in [-1, 1]); v and eps outputs are unbounded
        and converted to ``x_hat`` with :func:`sdseg.continuous_samplers.x_from_prediction`.
        """
        out = self.unet(torch.cat([z, image], dim=1), t * TIMESTEP_SCALE, encoder_hidden_states=None).sample
        prediction = self.config["prediction"]
        if prediction == "x":
            return torch.tanh(out)
        alpha, sigma = (v.view(-1, 1, 1, 1) for v in alpha_sigma(self.log_snr(t)))
        return x_from_prediction(prediction, out, z, alpha, sigma)

    def training_loss(self, image: torch.Tensor, mask: torch.Tensor, generator: torch.Generator | None = None,
                      stage: str = "main"):
        """Weighted x-space MSE ``w(lambda_t) ||x - x_hat||^2`` (pixel mean) at ``t ~ U(0, 1)``, for one rater's
        mask per image (the data loader picks the rater). Logs ``loss`` and the unweighted ``mse_x``."""
        if stage != "main":
            raise ValueError(f"the ambiguous model has a single training stage 'main', not {stage!r}")
        self._check_image(image)
        if mask.shape != (image.shape[0], 1, *image.shape[2:]):
            raise ValueError(f"mask must have shape {(image.shape[0], 1, *image.shape[2:])} to match the image, "
                             f"got {tuple(mask.shape)}")
        x = mask.to(image.dtype) * 2.0 - 1.0
        batch = x.shape[0]
        t = torch.rand(batch, generator=generator, device=generator_device(generator, x.device)).to(x)
        eps = standard_normal(x.shape, generator, x.device, x.dtype)
        lam = self.log_snr(t)
        alpha, sigma = (v.view(-1, 1, 1, 1) for v in alpha_sigma(lam))
        x_hat = self.predict_x(alpha * x + sigma * eps, t, image)
        mse = ((x_hat - x) ** 2).mean(dim=(1, 2, 3))
        loss = (self.weighting(lam) * mse).mean()
        return loss, {"loss": loss.item(), "mse_x": mse.mean().item()}

    @torch.no_grad()
    def sample(self, image: torch.Tensor, num_samples: int, steps: int | None = None,
               generator: torch.Generator | Sequence[torch.Generator] | None = None,
               sampler: str | None = None) -> torch.Tensor:
        """``num_samples`` soft masks per image, (B, N, H, W) in [0, 1]: ``(x + 1) / 2`` clamped, so the binary
        mask ``> 0.5`` is the paper's ``x > 0``. The N samples of each image run in one batch (image-major).
        ``generator`` may be one generator or B * N of them, one per sample in that order (then a sample does not
        depend on the batch it runs in). ``config["relative_area"]`` is applied to the binary samples by the inference
        path (:func:`sdseg.masks.postprocess`), not here."""
        self._check_image(image)
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
        batch, _, height, width = image.shape
        cond = image.repeat_interleave(num_samples, dim=0)

        def denoise(z, t):
            return self.predict_x(z, t, cond).clamp(-1.0, 1.0)

        x = run_sampler(denoise, self.log_snr, (cond.shape[0], 1, height, width),
                        steps if steps is not None else self.config[self.steps_config_key],
                        sampler if sampler is not None else self.config["sampler"],
                        generator, image.device, image.dtype)
        soft = ((x + 1.0) / 2.0).clamp(0.0, 1.0)
        return soft.reshape(batch, num_samples, height, width)

    def _check_image(self, image: torch.Tensor) -> None:
        channels = self.config["image_channels"]
        factor = 2 ** (len(self.config["block_out_channels"]) - 1)
        if image.ndim != 4 or image.shape[1] != channels:
            raise ValueError(f"image must have shape (batch, {channels}, height, width), got {tuple(image.shape)}")
        if image.shape[2] % factor or image.shape[3] % factor:
            raise ValueError(f"image height and width must be multiples of {factor} for this network, "
                             f"got {image.shape[2]}x{image.shape[3]}; crop or pad the input")


def denoiser_unet(config: dict, in_channels: int) -> UNet2DConditionModel:
    """The network of :class:`AmbiguousDiffusionModel` (see there) of a validated ``config`` with ``in_channels``
    inputs and one output channel; also the deterministic U-Net baseline's (sdseg.models.unet)."""
    n_blocks = len(config["block_out_channels"])
    return UNet2DConditionModel(
        sample_size=config["image_size"],
        in_channels=in_channels,
        out_channels=1,
        block_out_channels=tuple(config["block_out_channels"]),
        layers_per_block=tuple(config["layers_per_block"]),
        down_block_types=("DownBlock2D",) * (n_blocks - 1) + ("AttnDownBlock2D",),
        up_block_types=("AttnUpBlock2D",) + ("UpBlock2D",) * (n_blocks - 1),
        mid_block_type="UNetMidBlock2D",
        attention_head_dim=config["attention_head_dim"],
        norm_num_groups=config["norm_num_groups"],
    )


def validated_config(config: dict) -> dict:
    """``config`` completed with ``DEFAULT_CONFIG``; raises ValueError with a clear message when invalid."""
    unknown = sorted(set(config) - set(DEFAULT_CONFIG) - {"image_size"} - SHARED_CONFIG_KEYS)
    if unknown:
        raise ValueError(f"unknown config keys for the ambiguous model: {', '.join(unknown)}; "
                         f"known keys: image_size, {', '.join(DEFAULT_CONFIG)}")
    if "image_size" not in config:
        raise ValueError("the ambiguous model config needs 'image_size'")
    c = {**DEFAULT_CONFIG, **config}
    channels, layers = list(c["block_out_channels"]), list(c["layers_per_block"])
    c["block_out_channels"], c["layers_per_block"] = channels, layers
    factor = 2 ** (len(channels) - 1)
    checks = [
        (isinstance(c["image_size"], int) and c["image_size"] > 0 and c["image_size"] % factor == 0,
         f"image_size must be a positive multiple of {factor}, got {c['image_size']!r}"),
        (isinstance(c["image_channels"], int) and c["image_channels"] >= 1,
         f"image_channels must be a positive integer, got {c['image_channels']!r}"),
        (0.0 < c["b"] <= 1.0, f"input scale b must be in (0, 1], got {c['b']!r}"),
        (c["log_snr_clip"] > 0, f"log_snr_clip must be positive, got {c['log_snr_clip']!r}"),
        (c["prediction"] in PREDICTIONS,
         f"prediction must be one of {', '.join(PREDICTIONS)}, got {c['prediction']!r}"),
        (c["sampler"] in SAMPLERS, f"sampler must be one of {', '.join(SAMPLERS)}, got {c['sampler']!r}"),
        (isinstance(c["steps"], int) and not isinstance(c["steps"], bool) and c["steps"] >= 1,
         f"steps must be a positive integer, got {c['steps']!r}"),
        (c["relative_area"] is None or 0.0 <= c["relative_area"] <= 1.0,
         f"relative_area must be in [0, 1] or null, got {c['relative_area']!r}"),
        (len(channels) >= 2 and len(channels) == len(layers),
         "block_out_channels and layers_per_block must have the same length (at least 2)"),
        (all(ch % c["norm_num_groups"] == 0 for ch in channels),
         "every block_out_channels entry must be a multiple of norm_num_groups"),
        (channels[-1] % c["attention_head_dim"] == 0,
         "the last (lowest-resolution) block_out_channels entry must be a multiple of attention_head_dim"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(f"invalid ambiguous model config: {message}")
    loss_weighting(c["weighting"], c["sigmoid_bias"])
    return c
