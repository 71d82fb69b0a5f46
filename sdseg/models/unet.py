"""A deterministic segmentation U-Net: the baseline of the same size as the ambiguous model's denoiser.

The network is the ambiguous model's (sdseg.models.ambiguous.denoiser_unet: the diffusers ``UNet2DConditionModel``
with its block channels, layers per block and lowest-resolution self-attention, from the same presets) without the
diffusion: the input is the image (+ its prompt channels, like the other kinds' conditioning), not ``[z_t, image]``,
the time embedding always gets t = 0 (a constant, so it acts as learned biases), and the output is one channel of mask
logits ``o``. The loss against one target mask ``y`` per image, the raters' majority (default) or union
(sdseg.masks.rater_target, ``config["target"]``, ``sdseg train --target``), is

    L = BCE(sigmoid(o), y) + w (1 - D),   D = (2 sum p y + 1) / (sum p + sum y + 1),   p = sigmoid(o),

binary cross-entropy (pixel mean) plus ``w = config["dice_weight"]`` times the soft Dice loss (Milletari et al. 2016,
V-Net, eq. 1, with plain sums in the denominator and a smoothing of 1, so that an empty target predicted empty costs
nothing), D per image, averaged over the batch. Its N "samples" are N copies of ``p``: the sample variance is zero
and GED / diversity score it as the deterministic predictor it is; the inference path runs one forward pass per
image (``deterministic``, sdseg.inference.sample_items).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sdseg.masks import RATER_TARGETS
from sdseg.models.ambiguous import DEFAULT_CONFIG as DENOISER_DEFAULTS, PRESETS, denoiser_unet, validated_config
from sdseg.models.base import SHARED_CONFIG_KEYS, SegmentationDiffusionModel

# The network's config keys, with the ambiguous model's defaults and presets ("image_size" has none).
NETWORK_KEYS = ("image_size", "image_channels", "block_out_channels", "layers_per_block", "attention_head_dim",
                "norm_num_groups")
DEFAULT_CONFIG = {**{key: DENOISER_DEFAULTS[key] for key in NETWORK_KEYS if key in DENOISER_DEFAULTS},
                  "preprocessing": DENOISER_DEFAULTS["preprocessing"], "target": "majority", "dice_weight": 1.0}
DICE_SMOOTHING = 1.0


def soft_dice(probabilities: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Soft Dice ``(2 sum p y + 1) / (sum p + sum y + 1)`` of each image (B, 1, H, W) -> (B,) (module docstring)."""
    overlap = (probabilities * target).sum(dim=(1, 2, 3))
    total = probabilities.sum(dim=(1, 2, 3)) + target.sum(dim=(1, 2, 3))
    return (2.0 * overlap + DICE_SMOOTHING) / (total + DICE_SMOOTHING)


class SegmentationUNet(SegmentationDiffusionModel):
    """Deterministic U-Net ``p = sigmoid(f(image))`` trained with BCE + soft Dice (kind ``"unet"``).

    Config keys: those of the ambiguous model's network (``image_size``, ``image_channels``, ``block_out_channels``,
    ``layers_per_block``, ``attention_head_dim``, ``norm_num_groups``; presets tiny, small, paper as there),
    ``preprocessing``, ``target`` (the mask it learns: "majority" of the raters, default, "union" or "random", one
    random rater's per step) and ``dice_weight`` (``w`` of the loss).
    """

    kind = "unet"
    deterministic = True

    def __init__(self, config: dict):
        super().__init__(_validated_config(config))
        self.unet = denoiser_unet(self.config, self.config["image_channels"])

    @classmethod
    def preset(cls, name: str, **overrides) -> dict:
        """The ambiguous model's ``tiny``, ``small`` or ``paper`` network, with config overrides."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r} for the unet model; choose one of: {', '.join(PRESETS)}")
        return _validated_config({**PRESETS[name], **overrides})

    def training_target(self) -> str:
        return self.config["target"]

    def logits(self, image: torch.Tensor) -> torch.Tensor:
        """Mask logits ``o`` (B, 1, H, W) of images (B, C, H, W) in [-1, 1]."""
        channels, factor = self.config["image_channels"], 2 ** (len(self.config["block_out_channels"]) - 1)
        if image.ndim != 4 or image.shape[1] != channels or image.shape[2] % factor or image.shape[3] % factor:
            raise ValueError(f"image must have shape (batch, {channels}, height, width) with height and width "
                             f"multiples of {factor}, got {tuple(image.shape)}")
        time = torch.zeros(image.shape[0], device=image.device, dtype=image.dtype)
        return self.unet(image, time, encoder_hidden_states=None).sample

    def training_loss(self, image: torch.Tensor, mask: torch.Tensor, generator: torch.Generator | None = None,
                      stage: str = "main"):
        """``L = BCE + w (1 - soft Dice)`` of the logits against ``mask``, the target the training loop gives
        (:meth:`training_target`). Logs ``loss``, ``bce`` and ``dice`` (the batch's mean soft Dice)."""
        if stage != "main":
            raise ValueError(f"the unet model has a single training stage 'main', not {stage!r}")
        logits = self.logits(image)
        if mask.shape != logits.shape:
            raise ValueError(f"mask must have shape {tuple(logits.shape)} to match the image, got {tuple(mask.shape)}")
        target = mask.to(logits.dtype)
        bce = F.binary_cross_entropy_with_logits(logits, target)
        dice = soft_dice(torch.sigmoid(logits), target).mean()
        loss = bce + self.config["dice_weight"] * (1.0 - dice)
        return loss, {"loss": loss.item(), "bce": bce.item(), "dice": dice.item()}

    @torch.no_grad()
    def sample(self, image: torch.Tensor, num_samples: int, steps: int | None = None,
               generator=None, sampler: str | None = None) -> torch.Tensor:
        """``num_samples`` copies of ``sigmoid(o)`` per image, (B, N, H, W) in [0, 1], from one forward pass;
        ``steps``, ``generator`` and ``sampler`` do not apply."""
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
        probabilities = torch.sigmoid(self.logits(image))
        return probabilities.expand(-1, num_samples, -1, -1).contiguous()


def _validated_config(config: dict) -> dict:
    """``config`` completed with ``DEFAULT_CONFIG``, its network checked as the ambiguous model checks its own;
    raises ValueError with a clear message when invalid."""
    unknown = sorted(set(config) - set(DEFAULT_CONFIG) - {"image_size"} - SHARED_CONFIG_KEYS)
    if unknown:
        raise ValueError(f"unknown config keys for the unet model: {', '.join(unknown)}; "
                         f"known keys: image_size, {', '.join(DEFAULT_CONFIG)}")
    c = {**DEFAULT_CONFIG, **config}
    try:
        network = validated_config({key: c[key] for key in NETWORK_KEYS if key in c})
    except ValueError as error:
        raise ValueError(f"the unet model has the ambiguous model's network: {error}") from None
    c.update({key: network[key] for key in NETWORK_KEYS})
    if c["target"] not in RATER_TARGETS:
        raise ValueError(f"invalid unet model config: target must be one of {', '.join(RATER_TARGETS)}, "
                         f"got {c['target']!r}")
    if not isinstance(c["dice_weight"], (int, float)) or isinstance(c["dice_weight"], bool) or c["dice_weight"] < 0:
        raise ValueError(f"invalid unet model config: dice_weight must be a non-negative number, "
                         f"got {c['dice_weight']!r}")
    return c
