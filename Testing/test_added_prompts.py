"""sdseg.added_prompts: a trained model widened with more prompt channels answers as before while they are empty."""

import numpy as np
import pytest
import torch

from sdseg import models
from sdseg.added_prompts import with_prompt_channels
from sdseg.inference import sample_crops
from sdseg.prompt_maps import CropPrompt, prompt_channels_of


def _model(kind: str, channels: list[str]):
    torch.manual_seed(0)
    model = models.build_model(kind, "tiny", image_channels=1 + len(channels))
    model.config["prompt_channels"] = channels
    for parameter in model.parameters():  # trained-looking weights: no zero-initialised output layer
        parameter.data.add_(0.05 * torch.randn_like(parameter))
    return model.eval()


@pytest.mark.parametrize("kind", sorted(set(models.MODEL_CLASSES) - models.BASELINE_KINDS))
@pytest.mark.parametrize("own, wanted", [(["point", "box"], ["point", "box", "previous"]),
                                         (["box"], ["point", "box"])])
def test_a_widened_model_draws_the_same_samples_while_the_added_channels_are_empty(kind, own, wanted):
    model = _model(kind, own)
    wider = with_prompt_channels(model, wanted).eval()
    assert list(prompt_channels_of(wider.config)) == wanted
    size = model.config["image_size"]
    crops = [np.random.default_rng(n).uniform(-1, 1, (size, size)).astype(np.float32) for n in range(2)]
    prompts = [CropPrompt(point=(size / 2, size / 3), box=(2.0, size - 2.0, 4.0, size - 4.0))] * 2
    own_prompts = [CropPrompt(box=p.box) if own == ["box"] else p for p in prompts]
    before = sample_crops(model, crops, [0, 1], range(2), None, seed=3, size=size, prompts=own_prompts)
    after = sample_crops(wider, crops, [0, 1], range(2), None, seed=3, size=size, prompts=own_prompts)
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)
    # until training moves them, the added inputs' zero weights ignore what the added channels carry
    previous = [np.ones((2, size, size), bool)] * 2
    filled = sample_crops(wider, crops, [0, 1], range(2), None, seed=3, size=size, prompts=prompts,
                          previous=previous if "previous" in wanted else None)
    for a, b in zip(before, filled):
        np.testing.assert_array_equal(a, b)
    weights = {name: tensor for name, tensor in wider.state_dict().items()
               if tensor.shape != model.state_dict()[name].shape}
    assert len(weights) == 1 and next(iter(weights.values())).abs().sum() > 0


def test_dropping_a_channel_is_refused_and_the_same_channels_give_the_model_itself():
    model = _model("sdseg", ["point", "box"])
    with pytest.raises(ValueError, match=r"\['box'\] cannot be dropped"):
        with_prompt_channels(model, ["point"])
    assert with_prompt_channels(model, ["point", "box"]) is model
