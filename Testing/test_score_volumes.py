"""scripts/score_volumes.py end to end on a tiny synthetic folder, through a REAL worker and the threshold model
(mask = normalised intensity > 0): a bright ellipsoid is found exactly by the click and the box, the healthy click
finds nothing, and the threshold + connected component baseline finds the ellipsoid too."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from slicerlib_testing import BRIGHT_3D_MODEL_NAME, BRIGHT_MODEL_NAME, CLI_TIMEOUT_S, write_volume_file

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "score_volumes.py"


def test_score_volumes_scores_each_case_and_modality(tmp_path, worker_env):
    k, j, i = np.mgrid[0:10, 0:64, 0:64]
    lesion = ((i - 30) / 5.0) ** 2 + ((j - 34) / 4.0) ** 2 + ((k - 5) / 2.5) ** 2 < 1.0
    folder = tmp_path / "cases"
    folder.mkdir()
    ijk_to_ras = np.diag([1.0, 1.0, 3.0, 1.0])
    voxels = np.random.default_rng(0).normal(30.0, 3.0, lesion.shape) + 120.0 * lesion
    write_volume_file(folder / "p1_CT.nrrd", voxels.astype(np.float32), ijk_to_ras)
    write_volume_file(folder / "p1_CT_label.nrrd", lesion.astype(np.uint8), ijk_to_ras)
    write_volume_file(folder / "unlabelled_MR.nrrd", voxels.astype(np.float32), ijk_to_ras)  # no label: skipped
    out = tmp_path / "rows.json"
    result = subprocess.run([sys.executable, str(SCRIPT), str(folder), "--model", BRIGHT_MODEL_NAME, "--samples", "2",
                             "--scale", "1", "--json", str(out)],
                            env=worker_env, capture_output=True, text=True, timeout=CLI_TIMEOUT_S)
    assert result.returncode == 0, result.stderr
    rows = {(r["model"], r["prompt"]): r for r in json.loads(out.read_text())}
    assert set(rows) == {(BRIGHT_MODEL_NAME, "click"), (BRIGHT_MODEL_NAME, "box"), (BRIGHT_MODEL_NAME, "healthy"),
                         ("threshold + component", "click"), ("threshold + component", "healthy")}
    click = rows[(BRIGHT_MODEL_NAME, "click")]
    assert click["modality"] == "CT" and click["dice"] == 1.0 and click["volume_error"] == 0.0
    assert click["ged"] == 0.0 and click["variance_band_ml"] == click["variance_elsewhere_ml"] == 0.0
    assert click["off_lesion_slice_ml"] == 0.0 and 0 < click["first_s"] <= click["seconds"]
    assert rows[(BRIGHT_MODEL_NAME, "box")]["dice"] == 1.0
    assert rows[(BRIGHT_MODEL_NAME, "healthy")]["found_ml"] == 0.0
    assert rows[("threshold + component", "click")]["dice"] > 0.9  # mean +- 2 std of the noise: most voxels
    assert "1 case(s)" in result.stdout and "| CT | bright-voxels | click | 1 | 1.000 | 1.000 | 0.00 |" in result.stdout


def large_tiny_and_narrow_lesions(folder):
    """Validation volumes for the scale rule: a large and a tiny disc on CT, and a volume narrower than any crop."""
    folder.mkdir()
    j, i = np.mgrid[0:80, 0:80]
    ijk_to_ras = np.diag([1.0, 1.0, 3.0, 1.0])
    for name, radius in (("large_CT", 14.0), ("tiny_CT", 1.5)):
        lesion = np.zeros((5, 80, 80), bool)
        lesion[1:4] = (j - 40) ** 2 + (i - 40) ** 2 <= radius ** 2
        write_volume_file(folder / f"{name}.nrrd", np.where(lesion, 150.0, 20.0).astype(np.float32), ijk_to_ras)
        write_volume_file(folder / f"{name}_label.nrrd", lesion.astype(np.uint8), ijk_to_ras)
    narrow = np.zeros((5, 6, 6), bool)  # narrower than every crop (as a PET of the sarcoma set): whole slices
    narrow[1:4, 2:4, 2:4] = True
    write_volume_file(folder / "narrow_PET.nrrd", np.where(narrow, 150.0, 20.0).astype(np.float32), ijk_to_ras)
    write_volume_file(folder / "narrow_PET_label.nrrd", narrow.astype(np.uint8), ijk_to_ras)
    return folder


def test_tune_scale_rule_picks_a_rule_that_finds_a_large_and_a_tiny_lesion(tmp_path, worker_env):
    """A disc larger than the threshold model's 16-voxel crop and a tiny one: at 1x the first is cut by its crop
    (the slice is cut again larger, as the propagation does); the best rule finds both and nothing 30 mm away. A
    volume narrower than every crop has no scale to choose: left out, not a crash."""
    folder = large_tiny_and_narrow_lesions(tmp_path / "validation")
    out = tmp_path / "rule.json"
    result = subprocess.run([sys.executable, str(SCRIPT.with_name("tune_scale_rule.py")), str(folder), "--model",
                             BRIGHT_MODEL_NAME, "--samples", "2", "--out", str(out)],
                            env=worker_env, capture_output=True, text=True, timeout=CLI_TIMEOUT_S)
    assert result.returncode == 0, result.stderr
    rule = json.loads(out.read_text())["scale_rule"]
    assert set(rule) == {"min_presence", "target_fill", "score_tolerance", "min_score", "max_fill"}
    summary = next(line for line in result.stdout.splitlines() if line.startswith("2 case(s)"))
    always_one, oracle = (float(summary.split(word)[1].split()[0].strip(",;")) for word in ("always 1x", "possible"))
    best = result.stdout.split("best rules:")[1].splitlines()[1]  # "objective (lesion Dice, healthy empty) rule"
    lesion_dice, empty = best.split("(")[1].split(")")[0].split(", ")
    assert 0 < always_one <= oracle and 0.8 < float(lesion_dice) <= oracle and empty == "100%"
    assert "large_CT lesion 0.5x: Dice" in result.stdout and " border" in result.stdout
    assert "large_CT healthy" in result.stdout
    assert "narrow_PET no scale searched (whole slices): left out" in result.stdout


def test_tune_scale_rule_scores_the_models_own_rule(tmp_path, worker_env):
    """The 3D test model's rule passes no scale: it keeps the recipe's (1x), so it scores the always-1x Dice."""
    folder = large_tiny_and_narrow_lesions(tmp_path / "validation")
    result = subprocess.run([sys.executable, str(SCRIPT.with_name("tune_scale_rule.py")), str(folder), "--model",
                             BRIGHT_3D_MODEL_NAME, "--samples", "2"],
                            env=worker_env, capture_output=True, text=True, timeout=CLI_TIMEOUT_S)
    assert result.returncode == 0, result.stderr
    always_one = float(result.stdout.split("always 1x ")[1].split(",")[0])
    default, own = (float(result.stdout.split(f"{rule}: objective ")[1].split("(lesion Dice ")[1].split(",")[0])
                    for rule in ("default rule", "the model's own rule"))
    assert own == always_one != default, result.stdout  # the default rule takes another scale for the large disc


def test_tune_length_rule_finds_the_bound_that_stops_a_leak_along_a_structure_like_the_lesion(tmp_path, worker_env):
    """A bright cylinder through all 20 slices, labelled lesion on slices 8..12 only (largest, so clicked, on slice
    10): the threshold model follows it to both ends of the volume; the best bound keeps exactly the labelled slices
    (no ml off them)."""
    folder = tmp_path / "validation"
    folder.mkdir()
    j, i = np.mgrid[0:48, 0:48]
    cylinder = np.repeat(((j - 24) ** 2 + (i - 24) ** 2 <= 36)[None], 20, axis=0)
    cylinder[10] = (j - 24) ** 2 + (i - 24) ** 2 <= 42
    lesion = cylinder.copy()
    lesion[:8] = lesion[13:] = False
    ijk_to_ras = np.diag([1.0, 1.0, 3.0, 1.0])
    write_volume_file(folder / "p1_CT.nrrd", np.where(cylinder, 150.0, 20.0).astype(np.float32), ijk_to_ras)
    write_volume_file(folder / "p1_CT_label.nrrd", lesion.astype(np.uint8), ijk_to_ras)
    out = tmp_path / "rule.json"
    result = subprocess.run([sys.executable, str(SCRIPT.with_name("tune_length_rule.py")), str(folder), "--model",
                             BRIGHT_MODEL_NAME, "--samples", "2", "--leak-ml", "0", "--out", str(out)],
                            env=worker_env, capture_output=True, text=True, timeout=CLI_TIMEOUT_S)
    assert result.returncode == 0, result.stderr
    unbounded = next(line for line in result.stdout.splitlines() if line.strip().startswith("None:"))
    assert float(unbounded.split(":")[1].split(",")[0]) < 0.5, unbounded  # 20 slices found, 5 labelled
    best = json.loads(out.read_text())["length_rule"]["max_diameters"]
    assert best is not None
    best_row = next(line for line in result.stdout.splitlines() if line.strip().startswith(f"{best}:"))
    dice, within = best_row.split(":")[1].split(",")[:2]
    assert float(dice) > 0.9 and within.strip() == "100%", best_row  # 0.92: boundary voxels of the resized crops
    ceiling = next(line for line in result.stdout.splitlines() if line.startswith("best stops ("))
    assert float(ceiling.rsplit(" ", 1)[1]) == pytest.approx(float(dice), abs=1e-3), ceiling  # the bound is the best


def test_the_healthy_click_is_30_mm_from_the_lesions_edge_not_from_its_centre():
    """A user's click "in healthy tissue 3-4 cm away" is measured from the lesion's edge: for a disc of radius
    25 mm the click is >= 30 mm from every lesion voxel on its slice (30 mm from the centre would be on the
    lesion's rim), and there is none when the volume has no room for it."""
    from sdseg.volume_scores import healthy_point

    k, j, i = np.mgrid[0:3, 0:160, 0:160]
    disc = (i - 60) ** 2 + (j - 80) ** 2 <= 25 ** 2
    ijk_to_ras = np.diag([1.0, 1.0, 4.0, 1.0])
    point = healthy_point(disc, [60.0, 80.0, 1.0], ijk_to_ras, 2)
    assert point is not None and point[2] == 1.0
    rows, columns = np.nonzero(disc[1])
    gap = np.hypot(columns - point[0], rows - point[1]).min()
    assert 30.0 <= gap <= 32.0, (point, gap)
    assert healthy_point(disc[:, 50:110, 30:90], [30.0, 30.0, 1.0], ijk_to_ras, 2) is None


def test_probe_healthy_clicks_counts_the_clicks_that_paint(tmp_path, worker_env):
    """scripts/probe_healthy_clicks.py: 8 directions x 2 gaps around a bright disc; a second bright blob lies 20 mm
    to the disc's +i side, so the clicks in that direction at 20 mm land on it and paint; every other click is on
    dark tissue and stays empty; directions that leave the volume first are skipped."""
    j, i = np.mgrid[0:80, 0:80]
    lesion = np.zeros((5, 80, 80), bool)
    lesion[1:4] = (j - 40) ** 2 + (i - 30) ** 2 <= 5 ** 2  # edge at i = 35: 20 mm on is i = 55
    blob = np.zeros_like(lesion)
    blob[1:4, 36:45, 52:59] = True
    folder = tmp_path / "cases"
    folder.mkdir()
    ijk_to_ras = np.diag([1.0, 1.0, 3.0, 1.0])
    write_volume_file(folder / "p1_CT.nrrd", np.where(lesion | blob, 150.0, 20.0).astype(np.float32), ijk_to_ras)
    write_volume_file(folder / "p1_CT_label.nrrd", lesion.astype(np.uint8), ijk_to_ras)
    result = subprocess.run([sys.executable, str(SCRIPT.with_name("probe_healthy_clicks.py")), str(folder),
                             "--model", BRIGHT_MODEL_NAME, "--samples", "2", "--gaps", "20,30"],
                            env=worker_env, capture_output=True, text=True, timeout=CLI_TIMEOUT_S)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    painted = [line for line in lines if not line.endswith(": 0.0 ml") and "direction" in line]
    assert painted and all(line.startswith("p1_CT direction 0 deg, 20 mm") for line in painted), lines
    assert "p1_CT direction 0 deg, 30 mm: 0.0 ml" in lines  # past the blob
    clicks = sum("direction" in line for line in lines)
    assert lines[-1].startswith(f"{clicks} healthy clicks: {clicks - 1} left empty")


def test_the_stop_rule_ceiling_keeps_contiguous_slices_and_stops_each_direction_at_its_own_best():
    """Hand-made trace: forward, the slice after the prompted one is off the label, the next two on it (a ceiling may
    not skip the first to keep the others: keeping all three beats stopping there); backward, one slice on the label
    and then a leak (stop after one). Slices: {index: (consensus voxels, voxels on the label)}."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("tune_length_rule", SCRIPT.with_name("tune_length_rule.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    slices = {10: (100, 100), 11: (20, 0), 12: (100, 100), 13: (100, 100), 9: (100, 100), 8: (300, 0)}
    click = {"slices": slices, "first": 10, "truth_voxels": 500}
    # the best: slices 9..13, 420 voxels, 400 on the label: 800 / 920 (skipping 11 would give 800 / 900)
    assert module.best_stops_dice(click) == pytest.approx(800 / 920)
    bounded = {**click, "bounds": {0: 0, 1: 1, 3: 3}, "label_slices": {9, 10, 12, 13}, "voxel_ml": 1.0}
    best_bound = max(module.bounded_scores(bounded, reach)[0] for reach in (0, 1, 3))
    assert best_bound == pytest.approx(800 / 1220)  # one reach for both directions keeps the leak (or loses 12, 13)
