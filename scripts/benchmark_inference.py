"""Inference speed per model kind, in one run: start-up (the command line's imports, the worker ready, its first
slice of README command 1), slices/s and first-slice latency at N samples with batching on vs off, and each
model's sampler against a bare loop of the same forward passes; with --prompt, the prompt-driven mode on the
bundled sample volume for each installed model.

Start-up: `sdseg-slicer --help` in a new process (wall and CPU seconds), then a real worker (SDSegSlicerLib's
WorkerClient) started and given README command 1's job (the default model, one click on the sample volume): seconds
to its hello, to the first slice and to the end. Warm worker (as the Slicer module and the web page keep one from
the moment a volume is there): a worker started and idle (its network code loaded), then README command 1's job
for each of --warm-models, twice: seconds from the submission (Segment) to the first slice.
Sampler vs bare loop: the network calls one ``model.sample`` makes (every call of a sub-module not made inside
another one, e.g. the UNet and the decoder, with their inputs) are recorded, then replayed alone; the ratio is
bare-loop time / sampler time (1.0: the sampler adds nothing to its forward passes).

"Batch on" lets sdseg.inference choose the images per forward pass from the free memory; "batch off" runs one image
per forward pass. Uses the installed model of each kind (sdseg.registry) when there is one, otherwise a randomly
initialised preset (speed does not depend on the weights). Prints one table and the on/off ratios of this run.
--prompt: one click at the tumour of Resources/SampleData (sdseg.evaluation.prompt_point), propagated as the worker
does (sdseg.propagation); prints first-slice latency, total time and slices visited.

    python scripts/benchmark_inference.py --slices 8 --size 64 --samples 1 4 16
    python scripts/benchmark_inference.py --prompt --samples 8 --threads 2
    python scripts/benchmark_inference.py --batch-sweep --sizes 64 128 --threads 1
    python scripts/benchmark_inference.py --slices 2 --size 16 --samples 1 --startup-samples 1   # CI

--batch-sweep: seconds per image of one sampling call at 1, 2, 4, 8, 16 images per forward pass, per kind and image
size (a preset model of each kind made at that size), and the batch that sdseg.inference.auto_batch_size picks.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from sdseg import inference, registry
from sdseg.checkpoint import load_model
from sdseg.evaluation import prompt_point
from sdseg.models import BASELINE_KINDS, MODEL_CLASSES, build_model
from sdseg.propagation import Prompt, propagate
from sdseg.volume_io import read_volume
from sdseg.worker.__main__ import NETWORK_CODE_LOADED

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "SDSegSlicer"))
from SDSegSlicerLib.worker_client import STDERR_LINES_KEPT, WorkerClient  # noqa: E402

SAMPLE_DIR = ROOT / "Resources" / "SampleData"
DIFFUSION_KINDS = [kind for kind in MODEL_CLASSES if kind not in BASELINE_KINDS]
README_CLICK_IJK = [45, 31, 16]  # README command 1: --point-ijk 45,31,16 on the sample volume
STARTUP_TIMEOUT_S = 600.0


def child_cpu_s() -> float:
    usage = os.times()
    return usage.children_user + usage.children_system


def readme_job(client, model: str | None, samples: int) -> tuple[float, int, float]:
    """Run README command 1's job (one click on the sample volume) with ``model`` on a started worker: (seconds
    from the submission to the first slice, slices, seconds to the end)."""
    started = time.perf_counter()
    job_id = client.submit({"volume": str(SAMPLE_DIR / "sample.nrrd"), "model": model, "samples": samples,
                            "steps": None, "seed": 0, "device": "auto", "batch_size": None, "roi_ijk": None,
                            "slice_axis": None, "prompt": {"lesions": [{"point_ijk": README_CLICK_IJK}]}})
    first, slices, end = None, 0, None
    while end is None and time.perf_counter() - started < STARTUP_TIMEOUT_S:
        for message in client.poll(1.0):
            if message.get("job_id") != job_id:
                continue
            if message["type"] == "slice":
                first, slices = first or time.perf_counter() - started, slices + 1
            elif message["type"] in ("done", "cancelled", "error"):
                end = message
    if end is None or end["type"] != "done":
        raise SystemExit(f"README command 1's job ({model or 'default model'}) did not finish: {end}")
    return first, slices, time.perf_counter() - started


def startup(samples: int) -> None:
    """The command line's import time, then a real worker: ready, first slice and end of README command 1's job."""
    cpu, started = child_cpu_s(), time.perf_counter()
    subprocess.run([sys.executable, "-m", "SDSegSlicerLib.headless", "--help"], check=True, stdout=subprocess.DEVNULL,
                   env=dict(os.environ, PYTHONPATH=os.pathsep.join(map(str, sys.path[:1] + [ROOT]))))
    print(f"start-up: `sdseg-slicer --help` {time.perf_counter() - started:.2f} s wall, {child_cpu_s() - cpu:.2f} "
          "CPU-s")
    started = time.perf_counter()
    client = WorkerClient()
    try:
        hello = client.start(STARTUP_TIMEOUT_S)
        ready = time.perf_counter() - started
        first, slices, _ = readme_job(client, None, samples)
    finally:
        client.stop()
    print(f"start-up: worker ready {ready:.2f} s after launch ({hello.get('runtime')}); README command 1 (default "
          f"model, N={samples}): first slice at {ready + first:.2f} s, {slices} slices done at "
          f"{time.perf_counter() - started:.2f} s")


def warm_worker(models: list[str], samples: int) -> None:
    """What the Slicer module and the web page give: a worker started with the volume, idle (network code loaded)
    when Segment is pressed; seconds from Segment (README command 1's job) to its first slice, for the first and
    the next Segment of each model (the first one loads its weights)."""
    client = WorkerClient()
    try:
        client.start(STARTUP_TIMEOUT_S)
        deadline = time.perf_counter() + STARTUP_TIMEOUT_S
        while NETWORK_CODE_LOADED not in client.stderr_tail(STDERR_LINES_KEPT):
            if time.perf_counter() > deadline:
                raise SystemExit("the worker did not say that its network code is loaded")
            time.sleep(0.1)
        for model in models:
            first, _, end = readme_job(client, model, samples)
            again, _, _ = readme_job(client, model, samples)
            print(f"warm worker: {model} (N={samples}): first slice {first:.2f} s after Segment (next Segment "
                  f"{again:.2f} s), README command 1 done {end:.2f} s after Segment", flush=True)
    finally:
        client.stop()


def top_level_calls(model, run) -> list[tuple]:
    """(module, args, kwargs) of every sub-module call ``run()`` makes that is not inside another one's call."""
    calls, depth = [], [0]

    def enter(module, args, kwargs):
        if depth[0] == 0:
            calls.append((module, args, kwargs))
        depth[0] += 1

    def leave(module, args, output):
        depth[0] -= 1

    modules = [module for module in model.modules() if module is not model]
    hooks = [hook for module in modules for hook in (module.register_forward_pre_hook(enter, with_kwargs=True),
                                                     module.register_forward_hook(leave))]
    try:
        run()
    finally:
        for hook in hooks:
            hook.remove()
    return calls


def sampler_vs_bare_loop(model, samples: int, steps: int | None, repeats: int = 3) -> tuple[float, float]:
    """(seconds of ``model.sample`` of one image with ``samples`` samples, seconds of its forward passes alone);
    best of ``repeats`` each, the two runs taking turns (a machine whose load changes affects both alike)."""
    size = model.config["image_size"]
    image = torch.zeros(1, model.config["image_channels"], size, size, device=next(model.parameters()).device)
    calls = top_level_calls(model, lambda: model.sample(image, samples, steps=steps))

    def bare_loop():
        with torch.no_grad():
            for module, args, kwargs in calls:
                module(*args, **kwargs)

    def seconds(run) -> float:
        started = time.perf_counter()
        run()
        return time.perf_counter() - started

    pairs = [(seconds(lambda: model.sample(image, samples, steps=steps)), seconds(bare_loop)) for _ in range(repeats)]
    return min(p[0] for p in pairs), min(p[1] for p in pairs)


def model_of_kind(kind: str, preset: str, device: torch.device):
    """(model, label): the first installed model of ``kind``, else a random ``preset`` model."""
    for entry in registry.list_models():
        if entry["kind"] == kind:
            return load_model(entry["path"], device), entry["name"]
    torch.manual_seed(0)
    return build_model(kind, preset).to(device).eval(), f"{kind}/{preset} (random weights)"


def measure(model, volume: np.ndarray, samples: int, batch_size: int | None, steps: int | None) -> tuple[float, float]:
    """(slices per second, seconds to the first slice) for segmenting every K slice of ``volume``."""
    roi = [0, 0, 0, volume.shape[2], volume.shape[1], volume.shape[0]]
    started = time.perf_counter()
    first = None
    for _ in inference.segment_slices(model, volume, roi, 2, samples, steps=steps, batch_size=batch_size):
        first = time.perf_counter() - started if first is None else first
    return volume.shape[0] / (time.perf_counter() - started), first


def prompt_mode(samples: list[int], device: torch.device) -> None:
    """First-slice latency, total time and slices visited of one click at the sample volume's tumour."""
    volume = read_volume(SAMPLE_DIR / "sample.nrrd")
    point = prompt_point(read_volume(SAMPLE_DIR / "sample_label.nrrd").array_kji > 0)
    shape = volume.array_kji.shape
    print(f"prompt mode: sample volume {shape[::-1]} (I, J, K), click at {[round(v, 1) for v in point]} (IJK)")
    print(f"{'model':<24} {'N':>3} {'first slice s':>14} {'total s':>8} {'slices visited':>15}")
    for entry in registry.list_models():
        model = load_model(entry["path"], device)
        for count in samples:
            started, first, visited = time.perf_counter(), None, 0
            for _ in propagate(model, volume.array_kji, volume.ijk_to_ras, 2, [Prompt(point_ijk=point)],
                               [0, 0, 0, shape[2], shape[1], shape[0]], count):
                first = time.perf_counter() - started if first is None else first
                visited += 1
            print(f"{entry['name']:<24} {count:>3} {first:>14.2f} {time.perf_counter() - started:>8.2f} "
                  f"{visited:>15}", flush=True)


def batch_sweep(kinds: list[str], sizes: list[int], device: torch.device, steps: int | None) -> None:
    """Seconds per image of ``model.sample`` vs images per pass (a random ``small`` preset at each size)."""
    batches = (1, 2, 4, 8, 16)
    print(f"{'model':<24} {'size':>5} " + " ".join(f"{f'b={b} ms':>9}" for b in batches) + f" {'auto':>5}")
    for kind in kinds:
        for size in sizes:
            torch.manual_seed(0)
            model = build_model(kind, "small", image_size=size).to(device).eval()
            per_image = []
            for batch in batches:
                images = torch.zeros(batch, model.config["image_channels"], size, size, device=device)
                model.sample(images, 1, steps=steps)  # warm-up
                started = time.perf_counter()
                model.sample(images, 1, steps=steps)
                per_image.append((time.perf_counter() - started) / batch)
            auto = inference.auto_batch_size(device, size)
            print(f"{kind + '/small':<24} {size:>5} " + " ".join(f"{1000 * t:>9.1f}" for t in per_image)
                  + f" {auto:>5}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", nargs="+", default=DIFFUSION_KINDS, choices=DIFFUSION_KINDS)
    parser.add_argument("--samples", nargs="+", type=int, default=[1, 4, 16])
    parser.add_argument("--slices", type=int, default=8, help="slices in the synthetic volume")
    parser.add_argument("--size", type=int, default=64, help="in-plane size of the synthetic slices")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: each model's own)")
    parser.add_argument("--preset", default="tiny", help="preset for kinds without an installed model")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's)")
    parser.add_argument("--prompt", action="store_true", help="time the prompt mode on the sample volume instead")
    parser.add_argument("--batch-sweep", action="store_true",
                        help="seconds per image vs images per pass instead (see --sizes)")
    parser.add_argument("--sizes", nargs="+", type=int, default=[64, 128], help="image sizes of --batch-sweep")
    parser.add_argument("--startup-samples", type=int, default=8, help="N of README command 1 in the start-up")
    parser.add_argument("--warm-models", nargs="*", default=[registry.DEFAULT_MODEL, "ambiguous"],
                        help="models timed from Segment to the first slice on a warm worker (default: the default "
                             "model and ambiguous; none: skip)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    if args.prompt:
        prompt_mode(args.samples, device)
        return 0
    if args.batch_sweep:
        print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads")
        batch_sweep(args.kinds, args.sizes, device, args.steps)
        return 0
    startup(args.startup_samples)
    warm_worker(args.warm_models, args.startup_samples)
    volume = np.random.default_rng(0).normal(0.0, 100.0, (args.slices, args.size, args.size)).astype(np.float32)
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, volume "
          f"{args.slices} x {args.size} x {args.size}")
    print(f"{'model':<36} {'N':>3} {'batch':>5} {'slices/s':>9} {'first slice s':>14}")
    ratios, models = [], []
    for kind in args.kinds:
        model, label = model_of_kind(kind, args.preset, device)
        models.append((model, label))
        auto = inference.auto_batch_size(device, model.config["image_size"])
        measure(model, volume[:1], 1, 1, args.steps)  # warm-up (kernel selection, allocator)
        for samples in args.samples:
            results = {}
            for mode, batch_size in (("on", None), ("off", 1)):
                results[mode] = measure(model, volume, samples, batch_size, args.steps)
                shown = auto if mode == "on" else 1
                print(f"{label:<36} {samples:>3} {shown:>5} {results[mode][0]:>9.2f} {results[mode][1]:>14.3f}")
            ratios.append((label, samples, results["on"][0] / results["off"][0],
                           results["on"][1] / results["off"][1]))
    print("\nbatch on / off, measured in this run:")
    print(f"{'model':<36} {'N':>3} {'throughput x':>13} {'first-slice latency x':>22}")
    for label, samples, speedup, latency in ratios:
        print(f"{label:<36} {samples:>3} {speedup:>13.2f} {latency:>22.2f}")
    print("\nsampler vs bare loop of its forward passes (one image, N samples; best of 3):")
    print(f"{'model':<36} {'N':>3} {'sampler s':>10} {'bare loop s':>12} {'bare / sampler':>15}")
    for model, label in models:
        for samples in args.samples:
            ours, bare = sampler_vs_bare_loop(model, samples, args.steps)
            print(f"{label:<36} {samples:>3} {ours:>10.3f} {bare:>12.3f} {bare / ours:>15.2f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
