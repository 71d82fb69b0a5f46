"""SDSeg's two encoders around diffusers' KL autoencoder (Rombach et al. 2022, "KL-f8"; Lin et al. 2024).

- The mask autoencoder: a diffusers ``AutoencoderKL`` with 1 input/output channel (masks mapped to {-1, 1}).
  Four encoder blocks = three downsamplings = f8, ``latent_channels`` (4) latent channels.
- The image encoder (SDSeg's trainable vision encoder): the same encoder architecture as the autoencoder, whose
  2 x latent_channels moments are projected to ``latent_channels`` by a 1x1 convolution.

``config`` below is the ``"autoencoder"`` sub-config of an SDSeg model:
``{"block_out_channels": [...4 ints], "layers_per_block": int, "norm_num_groups": int, "latent_channels": 4}``.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL
from diffusers.models.autoencoders.vae import Encoder

DOWNSAMPLING_FACTOR = 8
_BLOCKS = 4  # log2(8) downsamplings + 1: diffusers' last encoder block does not downsample


def _check(config: dict) -> None:
    if len(config["block_out_channels"]) != _BLOCKS:
        raise ValueError(f"the SDSeg autoencoder is f8: block_out_channels needs {_BLOCKS} entries "
                         f"(3 downsamplings), got {list(config['block_out_channels'])}")


def build_mask_autoencoder(config: dict) -> AutoencoderKL:
    """The f8 mask autoencoder (1 channel in and out)."""
    _check(config)
    blocks = len(config["block_out_channels"])
    return AutoencoderKL(
        in_channels=1, out_channels=1,
        down_block_types=("DownEncoderBlock2D",) * blocks, up_block_types=("UpDecoderBlock2D",) * blocks,
        block_out_channels=tuple(config["block_out_channels"]), layers_per_block=config["layers_per_block"],
        latent_channels=config["latent_channels"], norm_num_groups=config["norm_num_groups"])


class ImageEncoder(torch.nn.Module):
    """SDSeg's trainable vision encoder: the autoencoder's encoder architecture + a 1x1 conv to latent channels."""

    def __init__(self, config: dict, image_channels: int):
        super().__init__()
        _check(config)
        latent = config["latent_channels"]
        self.encoder = Encoder(
            in_channels=image_channels, out_channels=latent,
            down_block_types=("DownEncoderBlock2D",) * len(config["block_out_channels"]),
            block_out_channels=tuple(config["block_out_channels"]), layers_per_block=config["layers_per_block"],
            norm_num_groups=config["norm_num_groups"], double_z=True)
        self.project = torch.nn.Conv2d(2 * latent, latent, kernel_size=1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) image in [-1, 1] -> (B, latent_channels, H/8, W/8) image latent."""
        return self.project(self.encoder(image))


def diagonal_gaussian_kl(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)) = 1/2 sum(mean^2 + exp(logvar) - 1 - logvar) over all but the batch
    dimension (Kingma & Welling 2014, Appendix B; the LDM autoencoder's regulariser). Shape (B,)."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).flatten(1).sum(dim=1)


def autoencoder_loss(reconstruction: torch.Tensor, target: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor,
                     kl_weight: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mask autoencoder objective L = mean |x_rec - x| + kl_weight * mean_batch KL (Rombach et al. 2022, Sec. 3.1:
    a reconstruction loss plus a slight KL penalty; the adversarial/perceptual terms are not used for masks).
    Returns (loss, reconstruction term, KL term)."""
    reconstruction_term = (reconstruction - target).abs().mean()
    kl_term = diagonal_gaussian_kl(mean, logvar).mean()
    return reconstruction_term + kl_weight * kl_term, reconstruction_term, kl_term
