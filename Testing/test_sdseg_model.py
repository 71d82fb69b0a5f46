"""SDSegModel (tiny preset, CPU): presets, f8 latents, stage parameters, latent scale factor, one-step sampling at
t = T-1, image latent computed once, determinism, widened UNet, loss decrease, save/load round trip."""

from __future__ import annotations

import json

import pytest
import torch

from sdseg.checkpoint import load_model, save_model
from sdseg.models import build_model
from sdseg.models.autoencoder import autoencoder_loss, diagonal_gaussian_kl
from sdseg.models.sdseg_ldm import SDSegModel, sdseg_loss

SIZE = 32



def synthetic_batch(batch=4, seed=0):
    """Images in [-1, 1] with a bright disc; the mask is the disc."""
    generator = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    centres = torch.randint(10, SIZE - 10, (batch, 2), generator=generator)
    radii = torch.randint(4, 9, (batch,), generator=generator)
    masks = torch.stack([((yy - cy) ** 2 + (xx - cx) ** 2 <= r ** 2).float()
                         for (cy, cx), r in zip(centres.tolist(), radii.tolist())]).unsqueeze(1)
    images = (masks * 1.2 - 0.6 + 0.2 * torch.randn(masks.shape, generator=generator)).clamp(-1, 1)
    return images, masks


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("sdseg", "tiny").eval()


def test_tiny_preset_is_small_and_serialisable(model):
    assert isinstance(model, SDSegModel) and model.kind == "sdseg"
    assert model.num_parameters() < 500_000
    assert model.config["image_size"] == SIZE
    assert json.loads(json.dumps(model.config)) == model.config
    assert model.training_stages() == ["autoencoder", "diffusion"]


def test_preset_overrides_are_checked():
    assert SDSegModel.preset("tiny", sampling_steps=3)["sampling_steps"] == 3
    with pytest.raises(ValueError, match="unknown config keys"):
        SDSegModel.preset("tiny", sampling_step=3)
    with pytest.raises(ValueError, match="tiny, small, paper"):
        SDSegModel.preset("huge")


def test_mask_latents_are_f8_with_4_channels(model):
    _, masks = synthetic_batch(2)
    assert model.encode_mask(masks).shape == (2, 4, SIZE // 8, SIZE // 8)
    assert model.image_encoder(torch.zeros(2, 1, SIZE, SIZE)).shape == (2, 4, SIZE // 8, SIZE // 8)
    assert model.unet.config.in_channels == 8 and model.unet.config.out_channels == 4


def test_stage_parameters_split_the_model(model):
    autoencoder = {id(p) for p in model.parameters_for_stage("autoencoder")}
    diffusion = {id(p) for p in model.parameters_for_stage("diffusion")}
    assert autoencoder == {id(p) for p in model.mask_autoencoder.parameters()}
    assert not autoencoder & diffusion
    assert autoencoder | diffusion == {id(p) for p in model.parameters()}
    with pytest.raises(ValueError, match="autoencoder, diffusion"):
        model.training_loss(*synthetic_batch(1), stage="main")


def test_latent_scale_factor_is_measured_once_and_reset_by_the_autoencoder_stage():
    model = build_model("sdseg", "tiny")
    assert model.config["latent_scale_factor"] is None
    batches = [synthetic_batch(4, seed) for seed in range(3)]
    model.begin_stage("diffusion", iter(batches))
    factor = model.config["latent_scale_factor"]
    assert isinstance(factor, float)
    with torch.no_grad():
        raw = torch.cat([model.encode_mask(mask, scaled=False) for _, mask in batches])
        scaled = torch.cat([model.encode_mask(mask) for _, mask in batches])
    assert scaled.std(correction=0).item() == pytest.approx(1.0, abs=1e-4)
    assert torch.allclose(scaled, raw * factor)
    model.begin_stage("diffusion", iter([synthetic_batch(4, 9)]))  # resumed stage keeps the factor
    assert model.config["latent_scale_factor"] == factor
    model.begin_stage("autoencoder", iter(batches))
    assert model.config["latent_scale_factor"] is None
    with pytest.raises(ValueError, match="at least one training batch"):
        model.begin_stage("diffusion", iter([]))


def test_sample_shapes_range_and_determinism(model):
    images, _ = synthetic_batch(2)
    first = model.sample(images, 3, generator=torch.Generator().manual_seed(1))
    again = model.sample(images, 3, generator=torch.Generator().manual_seed(1))
    other = model.sample(images, 3, generator=torch.Generator().manual_seed(2))
    assert first.shape == (2, 3, SIZE, SIZE) and first.dtype == torch.float32
    assert first.min().item() >= 0.0 and first.max().item() <= 1.0
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    with pytest.raises(ValueError, match="ddim"):
        model.sample(images, 1, sampler="ddpm")


def generators(*seeds):
    return [torch.Generator().manual_seed(seed) for seed in seeds]


def test_per_sample_generators_make_samples_independent_of_the_batch(model):
    images, _ = synthetic_batch(2)
    both = model.sample(images, 2, generator=generators(10, 11, 12, 13))
    second_alone = model.sample(images[1:], 2, generator=generators(12, 13))
    assert torch.allclose(both[1], second_alone[0], atol=1e-3)  # batched vs single conv rounding, amplified
    assert not torch.allclose(both[1, 0], both[1, 1], atol=1e-3)
    with pytest.raises(ValueError, match="one per batch row"):
        model.sample(images, 2, generator=generators(1, 2, 3))


def test_sample_rejects_unusable_inputs_with_a_clear_message(model):
    with pytest.raises(ValueError, match="num_samples must be a positive integer"):
        model.sample(torch.zeros(1, 1, SIZE, SIZE), 0)
    with pytest.raises(ValueError, match=r"shape \(batch, 1, height, width\)"):
        model.sample(torch.zeros(1, 3, SIZE, SIZE), 1)
    with pytest.raises(ValueError, match="multiples of 16"):
        model.sample(torch.zeros(1, 1, 40, 40), 1)


def record_calls(module):
    calls = []
    handle = module.register_forward_pre_hook(lambda _, args: calls.append(args))
    return calls, handle


@pytest.mark.parametrize("steps, expected", [(None, [999]), (1, [999]), (4, [999, 749, 499, 249])])
def test_sampling_timesteps_and_single_image_encoding(model, steps, expected):
    images, _ = synthetic_batch(2)
    unet_calls, unet_hook = record_calls(model.unet)
    encoder_calls, encoder_hook = record_calls(model.image_encoder)
    try:
        model.sample(images, 5, steps=steps, generator=torch.Generator().manual_seed(0))
    finally:
        unet_hook.remove()
        encoder_hook.remove()
    assert [args[1].unique().tolist() for args in unet_calls] == [[t] for t in expected]
    assert all(args[0].shape == (10, 8, 4, 4) for args in unet_calls)
    assert [args[0].shape[0] for args in encoder_calls] == [2]


def test_one_step_sample_is_the_decoded_z0_estimate(model):
    image, _ = synthetic_batch(1)
    sample = model.sample(image, 1, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        z_T = torch.randn((1, 4, 4, 4), generator=torch.Generator().manual_seed(3))
        abar = model.alphas_cumprod[999]
        eps_hat = model.unet(torch.cat([z_T, model.image_encoder(image)], 1), torch.tensor([999])).sample
        z0_hat = (z_T - (1 - abar).sqrt() * eps_hat) / abar.sqrt()
        decoded = model.mask_autoencoder.decode(z0_hat / model.latent_scale).sample
    assert torch.allclose(sample[0, 0], ((decoded[0, 0] + 1) / 2).clamp(0, 1), atol=1e-5)


def test_loss_formulas():
    eps = torch.randn(2, 4, 4, 4)
    z0 = torch.randn(2, 4, 4, 4)
    loss, noise, latent = sdseg_loss(eps + 0.5, eps, z0 - 0.25, z0, latent_weight=2.0)
    assert (noise.item(), latent.item()) == pytest.approx((0.5, 0.25))
    assert loss.item() == pytest.approx(0.5 + 2.0 * 0.25)
    mean, logvar = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2)
    reference = torch.distributions.kl_divergence(torch.distributions.Normal(mean, (0.5 * logvar).exp()),
                                                  torch.distributions.Normal(0.0, 1.0)).flatten(1).sum(1)
    assert torch.allclose(diagonal_gaussian_kl(mean, logvar), reference, atol=1e-5)
    assert diagonal_gaussian_kl(torch.zeros(1, 4), torch.zeros(1, 4)).item() == 0.0
    target = torch.ones(1, 1, 2, 2)
    total, rec, kl = autoencoder_loss(target * 0.5, target, mean[:1], logvar[:1], kl_weight=1e-3)
    assert rec.item() == pytest.approx(0.5) and total.item() == pytest.approx(0.5 + 1e-3 * kl.item())


def train(model, stage, images, masks, steps, lr):
    optimizer = torch.optim.Adam(model.parameters_for_stage(stage), lr=lr)
    for step in range(steps):
        optimizer.zero_grad()
        loss, _ = model.training_loss(images, masks, generator=torch.Generator().manual_seed(step), stage=stage)
        loss.backward()
        optimizer.step()


def fixed_loss(model, stage, images, masks, draws=8):
    """Loss averaged over a fixed set of noise / timestep draws (the same before and after training)."""
    with torch.no_grad():
        return sum(model.training_loss(images, masks, generator=torch.Generator().manual_seed(1000 + i),
                                       stage=stage)[0].item() for i in range(draws)) / draws


def test_both_stages_learn_one_batch_and_the_autoencoder_stays_frozen():
    torch.manual_seed(0)
    model = build_model("sdseg", "tiny").train()
    images, masks = synthetic_batch(4)
    before = fixed_loss(model, "autoencoder", images, masks)
    train(model, "autoencoder", images, masks, steps=30, lr=3e-3)
    assert fixed_loss(model, "autoencoder", images, masks) < 0.5 * before

    model.begin_stage("diffusion", iter([(images, masks)]))
    frozen = {name: p.detach().clone() for name, p in model.mask_autoencoder.named_parameters()}
    before = fixed_loss(model, "diffusion", images, masks)
    model.zero_grad(set_to_none=True)
    loss, logs = model.training_loss(images, masks, generator=torch.Generator().manual_seed(0), stage="diffusion")
    loss.backward()
    assert all(p.grad is None for p in model.mask_autoencoder.parameters())
    assert set(logs) == {"loss", "noise_l1", "latent_l1"}
    train(model, "diffusion", images, masks, steps=40, lr=3e-3)
    assert fixed_loss(model, "diffusion", images, masks) < 0.85 * before
    assert all(torch.equal(p, frozen[name]) for name, p in model.mask_autoencoder.named_parameters())


def test_save_load_round_trip_keeps_the_scale_factor_and_the_samples(tmp_path):
    model = build_model("sdseg", "tiny")
    model.begin_stage("diffusion", iter([synthetic_batch(4)]))
    save_model(model, tmp_path / "sdseg-tiny")
    loaded = load_model(tmp_path / "sdseg-tiny")
    assert loaded.config["latent_scale_factor"] == model.config["latent_scale_factor"]
    assert "alphas_cumprod" not in loaded.state_dict()
    images, _ = synthetic_batch(1)
    assert torch.equal(model.eval().sample(images, 2, generator=torch.Generator().manual_seed(0)),
                       loaded.sample(images, 2, generator=torch.Generator().manual_seed(0)))
