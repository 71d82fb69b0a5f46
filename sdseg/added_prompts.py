"""Fine-tuning a trained model with more prompt channels than it was trained with (``sdseg train --init MODEL
--prompt-channels ...``): the model is rebuilt with the wider input and every weight is copied; the one tensor whose
input channels grew (the first convolution that sees the image) gets its trained channels where they now sit and
zeros for the added ones, so the widened model computes exactly what the trained one did as long as the added
channels carry nothing, and fine-tuning starts from there (the zero-initialised new input, as ControlNet's zero
convolutions, Zhang et al. 2023, Sec. 3.1).
"""

from __future__ import annotations

import torch

from sdseg.models import model_from_config
from sdseg.prompt_maps import data_channels, prompt_channels_of


def with_prompt_channels(model, channels: list[str]):
    """A new model of ``model``'s kind that takes ``channels`` (its own prompt channels plus others, in
    :data:`sdseg.choices.PROMPT_CHANNELS` order), with ``model``'s weights (``model`` itself when ``channels`` are
    its own); ValueError when ``channels`` drops one of the model's own channels."""
    own = list(prompt_channels_of(model.config))
    channels = list(prompt_channels_of({"prompt_channels": channels}))
    if missing := [c for c in own if c not in channels]:
        raise ValueError(f"the model takes the prompt channels {own}; {missing} cannot be dropped by fine-tuning")
    if channels == own:
        return model
    data = data_channels(model.config)
    config = {**model.config, "image_channels": data + len(channels), "prompt_channels": channels}
    wider = model_from_config(model.kind, config)
    old_state, new_state = model.state_dict(), wider.state_dict()
    grown = [name for name, tensor in old_state.items() if tensor.shape != new_state[name].shape]
    if len(grown) != 1 or old_state[grown[0]].dim() < 2:
        raise ValueError(f"cannot tell which weights take the prompt channels ({grown})")
    name = grown[0]
    old, new = old_state[name], torch.zeros_like(new_state[name])
    offset = old.shape[1] - data - len(own)  # input channels before the image's (a noisy mask, for some kinds)
    targets = list(range(offset + data)) + [offset + data + channels.index(c) for c in own]
    new[:, targets] = old
    wider.load_state_dict({**old_state, name: new}, strict=True)
    return wider
