"""The benchmark scripts run end to end for every model kind with tiny settings (so that they cannot rot): each
one as a real subprocess, its table read back from its output."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from slicerlib_testing import CLI_TIMEOUT_S, lib_python_path

from sdseg.models import BASELINE_KINDS, MODEL_CLASSES
from sdseg.registry import DEFAULT_MODEL

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
DIFFUSION_KINDS = [kind for kind in MODEL_CLASSES if kind not in BASELINE_KINDS]


def run_script(name: str, *arguments: str) -> list[str]:
    result = subprocess.run([sys.executable, str(SCRIPTS / name), *arguments], capture_output=True, text=True,
                            env=dict(os.environ, PYTHONPATH=lib_python_path(), OMP_NUM_THREADS="1"),
                            timeout=3 * CLI_TIMEOUT_S)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.splitlines()


def numbers_in(line: str) -> list[float]:
    values = []
    for word in line.split():
        try:
            values.append(float(word))
        except ValueError:
            pass
    return values


def test_benchmark_training_runs_every_kind():
    lines = run_script("benchmark_training.py", "--preset", "tiny", "--image-size", "32", "--batch-size", "2",
                       "--steps", "1", "--warmup", "0", "--crops", "8")
    rows = {line.split()[0]: numbers_in(line) for line in lines if line.split() and line.split()[0] in DIFFUSION_KINDS}
    assert set(rows) == set(DIFFUSION_KINDS), lines
    assert all(len(values) == 3 and all(v > 0 for v in values) for values in rows.values()), rows


def test_benchmark_inference_runs_start_up_every_kind_and_the_sampler_ratio():
    lines = run_script("benchmark_inference.py", "--slices", "2", "--size", "16", "--samples", "1",
                       "--startup-samples", "1", "--preset", "tiny", "--warm-models", DEFAULT_MODEL)
    assert any(line.startswith("start-up: `sdseg-slicer --help`") for line in lines), lines
    assert any("worker ready" in line and "first slice at" in line for line in lines), lines
    warm = [line for line in lines if line.startswith(f"warm worker: {DEFAULT_MODEL} (N=1): first slice ")]
    assert len(warm) == 1 and len(numbers_in(warm[0].replace("(", " "))) >= 2, lines
    ratio_table = lines[lines.index(next(line for line in lines if line.startswith("sampler vs bare loop"))) + 2:]
    assert len(ratio_table) == len(DIFFUSION_KINDS), lines
    assert all(len(numbers_in(line)) >= 4 and numbers_in(line)[-1] > 0 for line in ratio_table), ratio_table
