"""`sdseg train`'s arguments and defaults, without torch: `--help` and argument errors answer at once
(sdseg.cli parses them before it imports sdseg.training)."""

from __future__ import annotations

import argparse

from sdseg.choices import (AUGMENTATIONS, DEFAULT_AUGMENTATIONS, DEFAULT_PROMPT_CHANNELS, PROMPT_CHANNELS,
                           RATER_TARGETS)
from sdseg.models import BASELINE_KINDS, MODEL_CLASSES

DEFAULTS = {"preset": "small", "steps": 10000, "stage_steps": None, "batch_size": 16, "lr": 1e-4, "warmup": 200,
            "ema": 0.999, "seed": 0, "init": None, "prompt_channels": list(DEFAULT_PROMPT_CHANNELS),
            "augment": list(DEFAULT_AUGMENTATIONS), "target": None, "adopt_preprocessing": False}
WARMUP_MAX_FRACTION = 0.1


def build_parser() -> argparse.ArgumentParser:
    """`sdseg train`'s arguments."""
    parser = argparse.ArgumentParser(
        prog="sdseg train", description="Train a segmentation diffusion model on a crops data set. With --resume, "
        "settings not given are taken from the interrupted run.")
    parser.add_argument("--model", choices=sorted(set(MODEL_CLASSES) - BASELINE_KINDS), help="model kind")
    parser.add_argument("--data", help="crops data set folder (with dataset.json)")
    parser.add_argument("--out", required=True, help="output folder for the model, log, samples and state")
    parser.add_argument("--preset", help=f"model size preset: tiny, small or paper (default {DEFAULTS['preset']})")
    parser.add_argument("--init", help="fine-tune: start from this trained model (installed name or folder) instead "
                        "of random weights; --model and --preset are then taken from it, and its prompt channels unless "
                        "--prompt-channels adds others (their input weights start at zero: sdseg.added_prompts)")
    parser.add_argument("--adopt-preprocessing", action="store_true", help="with --init: fine-tune on data whose "
                        "intensities were normalised another way (e.g. a CT window, for a model trained on "
                        "percentiles): the model takes the data set's intensity preprocessing (image size and "
                        "channels must still match)")
    parser.add_argument("--prompt-channels", help="prompts the model takes as input channels after the image: "
                        f"{','.join(DEFAULT_PROMPT_CHANNELS)} (default), a subset of {','.join(PROMPT_CHANNELS)} "
                        "in that order (previous: the previous slice's mask, for 3D-coherent samples), or none "
                        "(sdseg.prompt_maps)")
    parser.add_argument("--augment", help="training augmentations, a subset of "
                        f"{','.join(AUGMENTATIONS)} or none (default {','.join(DEFAULT_AUGMENTATIONS)}; "
                        "sdseg.data.augment)")
    parser.add_argument("--target", choices=RATER_TARGETS, help="--model unet only: the mask it learns, the raters' "
                        "majority (default: pixels marked by at least half of them), their union, or one random "
                        "rater's per step (what the diffusion models always learn from; sdseg.masks.rater_target)")
    parser.add_argument("--steps", type=int, help=f"training steps, split evenly over the stages of multi-stage "
                        f"models (default {DEFAULTS['steps']})")
    parser.add_argument("--stage-steps", help="steps per stage, e.g. autoencoder=2000,diffusion=8000")
    parser.add_argument("--batch-size", type=int, help=f"images per step (default {DEFAULTS['batch_size']})")
    parser.add_argument("--lr", type=float, help=f"peak learning rate of AdamW (default {DEFAULTS['lr']})")
    parser.add_argument("--warmup", type=int, help=f"linear warm-up steps, at most "
                        f"{WARMUP_MAX_FRACTION * 100:.0f}%% of each stage (default {DEFAULTS['warmup']})")
    parser.add_argument("--ema", type=float, help=f"EMA decay of the weights, 0 for none (default {DEFAULTS['ema']})")
    parser.add_argument("--seed", type=int, help=f"random seed (default {DEFAULTS['seed']})")
    parser.add_argument("--resume", action="store_true", help="continue the run saved in OUT/training_state")
    parser.add_argument("--sample-every", type=int, default=1000,
                        help="save the training state and sample images every K steps, 0 for only at the end "
                             "(default 1000)")
    parser.add_argument("--stop-after", type=int, help="stop after step N, saving the state for --resume")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    return parser
