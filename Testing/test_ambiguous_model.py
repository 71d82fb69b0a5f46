"""AmbiguousDiffusionModel (sdseg.models.ambiguous): presets, network layout, loss, sampling, post-processing."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sdseg.continuous_schedule import schedule_log_snr
from sdseg.models import build_model, model_from_config
from sdseg import inference
from sdseg.masks import connected_components, relative_area_filter
from sdseg.models.ambiguous import AmbiguousDiffusionModel
from sdseg.weighting import snr_plus_one_weight



@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return AmbiguousDiffusionModel(AmbiguousDiffusionModel.preset("tiny"))


def _images(batch=2, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 1, size, size, generator=g) * 2 - 1


def _disc_batch():
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    discs = [(10, 12, 6), (20, 18, 8), (16, 16, 5), (8, 22, 4)]
    mask = torch.stack([(((yy - a) ** 2 + (xx - b) ** 2) < r * r).float() for a, b, r in discs])[:, None]
    noise = torch.randn(mask.shape, generator=torch.Generator().manual_seed(1))
    return (mask * 2 - 1) * 0.8 + 0.1 * noise, mask


def test_presets_sizes_and_defaults():
    tiny = AmbiguousDiffusionModel.preset("tiny")
    small = AmbiguousDiffusionModel.preset("small")
    paper = AmbiguousDiffusionModel.preset("paper", steps=20)
    assert tiny["image_size"] == 32 and small["image_size"] == 64 and paper["image_size"] == 128
    assert AmbiguousDiffusionModel(tiny).num_parameters() < 500_000
    assert small["block_out_channels"] == [32, 32, 64, 128] and small["layers_per_block"] == [1, 2, 3, 4]
    assert paper["steps"] == 20
    assert small["preprocessing"] == {"normalization": "percentile", "percentiles": [0.5, 99.5]}
    assert (small["b"], small["prediction"], small["weighting"], small["sampler"], small["steps"]) == (
        0.1, "x", "trunc_snr", "ddpm", 10)
    with pytest.raises(ValueError, match="tiny"):
        AmbiguousDiffusionModel.preset("huge")


@pytest.mark.parametrize("override, words", [
    ({"prediction": "score"}, "prediction"), ({"weighting": "snr2"}, "trunc_snr"), ({"sampler": "euler"}, "sampler"),
    ({"steps": 0}, "steps"), ({"b": 0.0}, "input scale"), ({"image_size": 36}, "multiple of 8"),
    ({"colour": 1}, "unknown config keys"),
])
def test_invalid_configs_give_clear_messages(override, words):
    with pytest.raises(ValueError, match=words):
        AmbiguousDiffusionModel.preset("tiny", **override)


def test_config_is_json_and_rebuilds_the_same_model(tiny):
    config = json.loads(json.dumps(tiny.config))
    rebuilt = model_from_config("ambiguous", config)
    rebuilt.load_state_dict(tiny.state_dict())
    assert rebuilt.config == tiny.config and rebuilt.kind == "ambiguous"
    assert build_model("ambiguous", "tiny").num_parameters() == tiny.num_parameters()


def test_network_layout_attention_only_at_lowest_resolution():
    model = AmbiguousDiffusionModel(AmbiguousDiffusionModel.preset("small"))
    unet = model.unet
    assert [len(block.resnets) for block in unet.down_blocks] == [1, 2, 3, 4]
    assert [getattr(block, "attentions", None) is not None for block in unet.down_blocks] == [False] * 3 + [True]
    assert [getattr(block, "attentions", None) is not None for block in unet.up_blocks] == [True] + [False] * 3
    assert list(unet.config.block_out_channels) == [32, 32, 64, 128] and unet.config.in_channels == 2
    attention_owners = {name.split(".")[0] + "." + name.split(".")[1]
                        for name, module in unet.named_modules() if type(module).__name__ == "Attention"}
    assert attention_owners == {"down_blocks.3", "up_blocks.0"}
    assert len(unet.mid_block.attentions) == 0


def test_timestep_reaches_the_network_as_t_times_1000(tiny):
    seen = []
    handle = tiny.unet.time_proj.register_forward_hook(lambda module, args, out: seen.append(args[0].clone()))
    try:
        tiny.predict_x(torch.zeros(2, 1, 32, 32), torch.tensor([0.25, 1.0]), _images())
    finally:
        handle.remove()
    assert seen[0].tolist() == pytest.approx([250.0, 1000.0])


def test_training_loss_weighting_and_input_checks():
    torch.manual_seed(0)
    model = AmbiguousDiffusionModel(AmbiguousDiffusionModel.preset("tiny", weighting="snr_plus_one"))
    image, mask = _disc_batch()
    loss, logs = model.training_loss(image[:1], mask[:1], generator=torch.Generator().manual_seed(7))
    t = torch.rand(1, generator=torch.Generator().manual_seed(7))  # first draw of the same generator
    expected_weight = snr_plus_one_weight(schedule_log_snr(t, 0.1)).item()
    assert logs["loss"] == pytest.approx(logs["mse_x"] * expected_weight, rel=1e-5)
    assert loss.requires_grad and loss.item() == logs["loss"]
    with pytest.raises(ValueError, match="mask must have shape"):
        model.training_loss(image, mask[:, :, :16])
    with pytest.raises(ValueError, match="image must have shape"):
        model.training_loss(image.repeat(1, 3, 1, 1), mask)
    with pytest.raises(ValueError, match="single training stage"):
        model.training_loss(image, mask, stage="autoencoder")


def test_sample_shape_range_one_batch_and_reproducibility(tiny):
    images = _images(batch=2)
    calls = []
    handle = tiny.unet.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    try:
        first = tiny.sample(images, 3, generator=torch.Generator().manual_seed(3))
    finally:
        handle.remove()
    assert first.shape == (2, 3, 32, 32) and not first.requires_grad
    assert first.min().item() >= 0.0 and first.max().item() <= 1.0
    assert calls == [6] * 10  # N samples of each image in one batch, 10 DDPM steps
    again = tiny.sample(images, 3, generator=torch.Generator().manual_seed(3))
    other = tiny.sample(images, 3, generator=torch.Generator().manual_seed(4))
    assert torch.equal(first, again) and not torch.equal(first, other)
    ddim = tiny.sample(images, 2, steps=4, sampler="ddim", generator=torch.Generator().manual_seed(3))
    assert ddim.shape == (2, 2, 32, 32)
    with pytest.raises(ValueError, match="multiples of 8"):
        tiny.sample(_images(size=30), 2)
    with pytest.raises(ValueError, match="num_samples"):
        tiny.sample(images, 0)


def test_sample_with_one_generator_per_sample_does_not_depend_on_the_batch(tiny):
    def generators(seeds):
        return [torch.Generator().manual_seed(seed) for seed in seeds]

    images = _images(batch=2)
    both = tiny.sample(images, 2, steps=3, generator=generators([10, 11, 20, 21]))  # image-major order
    second = tiny.sample(images[1:], 2, steps=3, generator=generators([20, 21]))
    assert torch.allclose(both[1], second[0], atol=1e-5)
    assert not torch.allclose(both[1, 0], both[1, 1])


@pytest.mark.parametrize("prediction", ["v", "eps"])
def test_other_predictions_give_a_loss_with_gradients_and_sample_masks(prediction):
    torch.manual_seed(0)
    model = AmbiguousDiffusionModel(AmbiguousDiffusionModel.preset("tiny", prediction=prediction))
    image, mask = _disc_batch()
    loss, _ = model.training_loss(image, mask, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss) and loss > 0
    gradient = model.unet.conv_in.weight.grad
    assert gradient is not None and torch.isfinite(gradient).all() and gradient.abs().sum() > 0
    samples = model.sample(image[:1], 2, steps=3, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (1, 2, 32, 32) and 0.0 <= samples.min() and samples.max() <= 1.0


def _reference_component_sizes(mask: np.ndarray) -> list[int]:
    """Breadth-first search over 8-neighbours: sizes of the connected components, sorted."""
    seen = np.zeros_like(mask, bool)
    sizes = []
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        seen[start] = True
        queue, size = [start], 0
        while queue:
            y, x = queue.pop()
            size += 1
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    ny, nx = y + dy, x + dx
                    if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx] and not seen[ny, nx]:
                        seen[ny, nx] = True
                        queue.append((ny, nx))
        sizes.append(size)
    return sorted(sizes)


def test_connected_components_match_a_breadth_first_search():
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(6, 24, 24, generator=g) > 0.6
    labels = connected_components(masks)
    assert bool(((labels > 0) == masks).all())
    for mask, label in zip(masks.numpy(), labels.numpy()):
        _, counts = np.unique(label[label > 0], return_counts=True)
        assert sorted(counts.tolist()) == _reference_component_sizes(mask)


def test_relative_area_filter_by_hand():
    mask = torch.zeros(2, 10, 10, dtype=torch.bool)
    mask[0, 0:3, 0:3] = True                     # area 9, the largest
    mask[0, 6, 6] = mask[0, 7, 7] = True         # area 2, diagonal neighbours: one component, 2 < 4.5: removed
    mask[0, 6:8, 0:3] = True                     # area 6 >= 4.5: kept
    kept = relative_area_filter(mask, 0.5)
    expected = mask.clone()
    expected[0, 6, 6] = expected[0, 7, 7] = False
    assert torch.equal(kept, expected)           # the empty second mask stays empty
    assert torch.equal(relative_area_filter(mask, 0.0), mask)
    assert int(relative_area_filter(mask, 1.0)[0].sum()) == 9


def test_the_inference_path_applies_the_models_relative_area_filter(tiny, monkeypatch):
    """model.sample returns the samples as drawn; sdseg.inference.sample_crops, the one place every caller goes
    through, applies config["relative_area"] to the binary masks (postprocessing=False: as drawn)."""
    x = -torch.ones(1, 1, 32, 32)
    x[..., 2:12, 2:12] = 0.6                     # area 100
    x[..., 20:24, 20:24] = 0.6                   # area 16 < 50: removed
    monkeypatch.setattr(tiny, "predict_x", lambda z, t, image: x.expand(z.shape[0], -1, -1, -1))
    soft = tiny.sample(_images(batch=1), 2, steps=2)
    assert torch.allclose(soft[0, :, 20:24, 20:24], torch.full((2, 4, 4), 0.8))  # not filtered by the model
    crop = np.zeros((32, 32), np.float32)
    (filtered,) = inference.sample_crops(tiny, [crop], [0], range(2), 2, 0, 32)
    assert filtered.shape == (2, 32, 32) and filtered[:, 2:12, 2:12].all() and not filtered[:, 20:24, 20:24].any()
    (drawn,) = inference.sample_crops(tiny, [crop], [0], range(2), 2, 0, 32, postprocessing=False)
    assert drawn[:, 20:24, 20:24].all()
    monkeypatch.setitem(tiny.config, "relative_area", None)
    (unfiltered,) = inference.sample_crops(tiny, [crop], [0], range(2), 2, 0, 32)
    np.testing.assert_array_equal(unfiltered, drawn)


def test_tiny_model_overfits_one_batch():
    torch.manual_seed(0)
    model = AmbiguousDiffusionModel(AmbiguousDiffusionModel.preset("tiny"))
    image, mask = _disc_batch()

    def held_out_mse():
        with torch.no_grad():
            _, logs = model.training_loss(image.repeat(8, 1, 1, 1), mask.repeat(8, 1, 1, 1),
                                          generator=torch.Generator().manual_seed(123))
        return logs["mse_x"]

    before = held_out_mse()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(100):
        loss, _ = model.training_loss(image, mask, generator=generator)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = held_out_mse()
    assert after < 0.15 * before
    binary = model.sample(image, 4, generator=torch.Generator().manual_seed(0)) > 0.5
    truth = mask > 0.5
    iou = (binary & truth).sum((2, 3)) / (binary | truth).sum((2, 3))
    assert iou.float().mean().item() > 0.6
