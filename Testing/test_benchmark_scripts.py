"""The benchmark scripts (and score_sample_volume.py) run end to end for every model kind with tiny settings (so
that they cannot rot): each one as a real subprocess, its table read back from its output. The scripts that run the
command line or the server on the sample volume use the test models (the bundled ones are exercised elsewhere)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from slicerlib_testing import BRIGHT_3D_MODEL_NAME, CLI_TIMEOUT_S, MODEL_NAME, lib_python_path

from sdseg.models import BASELINE_KINDS, MODEL_CLASSES
from sdseg.registry import DEFAULT_MODEL

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
DIFFUSION_KINDS = [kind for kind in MODEL_CLASSES if kind not in BASELINE_KINDS]


def run_script(name: str, *arguments: str, env: dict | None = None) -> list[str]:
    result = subprocess.run([sys.executable, str(SCRIPTS / name), *arguments], capture_output=True, text=True,
                            env=dict(env or os.environ, PYTHONPATH=lib_python_path(), OMP_NUM_THREADS="1"),
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


def test_benchmark_cpu_contention_runs_the_command_quiet_and_beside_a_hog(worker_env):
    lines = run_script("benchmark_cpu_contention.py", "--repeats", "1", "--hogs", "1", "--threads", "1",
                       "--model", MODEL_NAME, "--samples", "1", env=worker_env)
    rows = {line.split()[0]: numbers_in(line) for line in lines if line.split() and line.split()[0] in
            ("PASSIVE", "ACTIVE")}
    assert set(rows) == {"PASSIVE", "ACTIVE"}, lines
    assert all(len(values) == 5 and all(v > 0 for v in values) for values in rows.values()), rows


def test_benchmark_server_compares_the_local_worker_with_the_server_and_a_ray_cohort(worker_env):
    pytest.importorskip("ray")
    lines = run_script("benchmark_server.py", "--model", MODEL_NAME, "--samples", "1", "--repeats", "1",
                       "--threads", "1", "--cohort", "1", env=worker_env)
    paths = {path: numbers_in(line) for line in lines for path in ("local worker", "server (loopback)")
             if line.startswith(path)}
    assert set(paths) == {"local worker", "server (loopback)"}, lines
    assert all(len(values) == 2 and all(v > 0 for v in values) for values in paths.values()), paths
    assert any(line.startswith("server / local: first-slice latency x") for line in lines), lines
    assert any(line.startswith("2 / 1 Ray workers: throughput x") for line in lines), lines


def test_score_sample_volume_prints_both_modes_for_a_model(worker_env):
    lines = run_script("score_sample_volume.py", "--models", BRIGHT_3D_MODEL_NAME, "--samples", "1", "--modes",
                       "prompt", "whole", env=worker_env)
    rows = [line for line in lines if line.startswith(f"| {BRIGHT_3D_MODEL_NAME} |")]
    assert len(rows) == 2, lines  # one per mode
    dice = [float(row.split("|")[2]) for row in rows]
    assert all(0.0 <= value <= 1.0 for value in dice), rows
