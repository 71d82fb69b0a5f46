"""README command 1 (`sdseg-slicer segment` of the sample volume, one click, the default model) quiet and beside
CPU hogs (`python -c "while True: pass"`, one per usable core minus one): wall and CPU seconds of the whole command,
and the ratio beside / quiet, with the worker's OpenMP wait policy passive (its default) and active (spinning
threads, torch's default before sdseg.threads).

    python scripts/benchmark_cpu_contention.py --repeats 3
    python scripts/benchmark_cpu_contention.py --threads 1   # the worker's threads (default: the usable cores)
    python scripts/benchmark_cpu_contention.py --model ambiguous --samples 4   # another model or N than the default
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sdseg.threads import PASSIVE, usable_cores

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "Resources" / "SampleData" / "sample.nrrd"
README_COMMAND_1 = ["segment", str(SAMPLE), "--point-ijk", "45,31,16"]
HOG = "while True: pass"
POLICIES = (PASSIVE, "ACTIVE")
COMMAND_TIMEOUT_S = 900


def run_command(env: dict, options: list[str]) -> tuple[float, float]:
    """(wall s, CPU s of the command and its worker) of README command 1 with ``options`` added."""
    with tempfile.TemporaryDirectory() as folder:
        before, started = os.times(), time.perf_counter()
        subprocess.run([sys.executable, "-m", "SDSegSlicerLib.headless", *README_COMMAND_1, *options, "-o",
                        str(Path(folder) / "sample.seg.nrrd")], env=env, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=COMMAND_TIMEOUT_S)
        wall, after = time.perf_counter() - started, os.times()
    return wall, (after.children_user + after.children_system) - (before.children_user + before.children_system)


def median_run(env: dict, options: list[str], repeats: int) -> tuple[float, float]:
    runs = [run_command(env, options) for _ in range(repeats)]
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs per setting (the median is shown)")
    parser.add_argument("--threads", type=int, help="the worker's threads (default: its own choice)")
    parser.add_argument("--hogs", type=int, default=max(1, usable_cores() - 1), help="busy processes beside it")
    parser.add_argument("--model", help="the model (default: the default model, as README command 1)")
    parser.add_argument("--samples", type=int, help="N (default: the command's default, as README command 1)")
    args = parser.parse_args(argv)
    options = [*(["--model", args.model] if args.model else []), *(["--samples", str(args.samples)] if args.samples
                                                                    else [])]
    base = {name: value for name, value in os.environ.items() if name not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    base["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "SDSegSlicer"), str(ROOT), base.get("PYTHONPATH")) if p)
    if args.threads:
        base["OMP_NUM_THREADS"] = str(args.threads)
    print(f"README command 1{' ' + ' '.join(options) if options else ''}, {usable_cores()} usable cores, "
          f"{args.hogs} hog(s), median of {args.repeats}; load average before: {os.getloadavg()[0]:.1f}")
    print(f"{'wait policy':<12} {'quiet s':>8} {'CPU s':>6} {'beside hogs s':>14} {'CPU s':>6} {'ratio':>6}")
    for policy in POLICIES:
        env = dict(base, OMP_WAIT_POLICY=policy)
        quiet = median_run(env, options, args.repeats)
        hogs = [subprocess.Popen([sys.executable, "-c", HOG]) for _ in range(args.hogs)]
        try:
            beside = median_run(env, options, args.repeats)
        finally:
            for hog in hogs:
                hog.kill()
                hog.wait()
        print(f"{policy:<12} {quiet[0]:>8.1f} {quiet[1]:>6.1f} {beside[0]:>14.1f} {beside[1]:>6.1f} "
              f"{beside[0] / quiet[0]:>6.2f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
