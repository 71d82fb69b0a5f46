"""Training throughput: images/s of `sdseg train`'s loop (sdseg.training.Training: batches drawn from the crops in
memory, flips and rater choice on the device, gradient clipping, EMA, the log line) against a bare loop (the same
model and AdamW on one batch already on the device), per model kind, measured in one run; prints the ratio.

    python scripts/benchmark_training.py --preset small --batch-size 16 --steps 10
    python scripts/benchmark_training.py --preset small --batch-size 128 --steps 50 --device cuda   # on a GPU
    python scripts/benchmark_training.py --preset tiny --image-size 32 --batch-size 2 --steps 1 --crops 8   # CI

The run's settings come from `sdseg train`'s own parser and defaults (every kind, every setting it needs).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from sdseg.data.synthetic import make_shapes_dataset
from sdseg.device import resolve_device
from sdseg.models import BASELINE_KINDS, MODEL_CLASSES
from sdseg.training import Training, _settings, _StopRequest
from sdseg.training_args import build_parser

DIFFUSION_KINDS = [kind for kind in MODEL_CLASSES if kind not in BASELINE_KINDS]


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def training_loop_rate(training: Training, steps: int, warmup: int) -> float:
    """Images/s of Training's own steps (its last stage, where multi-stage models spend most steps)."""
    stage, count = training.plan[-1]
    training._begin_stage(len(training.plan) - 1, stage, resuming=False)
    for step in range(warmup + steps):
        if step == warmup:
            synchronise(training.device)
            started = time.perf_counter()
        training.step = step
        training._train_step(stage, step, count)
    synchronise(training.device)
    return steps * training.settings["batch_size"] / (time.perf_counter() - started)


def bare_loop_rate(training: Training, steps: int, warmup: int) -> float:
    """Images/s of model + AdamW alone on one batch already on the device (the upper bound of the loop)."""
    model, stage = training.model, training.plan[-1][0]
    image, mask = training._batch(0)
    optimizer = torch.optim.AdamW(model.parameters_for_stage(stage), lr=1e-4)
    model.train()
    for step in range(warmup + steps):
        if step == warmup:
            synchronise(training.device)
            started = time.perf_counter()
        loss, _ = model.training_loss(image, mask, stage=stage)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    synchronise(training.device)
    return steps * image.shape[0] / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", nargs="+", default=DIFFUSION_KINDS, choices=DIFFUSION_KINDS)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per loop (after --warmup)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--crops", type=int, default=256, help="synthetic training crops")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory() as folder:
        data = make_shapes_dataset(Path(folder) / "data", args.crops, 4, 4, image_size=args.image_size, n_raters=4)
        print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, {args.crops} crops of "
              f"{args.image_size} px, batch {args.batch_size}")
        print(f"{'kind':<10} {'sdseg train img/s':>18} {'bare loop img/s':>16} {'ratio':>6}")
        for kind in args.kinds:
            train_args = ["--model", kind, "--data", str(data), "--out", str(Path(folder) / kind), "--preset",
                          args.preset, "--batch-size", str(args.batch_size), "--warmup", "0", "--steps", "1000"]
            settings = _settings(build_parser().parse_args(train_args), None)
            with _StopRequest():
                training = Training(settings, Path(folder) / kind, device, 0, "benchmark")
                ours = training_loop_rate(training, args.steps, args.warmup)
                bare = bare_loop_rate(training, args.steps, args.warmup)
            print(f"{kind:<10} {ours:>18.1f} {bare:>16.1f} {ours / bare:>6.2f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
