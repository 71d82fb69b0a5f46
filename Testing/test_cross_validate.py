"""scripts/cross_validate.py end to end with real subprocesses (`sdseg preprocess --fold`, `sdseg train` of the tiny
ambiguous model, `sdseg evaluate`, clicks by `python -m sdseg.volume_scores`) on a small LIDC-like pickle of 4
patients: one fold per patient outside test, each model never trained on its fold's val patient, the mean row
computed from the folds' own metrics files, a rerun that reuses everything, and a one-line error for a model given
to the wrong fold; scripts/compare_recipes.py pooling two training seeds' runs, and refusing runs that measured
something else."""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from slicerlib_testing import CLI_TIMEOUT_S

from test_data_sources import lidc_like_pickle

REPO = Path(__file__).resolve().parents[1]
TRAIN = "--model ambiguous --preset tiny --steps 4 --batch-size 4 --warmup 0 --sample-every 0 --prompt-channels none"


def script(name: str, *args) -> subprocess.CompletedProcess:
    """Run ``scripts/<name>.py`` with ``args`` as a user would, in a real subprocess."""
    return subprocess.run([sys.executable, str(REPO / "scripts" / f"{name}.py"), *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=600)


def cross_validate(*args) -> subprocess.CompletedProcess:
    return script("cross_validate", *args)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, Path, subprocess.CompletedProcess]:
    folder = tmp_path_factory.mktemp("cv")
    pickle_path = folder / "data_lidc.pickle"
    lidc_like_pickle(pickle_path, patients=4)
    out = folder / "out"
    done = cross_validate("--out", out, "--preprocess", f"--source lidc-pickle --input {pickle_path} --size 32",
                          "--train", TRAIN, "--samples", 2, "--jobs", 2, "--click", f"lidc-pickle={pickle_path}",
                          "--click-samples", 2, "--steps", 3)
    return out, pickle_path, done


def test_every_patient_outside_test_validates_once_on_a_model_that_never_trained_on_it(run):
    out, _, done = run
    assert done.returncode == 0, done.stderr
    result = json.loads((out / "cross_validation.json").read_text())
    folds = result["folds"]
    assert [f["fold"] for f in folds] == [1, 2, 3]
    test = json.loads((out / "fold1" / "data" / "dataset.json").read_text())["splits"]["test"]
    val = [p for f in folds for p in f["val"]]
    assert len(val) == len(set(val)) == 3 and not set(val) & set(test)
    for f in folds:
        config = json.loads((out / f"fold{f['fold']}" / "model" / "config.json").read_text())["config"]
        trained_on = config["training_data"][-1]["splits"]["train"]
        assert sorted(trained_on + f["val"] + test) == sorted(set(val) | set(test))


def test_the_mean_row_is_the_mean_of_the_folds_own_metrics_files(run):
    out, _, _ = run
    result = json.loads((out / "cross_validation.json").read_text())
    assert result["settings"] == {"samples": 2, "steps": 3, "eval_negatives": 0.0, "click_samples": 2}
    dice = []
    for f in result["folds"]:
        metrics = json.loads((out / f"fold{f['fold']}" / "eval-n2-steps3" / "metrics.json").read_text())
        assert metrics["settings"]["steps"] == 3  # every fold sampled as asked, not with its model's default
        rows = metrics["results"]
        dice.append(next(r["dice_vs_raters"] for r in rows if r["predictor"] == "model" and r["samples"] == 2
                         and r["model_default"]))
    assert result["mean"]["model"]["dice_vs_raters"]["mean"] == pytest.approx(statistics.fmean(dice))
    assert result["mean"]["model"]["dice_vs_raters"]["sd"] == pytest.approx(statistics.stdev(dice))
    for f in result["folds"]:  # the clicks: on the fold's val patient only, with the fold's model
        clicks = json.loads((out / f"fold{f['fold']}" / "click-n2-steps3.json").read_text())
        assert {case["patient"] for case in clicks["cases"]} == set(f["val"]) and clicks["samples"] == 2
        assert clicks["steps"] == 3
        assert Path(clicks["model"]["path"]) == (out / f"fold{f['fold']}" / "model").resolve()
        assert f["model"]["click_dice"] == pytest.approx(statistics.fmean(c["dice"] for c in clicks["cases"]))
    text = (out / "cross_validation.md").read_text()
    assert "| click: 3D Dice | click: voxels off the lesion slices |" in text and "3 sampling steps" in text
    assert f"| mean ± SD | 3 folds | | model | {statistics.fmean(dice):.3f} ± {statistics.stdev(dice):.3f} |" in text
    assert text.count("| empty mask |") == 4  # one per fold and the mean


def test_a_rerun_reuses_every_finished_step_and_prints_the_same_table(run):
    out, pickle_path, first = run
    weights = out / "fold2" / "model" / "model.safetensors"
    before = weights.stat().st_mtime_ns
    (out / "fold3" / "data" / "dataset.json").unlink()  # as if preprocessing had been interrupted: made again
    again = cross_validate("--out", out, "--preprocess", f"--source lidc-pickle --input {pickle_path} --size 32",
                           "--train", TRAIN, "--samples", 2, "--click", f"lidc-pickle={pickle_path}",
                           "--click-samples", 2, "--steps", 3)
    assert again.returncode == 0, again.stderr
    assert again.stdout == first.stdout and weights.stat().st_mtime_ns == before
    assert (out / "fold3" / "data" / "dataset.json").exists()


def test_a_model_trained_on_the_folds_val_patient_is_refused_in_one_line(run, tmp_path):
    out, pickle_path, _ = run
    done = cross_validate("--out", tmp_path / "other", "--preprocess",
                          f"--source lidc-pickle --input {pickle_path} --size 32", "--train", TRAIN, "--folds", 1,
                          "--fold-model", f"1={out / 'fold2' / 'model'}", "--samples", 2)
    val = json.loads((out / "fold1" / "data" / "dataset.json").read_text())["splits"]["val"]
    assert done.returncode == 2
    assert done.stderr.strip() == (f"cross_validate: error: {out / 'fold2' / 'model'} trained on {val}, a "
                                   "validation patient of its fold: give the model of that fold")


def test_volume_scores_refuses_a_source_without_masks_in_one_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "sdseg.volume_scores", "--model", "sdseg-small", "--source",
                           f"chest-ct={tmp_path}", "--out", tmp_path / "x.json"], cwd=REPO, capture_output=True,
                          text=True, timeout=CLI_TIMEOUT_S)
    assert done.returncode == 2 and not (tmp_path / "x.json").exists()
    assert done.stderr.strip().splitlines() == [done.stderr.strip()] and "error:" in done.stderr


def test_results_of_another_model_are_not_reused_and_repeated_folds_count_once(run, tmp_path):
    out, pickle_path, _ = run
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    other = tmp_path / "other-model"  # fold 1's weights under another name, recording no training data
    shutil.copytree(copy / "fold1" / "model", other)
    config = json.loads((other / "config.json").read_text())
    del config["config"]["training_data"]
    (other / "config.json").write_text(json.dumps(config))
    arguments = ["--out", copy, "--preprocess", f"--source lidc-pickle --input {pickle_path} --size 32", "--train",
                 TRAIN, "--samples", 2, "--click", f"lidc-pickle={pickle_path}", "--click-samples", 2, "--steps", 3]
    done = cross_validate(*arguments, "--folds", "1,1", "--fold-model", f"1={other}")
    assert done.returncode == 0, done.stderr
    result = json.loads((copy / "cross_validation.json").read_text())
    assert [f["fold"] for f in result["folds"]] == [1]
    metrics = json.loads((copy / "fold1" / "eval-n2-steps3" / "metrics.json").read_text())
    clicks = json.loads((copy / "fold1" / "click-n2-steps3.json").read_text())
    assert Path(metrics["model"]["path"]) == other.resolve() and Path(clicks["model"]["path"]) == other.resolve()
    clicks["model"] = str(other)  # the shape an earlier version recorded: made again, not a traceback
    (copy / "fold1" / "click-n2-steps3.json").write_text(json.dumps(clicks))
    done = cross_validate(*arguments, "--folds", "1", "--fold-model", f"1={other}")
    assert done.returncode == 0, done.stderr
    clicks = json.loads((copy / "fold1" / "click-n2-steps3.json").read_text())
    assert Path(clicks["model"]["path"]) == other.resolve()
    bad = cross_validate(*arguments, "--folds", "0,2")
    assert bad.returncode == 2 and bad.stderr.strip() == "cross_validate: error: --folds are numbered from 1, got 0,2"


def test_volume_scores_refuses_a_folder_that_is_not_a_model_in_one_line(tmp_path):
    pickle_path = tmp_path / "data_lidc.pickle"
    lidc_like_pickle(pickle_path, patients=1)
    done = subprocess.run([sys.executable, "-m", "sdseg.volume_scores", "--model", tmp_path, "--source",
                           f"lidc-pickle={pickle_path}", "--out", tmp_path / "x.json"], cwd=REPO,
                          capture_output=True, text=True, timeout=CLI_TIMEOUT_S)
    assert done.returncode == 2 and not (tmp_path / "x.json").exists()
    assert len(done.stderr.strip().splitlines()) == 1 and done.stderr.startswith("volume_scores: error: ")


def compare_recipes(*args) -> subprocess.CompletedProcess:
    return script("compare_recipes", *args)


def model_dice(run_folder: Path, fold: int) -> float:
    """A fold's model Dice, read from its own metrics file (not from cross_validation.json)."""
    metrics = json.loads((run_folder / f"fold{fold}" / "eval-n2-steps3" / "metrics.json").read_text())
    return next(r["dice_vs_raters"] for r in metrics["results"] if r["predictor"] == "model" and r["model_default"])


def test_two_training_seeds_are_pooled_over_every_seed_and_fold_cell(run, tmp_path):
    out, pickle_path, _ = run
    seed1 = tmp_path / "seed1"
    done = cross_validate("--out", seed1, "--preprocess", f"--source lidc-pickle --input {pickle_path} --size 32",
                          "--train", TRAIN + " --seed 1", "--samples", 2, "--jobs", 2, "--click",
                          f"lidc-pickle={pickle_path}", "--click-samples", 2, "--steps", 3)
    assert done.returncode == 0, done.stderr
    weights = [(folder / "fold1" / "model" / "model.safetensors").read_bytes() for folder in (out, seed1)]
    assert weights[0] != weights[1]  # another seed trained another model
    table = tmp_path / "comparison.md"
    done = compare_recipes(f"two-seeds={out},{seed1}", f"one-seed={seed1}", "--out", table)
    assert done.returncode == 0, done.stderr
    cells = [model_dice(folder, fold) for folder in (out, seed1) for fold in (1, 2, 3)]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| two-seeds |")]
    assert len(rows) == 3  # each seed, then all six cells
    assert rows[2].startswith(f"| two-seeds | 3 | all 2 seeds x 3 folds | 6 | {statistics.fmean(cells):.3f} ± "
                              f"{statistics.stdev(cells):.3f} |")
    assert rows[1].startswith(f"| two-seeds | 3 | {seed1} | 3 | {statistics.fmean(cells[3:]):.3f} ± ")
    assert [line for line in done.stdout.splitlines() if line.startswith("| one-seed |")] == [rows[1].replace(
        "two-seeds", "one-seed")]  # one folder: no pooled row
    assert done.stdout.count("| empty mask |  | every fold | 3 |") == 1
    assert table.read_text() == done.stdout.strip("\n") + "\n"


def test_runs_validated_otherwise_or_one_recipe_sampled_two_ways_are_refused_in_one_line(run, tmp_path):
    out, pickle_path, _ = run
    other = tmp_path / "fold1-only"
    shutil.copytree(out, other)
    done = cross_validate("--out", other, "--preprocess", f"--source lidc-pickle --input {pickle_path} --size 32",
                          "--train", TRAIN, "--folds", 1, "--samples", 2, "--click", f"lidc-pickle={pickle_path}",
                          "--click-samples", 2, "--steps", 3)
    assert done.returncode == 0, done.stderr
    two_steps = tmp_path / "two-steps"
    shutil.copytree(out, two_steps)
    done = cross_validate("--out", two_steps, "--preprocess", f"--source lidc-pickle --input {pickle_path} --size 32",
                          "--train", TRAIN, "--samples", 2, "--click", f"lidc-pickle={pickle_path}",
                          "--click-samples", 2, "--steps", 2)
    assert done.returncode == 0, done.stderr
    val = " ".join(json.loads((out / "cross_validation.json").read_text())["folds"][0]["val"])
    for folders, message in (
            ([out, other], f"{other} (a) validated on N = 2, the train crops, clicks of 2 samples, folds 1 ({val}); "
                           f"{out}: "),
            ([out, two_steps], f"the runs of a sample with different steps ({out}: 3, {two_steps}: 2): give each "
                               "step count as its own recipe"),
            ([out, tmp_path], f"{tmp_path} has no cross_validation.json: run scripts/cross_validate.py there first")):
        done = compare_recipes("a=" + ",".join(map(str, folders)))
        assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
        assert done.stderr.startswith("compare_recipes: error: " + message), done.stderr
    done = compare_recipes(f"three-steps={out}", f"two-steps={two_steps}")  # recipes may sample differently
    assert done.returncode == 0, done.stderr
    assert [line.split(" | ")[1] for line in done.stdout.splitlines() if line.startswith("| t")] == ["3", "2"]
    old = json.loads((other / "cross_validation.json").read_text())
    del old["settings"]  # as written before cross_validate recorded its settings
    (other / "cross_validation.json").write_text(json.dumps(old))
    done = compare_recipes(f"a={other}")
    assert done.returncode == 2 and "does not record its evaluation settings" in done.stderr
