"""`sdseg train`: train a segmentation diffusion model on a crops data set (docs/architecture.md "Data sets").

AdamW with linear warm-up and cosine decay of the learning rate, gradient clipping at norm 1, an optional
exponential moving average (EMA) of the weights (the saved model is then the EMA model), one random rater mask
per image per step (the deterministic ``unet``: the raters' majority or union, ``--target``) and the augmentations
of ``--augment`` (sdseg.data.augment; default: random flips). Models with several stages (SDSeg: autoencoder, then
diffusion) train them in order, each with its own optimizer and schedule.

Reproducible and resumable without saving random-generator states: every random draw of step s (data order,
augmentations, rater choice, dropout, the model's noise and timesteps) comes from generators seeded with (seed, s),
so a run continued with ``--resume`` from its saved state (weights, EMA, optimizer, step: safetensors + JSON in
``OUT/training_state/``, never pickle) ends with exactly the weights of an uninterrupted run.

Output folder: the model (``config.json``, ``model.safetensors``, ``README.md`` card, via
:func:`sdseg.checkpoint.save_model`), ``train_log.jsonl`` (one JSON line per step), ``samples/step_NNNNNN.png``
(image, raters, predicted samples at each checkpoint) and ``training_state/``.

``--init MODEL`` fine-tunes: the run starts from the weights and configuration of a trained model (e.g. a bundled
one, on the user's own data) instead of random weights of a preset.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import shlex
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import sdseg
from sdseg.added_prompts import with_prompt_channels
from sdseg.checkpoint import CheckpointError, load_model, read_config, save_model
from sdseg.choices import DEFAULT_AUGMENTATIONS
from sdseg.data.augment import parse_augmentations
from sdseg.data.batches import InMemoryCrops
from sdseg.data.dataset import CropsDataset, DatasetError
from sdseg.device import DeviceUnavailable, hardware_description, resolve_device
from sdseg.ema import WeightEMA
from sdseg.models import build_model, model_from_config
from sdseg.prompt_maps import (PROMPT_CHANNELS, crop_prompt_maps, data_channels, object_click,
                               prompt_channels_of)
from sdseg.registry import UnknownModelError, resolve_model
from sdseg.training_args import DEFAULTS, WARMUP_MAX_FRACTION, build_parser
from sdseg.training_state import (STATE_DIR, TrainingStateError, optimizer_state, read_training_state,
                                  save_training_state, tensors_with_prefix, truncate_log)

GRAD_CLIP_NORM = 1.0
SAMPLE_EXAMPLES = 4
SAMPLES_PER_EXAMPLE = 4
TARGET_WORDS = {"random": "one random rater mask per image", "majority": "the raters' majority mask per image",
                "union": "the raters' union mask per image"}  # the model card's words for each training target


class TrainingError(Exception):
    """A training run cannot start or continue; the message says what to do."""


def learning_rate(step: int, total_steps: int, warmup_steps: int, peak: float) -> float:
    """Learning rate of (0-based) ``step``: linear warm-up ``peak (step + 1) / W`` for ``step < W`` (Goyal et al.
    2017, "Accurate, Large Minibatch SGD", sec. 2.2), then cosine decay ``peak (1 + cos(pi p)) / 2`` with
    ``p = (step - W) / (total_steps - W)`` (Loshchilov & Hutter 2017, SGDR, eq. 5 with eta_min = 0, one cycle)."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
    return peak * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def derived_seed(*parts: int | str) -> int:
    """A well-mixed 63-bit seed from integers and short strings (e.g. the run seed, a purpose, a step)."""
    words = [p if isinstance(p, int) else int.from_bytes(p.encode(), "little") for p in parts]
    return int(np.random.SeedSequence(words).generate_state(1, np.uint64)[0] >> np.uint64(1))


class BatchOrder:
    """Training item indices of each step: the epochs are independent random permutations of the data set
    (seeded with (seed, epoch)) laid end to end and cut into batches, so any step's batch is known directly."""

    def __init__(self, n_items: int, batch_size: int, seed: int):
        self.n_items, self.batch_size, self.seed = n_items, batch_size, seed
        self._permutations: dict[int, list[int]] = {}

    def _permutation(self, epoch: int) -> list[int]:
        if epoch not in self._permutations:
            generator = torch.Generator().manual_seed(derived_seed(self.seed, "epoch", epoch))
            self._permutations = {epoch: torch.randperm(self.n_items, generator=generator).tolist()}
        return self._permutations[epoch]

    def indices(self, step: int) -> list[int]:
        positions = range(step * self.batch_size, (step + 1) * self.batch_size)
        return [self._permutation(p // self.n_items)[p % self.n_items] for p in positions]


def stage_plan(stages: list[str], steps: int, stage_steps: dict[str, int] | None) -> list[tuple[str, int]]:
    """(stage, steps) in training order: ``stage_steps`` when given, else ``steps`` split evenly (the last stage
    takes the remainder)."""
    if stage_steps is None:
        share = steps // len(stages)
        return [(stage, share + (steps - share * len(stages) if i == len(stages) - 1 else 0))
                for i, stage in enumerate(stages)]
    if set(stage_steps) != set(stages):
        raise TrainingError(f"--stage-steps must name each stage of this model exactly once: "
                            f"{','.join(f'{s}=N' for s in stages)}")
    return [(stage, stage_steps[stage]) for stage in stages]


def parse_stage_steps(text: str) -> dict[str, int]:
    """``"autoencoder=1000,diffusion=5000"`` -> ``{"autoencoder": 1000, "diffusion": 5000}``."""
    result = {}
    for part in text.split(","):
        name, _, count = part.partition("=")
        try:
            result[name.strip()] = int(count)
        except ValueError:
            raise TrainingError(f"--stage-steps: expected STAGE=STEPS pairs separated by commas, got {part!r}") \
                from None
        if result[name.strip()] < 0:
            raise TrainingError(f"--stage-steps: steps must not be negative, got {part!r}")
    return result


def parse_prompt_channels(text: str) -> list[str]:
    """``"point,box"`` -> ``["point", "box"]``; ``"none"`` -> ``[]``."""
    channels = [] if text.strip() == "none" else [c.strip() for c in text.split(",") if c.strip()]
    try:
        return list(prompt_channels_of({"prompt_channels": channels}))
    except ValueError:
        raise TrainingError(f"--prompt-channels: give {','.join(PROMPT_CHANNELS)}, a subset in that order, or "
                            f"none; got {text!r}") from None


def _parse_augment(text: str) -> list[str]:
    try:
        return parse_augmentations(text)
    except ValueError as error:
        raise TrainingError(f"--augment: {error}") from None


def _settings(args: argparse.Namespace, saved: dict | None) -> dict:
    """The run-defining settings: explicit arguments, else the saved run's (with --resume), else the defaults."""
    explicit = {"model": args.model, "preset": args.preset, "init": _init_folder(args.init) if args.init else None,
                "batch_size": args.batch_size, "lr": args.lr,
                "warmup": args.warmup, "ema": args.ema, "seed": args.seed,
                "data": str(Path(args.data).resolve()) if args.data else None,
                "stage_steps": parse_stage_steps(args.stage_steps) if args.stage_steps else None,
                "prompt_channels": parse_prompt_channels(args.prompt_channels) if args.prompt_channels else None,
                "augment": _parse_augment(args.augment) if args.augment else None, "target": args.target,
                "adopt_preprocessing": True if args.adopt_preprocessing else None}
    if saved is not None:
        saved = {"augment": list(DEFAULT_AUGMENTATIONS), "adopt_preprocessing": False, **saved}  # older runs
        different = [f"--{key.replace('_', '-')} {value} (the saved run has {saved[key]})"
                     for key, value in explicit.items() if value is not None and value != saved.get(key)]
        if args.steps is not None and args.steps != sum(saved["stage_steps"].values()):
            different.append(f"--steps {args.steps} (the saved run has {sum(saved['stage_steps'].values())})")
        if different:
            raise TrainingError("--resume continues a run with its own settings; these differ: "
                                + "; ".join(different) + ". Leave them out, or start a new run in another --out")
        return dict(saved)
    if explicit["init"] is not None:
        if args.preset or args.target:
            raise TrainingError("--init starts from a trained model's own size and target: leave out --preset and "
                                "--target")
        try:
            kind = read_config(Path(explicit["init"]))["kind"]
        except CheckpointError as error:
            raise TrainingError(f"--init: {error}") from None
        if args.model and args.model != kind:
            raise TrainingError(f"--init {args.init} is a {kind} model, not {args.model}: leave out --model or "
                                "choose a model of that kind")
        explicit["model"] = kind
    elif explicit["adopt_preprocessing"]:
        raise TrainingError("--adopt-preprocessing changes the preprocessing of an --init model: give --init")
    if not explicit["model"] or not args.data:
        raise TrainingError("--model (or --init) and --data are required to start a run (or pass --resume to "
                            "continue one)")
    settings = {key: DEFAULTS.get(key) if value is None else value for key, value in explicit.items()}
    if settings["init"] is not None and not args.prompt_channels:
        settings["prompt_channels"] = None  # the trained model's own
    settings["steps"] = DEFAULTS["steps"] if args.steps is None else args.steps
    if args.steps is not None and settings["stage_steps"] and args.steps != sum(settings["stage_steps"].values()):
        raise TrainingError(f"--steps {args.steps} differs from the sum of --stage-steps "
                            f"({sum(settings['stage_steps'].values())}); give only one of them")
    return settings


def _init_folder(name: str) -> str:
    try:
        return str(resolve_model(name))
    except UnknownModelError as error:
        raise TrainingError(f"--init: {error}") from None


def _check_settings(settings: dict) -> None:
    checks = [(settings["batch_size"] >= 1, "--batch-size must be at least 1"),
              (settings["lr"] > 0, "--lr must be positive"),
              (settings["warmup"] >= 0, "--warmup must not be negative"),
              (0.0 <= settings["ema"] < 1.0, "--ema must be in [0, 1) (0 switches the EMA off)"),
              (settings["seed"] >= 0, "--seed must not be negative"),
              (settings.get("target") is None or settings["model"] == "unet",
               "--target is for --model unet; the diffusion models learn from one random rater's mask per step")]
    for ok, message in checks:
        if not ok:
            raise TrainingError(message)


def write_sample_figure(model, images: torch.Tensor, rater_masks: list[torch.Tensor], path: Path,
                        seed: int) -> None:
    """PNG grid, one row per example: the image, each rater's mask, then samples drawn by ``model``."""
    from matplotlib.figure import Figure

    device = next(model.parameters()).device
    model.eval()
    samples = model.sample(images.to(device), SAMPLES_PER_EXAMPLE,
                           generator=torch.Generator().manual_seed(seed)).cpu()
    n_raters = max(m.shape[0] for m in rater_masks)
    columns = 1 + n_raters + SAMPLES_PER_EXAMPLE
    figure = Figure(figsize=(1.3 * columns, 1.4 * len(images)))
    axes = figure.subplots(len(images), columns, squeeze=False)
    for row, image in enumerate(images):
        panels = [("image", image[0], "gray", (-1, 1))]
        panels += [(f"rater {r + 1}", mask, "gray", (0, 1)) for r, mask in enumerate(rater_masks[row])]
        panels += [None] * (n_raters - rater_masks[row].shape[0])
        panels += [(f"sample {s + 1}", samples[row, s], "magma", (0, 1)) for s in range(SAMPLES_PER_EXAMPLE)]
        for axis, panel in zip(axes[row], panels):
            axis.set_axis_off()
            if panel is not None:
                title, array, cmap, (low, high) = panel
                axis.imshow(array.numpy(), cmap=cmap, vmin=low, vmax=high, interpolation="nearest")
                if row == 0:
                    axis.set_title(title, fontsize=7)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)


class _StopRequest:
    """Ctrl-C asks the training loop to save its state and stop after the current step; a second one aborts."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def training_data_record(info: dict) -> dict:
    """What a model records of a data set it was trained on (an entry of ``config["training_data"]``): its name
    and, for data made from patients, the patient-level split, so that anyone can check which patients a model never
    saw."""
    return {"data_set": info["name"], "splits": info.get("splits")}


def with_training_data(records: list[dict], record: dict) -> list[dict]:
    """``records`` (a model's ``config["training_data"]``) with ``record`` added unless it is there already: one
    entry per data set and split, however many runs trained on it (each run's card says what it started from)."""
    return records if record in records else [*records, record]


class Training:
    """One training run writing into ``out``; :meth:`run` trains until the end or ``stop_after``."""

    def __init__(self, settings: dict, out: Path, device: torch.device, sample_every: int, command: str,
                 resume: dict | None = None):
        self.settings, self.out, self.device, self.sample_every = settings, out, device, sample_every
        self.seed = settings["seed"]
        self.dataset = CropsDataset(settings["data"], "train")
        self.crops = InMemoryCrops(self.dataset, device)
        if resume is None:
            image_channels = self.dataset.read(0)["image"].shape[0]
            self.model = (self._initial_model(Path(settings["init"]), image_channels) if settings.get("init")
                          else self._new_model(image_channels))
            self.model.config["training_data"] = with_training_data(self.model.config.get("training_data", []),
                                                                    training_data_record(self.dataset.info))
            if self.dataset.info.get("crop"):  # how the crops were cut: inference cuts its own the same way
                self.model.config["crop"] = dict(self.dataset.info["crop"])
            self.meta = {"command": command, "resumed_at": [], "elapsed_s": 0.0, "step": 0}
        else:
            self.meta = resume["meta"]
            self.model = model_from_config(settings["model"], self.meta["model_config"])
            self.model.load_state_dict(tensors_with_prefix(resume["tensors"], "model."), strict=True)
            self.meta["resumed_at"].append(self.meta["step"])
        self.model.to(device)
        self.prompt_channels = prompt_channels_of(self.model.config)
        self.examples = self._sample_examples()
        if device.type == "cuda":  # same seed -> same weights also on GPUs (at some cost in speed)
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
        self.plan = stage_plan(self.model.training_stages(), settings.get("steps", 0), settings["stage_steps"])
        self.settings["stage_steps"] = dict(self.plan)
        self.settings.pop("steps", None)
        self.total_steps = sum(n for _, n in self.plan)
        if self.total_steps < 1:
            raise TrainingError("nothing to train: give --steps or --stage-steps with at least one step")
        self.step = self.meta["step"]
        self.ema = WeightEMA(self.model, settings["ema"]) if settings["ema"] > 0 else None
        if self.ema is not None and resume is not None:
            ema_tensors = tensors_with_prefix(resume["tensors"], "ema.")
            self.ema.shadow = {name: t.to(device) for name, t in ema_tensors.items()}
            self.ema.updates = self.meta["ema_updates"]
        self._saved_optimizer = None if resume is None else (
            self.meta["optimizer"]["stage"], optimizer_state(self.meta["optimizer"], resume["tensors"]))
        self.order = BatchOrder(len(self.dataset), settings["batch_size"], self.seed)
        self.optimizer = None
        self.stage_names: list[str] = []
        self.last_loss = self.meta.get("last_loss", float("nan"))
        self._started = time.monotonic()
        self._elapsed_before = self.meta["elapsed_s"]

    def _new_model(self, image_channels: int):
        """A randomly initialised model of the run's kind and preset, sized for this data set."""
        settings = self.settings
        torch.manual_seed(derived_seed(self.seed, "init"))
        prompts = settings.get("prompt_channels") or []
        target = {"target": settings["target"]} if settings.get("target") else {}
        try:
            model = build_model(settings["model"], settings["preset"], image_size=self.dataset.info["image_size"],
                                image_channels=image_channels + len(prompts),
                                preprocessing=self.dataset.info["preprocessing"], **target)
        except ValueError as error:
            raise TrainingError(f"cannot build a {settings['model']} model ({settings['preset']} preset) for "
                                f"this data set: {error}") from error
        if prompts:
            model.config["prompt_channels"] = list(prompts)
        return model

    def _initial_model(self, folder: Path, image_channels: int):
        """The trained model at ``folder`` (float32), checked to fit this data set: image size, channels and
        intensity preprocessing must be the ones it was trained with."""
        try:
            model = load_model(folder)
        except CheckpointError as error:
            raise TrainingError(f"--init: {error}") from None
        info, config = self.dataset.info, model.config
        if self.settings["adopt_preprocessing"]:
            config["preprocessing"] = dict(info["preprocessing"])
        differences = [f"{name} {ours} (the model has {theirs})" for name, ours, theirs in (
            ("image size", info["image_size"], config["image_size"]),
            ("image channels", image_channels, data_channels(config)),
            ("preprocessing", info["preprocessing"], config["preprocessing"])) if ours != theirs]
        if differences:
            adopt = ", or give --adopt-preprocessing" if info["preprocessing"] != config["preprocessing"] else ""
            raise TrainingError(f"--init {folder}: this data set does not fit the model: " + "; ".join(differences)
                                + ". Preprocess the data with the model's settings (sdseg preprocess --size ...)"
                                + adopt)
        if self.settings.get("prompt_channels") is not None:  # --prompt-channels given: fine-tuning adds some
            try:
                model = with_prompt_channels(model, self.settings["prompt_channels"])
            except ValueError as error:
                raise TrainingError(f"--init {folder} --prompt-channels: {error}") from None
        return model.float().train()

    # ----- data
    def _sample_examples(self):
        directory = Path(self.settings["data"])
        split = next((s for s in ("val", "test") if any((directory / s).glob("*.npz"))), "train")
        dataset = CropsDataset(directory, split)
        items = [dataset[i] for i in range(min(SAMPLE_EXAMPLES, len(dataset)))]
        images = torch.stack([image for image, _ in items])
        if self.prompt_channels:  # the click a user would give: the most interior point of the raters' majority
            size = images.shape[-1]
            clicks = [object_click(masks.numpy() > 0) for _, masks in items]
            images = torch.cat([images, crop_prompt_maps(clicks, [(size, size)] * len(items), size,
                                                         self.prompt_channels, "cpu")], dim=1)
        return images, [masks for _, masks in items]

    def _batch(self, step: int):
        """The (image, one-rater mask) batch of ``step``, drawn from a generator seeded with (seed, step); seeds
        torch's global generator for the model's dropout of this step."""
        torch.manual_seed(derived_seed(self.seed, "step", step))
        generator = torch.Generator().manual_seed(derived_seed(self.seed, "batch", step))
        return self.crops.batch(self.order.indices(step), generator, self.settings["augment"], self.prompt_channels,
                                self.model.training_target())

    def _stage_batches(self, stage_index: int):
        """One pass over the training set in a fixed order, for ``begin_stage``."""
        generator = torch.Generator().manual_seed(derived_seed(self.seed, "stage", stage_index))
        order = torch.randperm(len(self.crops), generator=generator).tolist()
        for start in range(0, len(order), self.settings["batch_size"]):
            yield self.crops.batch(order[start:start + self.settings["batch_size"]], generator,
                                   self.settings["augment"], self.prompt_channels, self.model.training_target())

    # ----- stages and steps
    def _begin_stage(self, index: int, stage: str, resuming: bool) -> None:
        self.model.begin_stage(stage, self._stage_batches(index))
        parameters = self.model.parameters_for_stage(stage)
        by_id = {id(p): name for name, p in self.model.named_parameters()}
        self.stage_names = [by_id[id(p)] for p in parameters]
        self.optimizer = torch.optim.AdamW(parameters, lr=self.settings["lr"])
        if resuming:
            saved_stage, saved_state = self._saved_optimizer
            if saved_stage != stage:
                raise TrainingError(f"the saved optimizer state belongs to stage {saved_stage!r}, not {stage!r}; "
                                    "the training state is inconsistent: start a new run")
            self.optimizer.load_state_dict(saved_state)
        elif self.ema is not None:
            self.ema.updates = 0

    def _warmup(self, stage_total: int) -> int:
        return min(self.settings["warmup"], int(WARMUP_MAX_FRACTION * stage_total))

    def _train_step(self, stage: str, stage_step: int, stage_total: int) -> dict:
        lr = learning_rate(stage_step, stage_total, self._warmup(stage_total), self.settings["lr"])
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        image, mask = self._batch(self.step)
        generator = torch.Generator().manual_seed(derived_seed(self.seed, "loss", self.step))
        self.model.train()
        loss, logs = self.model.training_loss(image, mask, generator=generator, stage=stage)
        if not torch.isfinite(loss):
            raise TrainingError(f"the loss became {loss.item()} at step {self.step + 1}; lower --lr and start again")
        self.model.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.optimizer.param_groups[0]["params"], GRAD_CLIP_NORM)
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update(self.model, self.stage_names)
        self.last_loss = loss.item()
        return {"step": self.step + 1, "stage": stage, "lr": lr, **logs, "loss": self.last_loss}

    def run(self, stop_after: int | None, stop: _StopRequest) -> bool:
        """Train up to the end (returns True) or until ``stop_after`` / Ctrl-C (saves the state, returns False)."""
        log_path = self.out / "train_log.jsonl"
        truncate_log(log_path, self.step)
        bar = tqdm(total=self.total_steps, initial=self.step, desc=f"train {self.model.kind}", unit="step",
                   dynamic_ncols=True, mininterval=1.0)
        with bar, log_path.open("a", encoding="utf-8") as log:
            for index, (stage, count) in enumerate(self.plan):
                start, end = sum(n for _, n in self.plan[:index]), sum(n for _, n in self.plan[:index + 1])
                if self.step >= end:
                    continue
                self._begin_stage(index, stage, resuming=self.step > start)
                while self.step < end:
                    entry = self._train_step(stage, self.step - start, count)
                    self.step += 1
                    entry["elapsed_s"] = round(self.elapsed(), 3)
                    log.write(json.dumps(entry) + "\n")
                    log.flush()
                    bar.set_postfix(stage=stage, loss=f"{self.last_loss:.4f}")
                    bar.update(1)
                    if self.step == end and self.ema is not None:
                        self.ema.copy_to(self.model, self.stage_names)  # later stages build on the EMA weights
                    finished = self.step == self.total_steps
                    stopping = not finished and (self.step == stop_after or stop.requested)
                    if finished or (self.sample_every and self.step % self.sample_every == 0):
                        self.checkpoint(stage)
                    elif stopping:
                        self.save_state(stage)
                    if stopping:
                        return False
        return True

    def elapsed(self) -> float:
        return self._elapsed_before + time.monotonic() - self._started

    # ----- outputs
    def checkpoint(self, stage: str) -> None:
        self.save_state(stage)
        images, masks = self.examples
        model = self.model
        with self.ema.applied(model) if self.ema is not None else contextlib.nullcontext():
            write_sample_figure(model, images, masks, self.out / "samples" / f"step_{self.step:06d}.png",
                                derived_seed(self.seed, "samples"))

    def save_state(self, stage: str) -> None:
        """Write ``OUT/training_state`` (see :func:`sdseg.training_state.save_training_state`)."""
        tensors = {f"model.{name}": t for name, t in self.model.state_dict().items()}
        if self.ema is not None:
            tensors.update({f"ema.{name}": t for name, t in self.ema.shadow.items()})
        run = {"settings": self.settings, "kind": self.model.kind, "model_config": self.model.config,
               "elapsed_s": self.elapsed(), "ema_updates": self.ema.updates if self.ema is not None else 0,
               "last_loss": self.last_loss}
        save_training_state(self.out, self.meta, self.step, tensors, self.optimizer.state_dict(), stage, run)

    def save_final_model(self) -> Path:
        with self.ema.applied(self.model) if self.ema is not None else contextlib.nullcontext():
            return save_model(self.model, self.out, card=self.model_card())

    def model_card(self) -> str:
        s, info = self.settings, self.dataset.info
        steps = ", ".join(f"{stage} {n}" for stage, n in self.plan)
        warmup = ", ".join(f"{self._warmup(n)} ({stage})" for stage, n in self.plan) if len(self.plan) > 1 \
            else str(self._warmup(self.plan[0][1]))
        samples = sorted(p.name for p in (self.out / "samples").glob("*.png"))
        resumed = f" (resumed at steps {', '.join(map(str, self.meta['resumed_at']))})" if self.meta["resumed_at"] \
            else ""
        ema = f"decay {s['ema']} (the saved weights are the EMA weights)" if s["ema"] > 0 else "none"
        origin = f"fine-tuned from `{s['init']}`" if s.get("init") else f"preset {s['preset']}"
        if s.get("init") and s.get("prompt_channels") is not None:
            origin += f" with the prompt channels {', '.join(s['prompt_channels'])} (added ones start at zero)"
        if s.get("adopt_preprocessing"):
            origin += f", taking the data set's intensity preprocessing `{json.dumps(info['preprocessing'])}`"
        rows = [("model kind", f"{self.model.kind}, {origin}, {self.model.num_parameters():,} parameters"),
                ("data set", f"{info['name']} ({'synthetic' if info['synthetic'] else 'real'} data; "
                             f"{len(self.dataset)} training crops of {info['image_size']} px, {info['n_raters']} "
                             f"rater(s)); source: {info['source']}; licence: {info['licence']}"),
                ("command", f"`{self.meta['command']}`{resumed}"),
                ("steps", f"{steps} (batch {s['batch_size']}, {TARGET_WORDS[self.model.training_target()]})"),
                ("augmentations", ", ".join(s["augment"]) or "none"),
                ("optimiser", f"AdamW, peak learning rate {s['lr']}, linear warm-up of {warmup} steps, then "
                              f"cosine decay, gradient clipping at {GRAD_CLIP_NORM}"),
                ("EMA", ema), ("seed", str(s["seed"])),
                ("final training loss", f"{self.last_loss:.4g}"),
                ("training time", f"{self.elapsed():.1f} s"), ("hardware", hardware_description(self.device)),
                ("software", f"sdseg {sdseg.__version__}")]
        lines = [f"# {self.model.kind} model trained on {info['name']}", "",
                 "Trained with `sdseg train`. Research use only, not for clinical decisions.", "",
                 "| | |", "| --- | --- |", *[f"| {key} | {value} |" for key, value in rows], "",
                 f"Data set description: {info['description']}", ""]
        if samples:
            lines += ["Samples (image, raters, predicted samples) at the checkpoints: "
                      + ", ".join(f"`samples/{name}`" for name in samples), ""]
        return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    command = "sdseg train " + shlex.join(argv)
    try:
        resume = read_training_state(out) if args.resume else None
        if resume is None and ((out / STATE_DIR).exists() or (out / "config.json").exists()):
            raise TrainingError(f"{out} already holds a training run; pass --resume to continue it or choose "
                                "another --out")
        settings = _settings(args, resume["meta"]["settings"] if resume else None)
        _check_settings(settings)
        at_step = resume["meta"]["step"] if resume else 0
        if args.stop_after is not None and args.stop_after <= at_step:
            raise TrainingError(f"--stop-after {args.stop_after}: the run is at step {at_step}; give a later step")
        try:
            device = resolve_device(args.device)
        except DeviceUnavailable as error:
            raise TrainingError(f"--device {args.device}: {error}") from None
        out.mkdir(parents=True, exist_ok=True)
        training = Training(settings, out, device, args.sample_every, command, resume)
        print(f"training {training.model.kind} ({training.model.num_parameters():,} parameters) on {device} for "
              f"{training.total_steps} steps, starting at step {training.step}", flush=True)
        with _StopRequest() as stop:
            finished = training.run(args.stop_after, stop)
        if not finished:
            print(f"stopped after step {training.step}; continue with: sdseg train --out {shlex.quote(str(out))} "
                  "--resume", flush=True)
            return 0
        folder = training.save_final_model()
    except (TrainingError, TrainingStateError, DatasetError, CheckpointError) as error:
        print(f"sdseg train: error: {error}", file=sys.stderr)
        return 2
    except torch.cuda.OutOfMemoryError:
        print("sdseg train: error: out of GPU memory; use a smaller --batch-size or preset, or --device cpu",
              file=sys.stderr)
        return 2
    except OSError as error:
        print(f"sdseg train: error: cannot write into --out {out} ({error})", file=sys.stderr)
        return 2
    print(f"model written to {folder}", flush=True)
    return 0
