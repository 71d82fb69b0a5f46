"""Cross-validation of a training recipe over the patients outside test: for each fold (`sdseg preprocess --fold K`:
the K-th validation patient(s) left out), make the fold's crops, train the recipe on its train split and evaluate
the model on its val split; print per-fold and mean figures. One validation patient is an unreliable judge of a
recipe (README, "Augmentation and symmetric views"); every fold's is a patient the recipe never trained on.

    python scripts/cross_validate.py --out OUT --preprocess "--source pyradiomics --input ... --seed 2"
        --train "--model sdseg --preset small ..." [--eval-negatives 0.3] [--folds 1,2] [--fold-model 1=MODEL]
        [--samples 16] [--steps K] [--click SOURCE=PATH [--click-samples 8]] [--jobs 2]

Layout: OUT/fold<K>/{data, eval-data, model, eval-n<N>[-steps<S>], click-n<N>[-steps<S>].json}; a step whose output
exists (made by that fold's model, on those crops) is not run again, so an interrupted run continues and a finished
one only prints. ``--eval-negatives F``: the val split is evaluated on crops made with ``--negatives F``
(lesion-free crops: false-positive rate), the recipe trains on the crops without them (add ``--negatives`` to
--preprocess to train with them too). ``--fold-model K=MODEL``: an already trained model is fold K's (e.g. the
bundled model, trained on the default split = fold 1); it is checked against the fold's val patients when it records
its training data. ``--click SOURCE=PATH``: also a click at the lesion of each val patient's volume, propagated as a
user's click is (sdseg.volume_scores): 3D Dice and consensus voxels on slices without lesion. ``--jobs J``: J folds
at once, each with cores / J torch threads. Writes OUT/cross_validation.json (the evaluation settings, each fold's
figures and their means) and .md; nothing is evaluated on the test split. scripts/compare_recipes.py compares
recipes over several training seeds from these folders.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

COLUMNS = (("dice_vs_raters", "Dice"), ("ged", "GED"), ("false_positive_rate", "FP rate"),
           ("false_positive_pixels", "FP pixels"), ("dice_lesion_cases", "Dice, lesion crops"))
CLICK_COLUMNS = (("click_dice", "click: 3D Dice"), ("click_off_slice_voxels", "click: voxels off the lesion slices"))
SETTINGS = ("samples", "steps", "eval_negatives", "click_samples")  # recorded in cross_validation.json


class CrossValidationError(Exception):
    """A fold's step failed or a given model does not belong to its fold: one line for the user."""


def sdseg(arguments: list[str], log: Path, threads: int, module: str = "sdseg.cli", step: str | None = None) -> None:
    """Run ``python -m MODULE ARGUMENTS`` (by default the sdseg command) with ``threads`` torch threads, output into
    ``log``; a failure names ``step`` (default: the sdseg subcommand)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    with log.open("w") as out:
        done = subprocess.run([sys.executable, "-m", module, *arguments], stdout=out, stderr=subprocess.STDOUT,
                              env=env)
    if done.returncode:
        last = log.read_text().strip().splitlines()[-1:] or ["no output"]
        raise CrossValidationError(f"{step or 'sdseg ' + arguments[0]} failed ({log}): {last[0]}")


def check_fold_model(model: Path, val_patients: list[str]) -> None:
    """A given fold model must not have trained on the fold's val patients (where it records its training data)."""
    config = json.loads((model / "config.json").read_text())["config"]
    seen = {p for record in config.get("training_data", []) for p in (record.get("splits") or {}).get("train", [])}
    if seen & set(val_patients):
        raise CrossValidationError(f"{model} trained on {sorted(seen & set(val_patients))}, a validation patient of "
                                   "its fold: give the model of that fold")


def made_by(result: Path, model: Path, data: Path | None = None) -> bool:
    """Whether ``result`` (an evaluation's metrics.json or a click JSON) exists and was made by ``model`` (and on
    ``data``): a result of another model, e.g. before --fold-model named one, is made again, and so is one whose
    record names its model in another shape (a click of a version before 3a0da0b recorded the path alone)."""
    if not result.exists():
        return False
    record = json.loads(result.read_text())

    def recorded(key: str) -> Path | None:
        value = record.get(key)
        return Path(value["path"]).resolve() if isinstance(value, dict) else None

    return recorded("model") == model.resolve() and (data is None or recorded("data") == data.resolve())


def steps_option(steps: int | None) -> list[str]:
    """The sampling-steps option of `sdseg evaluate` / sdseg.volume_scores (none: each model's default)."""
    return [] if steps is None else ["--steps", str(steps)]


def steps_name(steps: int | None) -> str:
    """The part of an output's name that says its sampling steps."""
    return "" if steps is None else f"-steps{steps}"


def make_crops(out: Path, preprocess: list[str], log: Path, threads: int, negatives: float | None = None) -> None:
    """``sdseg preprocess PREPROCESS --out OUT`` unless OUT is complete (has dataset.json) and, when ``negatives`` is
    given, was made with that fraction of lesion-free crops; the crops of an interrupted run (no dataset.json yet)
    or of another fraction are made again."""
    if (out / "dataset.json").exists() and (negatives is None or json.loads((out / "dataset.json").read_text())[
            "negatives"]["fraction"] == negatives):
        return
    if out.exists():
        shutil.rmtree(out)
    sdseg(["preprocess", *preprocess, "--out", str(out)], log, threads)


def run_fold(fold: int, args, threads: int) -> dict:
    """Make, train and evaluate fold ``fold`` (skipping what exists); its figures."""
    folder = args.out / f"fold{fold}"
    folder.mkdir(parents=True, exist_ok=True)
    preprocess = shlex.split(args.preprocess) + ["--fold", str(fold)]
    data, eval_data = folder / "data", folder / ("eval-data" if args.eval_negatives else "data")
    make_crops(data, preprocess, folder / "preprocess.log", threads)
    if args.eval_negatives:
        make_crops(eval_data, preprocess + ["--negatives", str(args.eval_negatives)], folder / "preprocess-eval.log",
                   threads, args.eval_negatives)
    info = json.loads((eval_data / "dataset.json").read_text())
    model = args.fold_model.get(fold, folder / "model")
    if fold in args.fold_model:
        check_fold_model(model, info["splits"]["val"])
    elif not (model / "model.safetensors").exists():
        resume = ["--resume"] if (model / "training_state").exists() else []
        sdseg(["train", *shlex.split(args.train), "--data", str(data), "--out", str(model), *resume],
              folder / "train.log", threads)
    evaluation = folder / f"eval-n{args.samples}{steps_name(args.steps)}"
    if not made_by(evaluation / "metrics.json", model, eval_data):
        sdseg(["evaluate", "--model", str(model), "--data", str(eval_data), "--split", "val", "--samples",
               str(args.samples), "--baselines", "--out", str(evaluation), "--overwrite", *steps_option(args.steps)],
              folder / "evaluate.log", threads)
    metrics = json.loads((evaluation / "metrics.json").read_text())
    row = next(r for r in metrics["results"] if r["model_default"])
    empty = next(r for r in metrics["baselines"] if r["predictor"] == "empty mask")
    figures = {"fold": fold, "val": info["splits"]["val"], "crops": info["counts"]["val"], "model_path": str(model),
               "model": {key: row[key] for key, _ in COLUMNS}, "empty mask": {key: empty[key] for key, _ in COLUMNS}}
    if args.click:
        figures["model"].update(click_figures(model, folder, info["splits"]["val"], args, threads))
        figures["empty mask"].update({"click_dice": 0.0, "click_off_slice_voxels": 0})
    return figures


def click_figures(model: Path, folder: Path, patients: list[str], args, threads: int) -> dict:
    """A click at the lesion of each val patient's volume (sdseg.volume_scores), propagated: the mean 3D Dice of
    the consensus over the patients' cases and the consensus voxels on slices without lesion, summed."""
    clicks = folder / f"click-n{args.click_samples}{steps_name(args.steps)}.json"
    if not made_by(clicks, model):
        sdseg(["--model", str(model), "--source", args.click, "--patients", ",".join(patients), "--samples",
               str(args.click_samples), "--out", str(clicks), *steps_option(args.steps)], folder / "click.log",
              threads, "sdseg.volume_scores", "the click")
    cases = json.loads(clicks.read_text())["cases"]
    if not cases:
        raise CrossValidationError(f"--click {args.click}: no lesion case of {patients} to click")
    return {"click_dice": statistics.fmean(case["dice"] for case in cases),
            "click_off_slice_voxels": sum(case["off_lesion_slice_voxels"] for case in cases)}


def summary(folds: list[dict]) -> dict:
    """Mean and sample standard deviation over the folds of every column, for the model and the empty mask."""
    out = {}
    for predictor in ("model", "empty mask"):
        for key in folds[0][predictor]:
            values = [f[predictor][key] for f in folds if f[predictor][key] is not None]
            out.setdefault(predictor, {})[key] = {
                "mean": statistics.fmean(values) if values else None,
                "sd": statistics.stdev(values) if len(values) > 1 else None, "folds": len(values)}
    return out


def table(folds: list[dict], means: dict, samples: int, steps: int | None) -> str:
    """Markdown: one row per fold (its val patients), then the mean +- SD, for the model and the empty mask."""
    def cell(value):
        return "n/a" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)

    columns = [c for c in COLUMNS + CLICK_COLUMNS if c[0] in folds[0]["model"]]
    lines = ["| fold | val patients | crops | predictor | " + " | ".join(t for _, t in columns) + " |",
             "| --- " * (4 + len(columns)) + "|"]
    for f in folds:
        for predictor in ("model", "empty mask"):
            lines.append(f"| {f['fold']} | {', '.join(f['val'])} | {f['crops']} | {predictor} | "
                         + " | ".join(cell(f[predictor][k]) for k, _ in columns) + " |")
    def mean_cell(mean: dict) -> str:
        text = cell(mean["mean"]) + ("" if mean["sd"] is None else f" ± {mean['sd']:.3f}")
        return text + (f" ({mean['folds']} of {len(folds)} folds)" if 0 < mean["folds"] < len(folds) else "")

    for predictor in ("model", "empty mask"):
        lines.append(f"| mean ± SD | {len(folds)} fold{'s' * (len(folds) > 1)} | | {predictor} | "
                     + " | ".join(mean_cell(means[predictor][k]) for k, _ in columns) + " |")
    steps_text = "each model's default sampling steps" if steps is None else f"{steps} sampling steps"
    return (f"Cross-validation, val splits, N = {samples}, {steps_text}, each model's default post-processing:\n\n"
            + "\n".join(lines) + "\n")


def _fold_model(text: str) -> tuple[int, Path]:
    fold, _, model = text.partition("=")
    if not fold.isdigit() or not (Path(model).expanduser() / "config.json").exists():
        raise argparse.ArgumentTypeError(f"--fold-model needs K=MODEL_FOLDER with a config.json, got {text!r}")
    return int(fold), Path(model).expanduser()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="cross-validation folder (created; reused)")
    parser.add_argument("--preprocess", required=True, help="`sdseg preprocess` arguments without --out/--fold")
    parser.add_argument("--train", required=True, help="`sdseg train` arguments without --data/--out")
    parser.add_argument("--eval-negatives", type=float, default=0.0, metavar="F",
                        help="evaluate on crops with this fraction of lesion-free crops (default 0: the train crops)")
    parser.add_argument("--folds", help="comma-separated folds (default: all)")
    parser.add_argument("--fold-model", type=_fold_model, action="append", default=[], metavar="K=MODEL",
                        help="use this trained model as fold K's (repeatable)")
    parser.add_argument("--samples", type=int, default=16, help="samples per crop (default 16)")
    parser.add_argument("--steps", type=int, help="sampling steps of every fold's model (default: each model's own; "
                        "a trained, unbundled model's is its kind's default, a bundled one's what bundle_model set)")
    parser.add_argument("--click", metavar="SOURCE=PATH",
                        help="also click the lesion of each val patient's volume in this labelled source (the one "
                             "--preprocess reads) and propagate, as a user would (python -m sdseg.volume_scores)")
    parser.add_argument("--click-samples", type=int, default=8, help="samples of a click (default 8)")
    parser.add_argument("--jobs", type=int, default=1, help="folds run at once (default 1)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    args.fold_model = dict(args.fold_model)
    threads = max(1, (os.cpu_count() or 1) // max(1, args.jobs))
    try:
        if args.folds:
            folds = sorted({int(k) for k in args.folds.split(",")})
            if folds[0] < 1:
                raise CrossValidationError(f"--folds are numbered from 1, got {args.folds}")
        else:  # fold 1's crops tell how many folds there are
            data = args.out / "fold1" / "data"
            data.parent.mkdir(parents=True, exist_ok=True)
            make_crops(data, [*shlex.split(args.preprocess), "--fold", "1"], data.parent / "preprocess.log", threads)
            fold = json.loads((data / "dataset.json").read_text()).get("fold")
            if fold is None:
                raise CrossValidationError(f"{data} was not made with --fold: give --folds")
            folds = list(range(1, fold["of"] + 1))
        with ThreadPoolExecutor(max(1, args.jobs)) as pool:
            results = list(pool.map(lambda k: run_fold(k, args, threads), folds))
    except (CrossValidationError, ValueError) as error:
        print(f"cross_validate: error: {error}", file=sys.stderr)
        return 2
    means = summary(results)
    text = table(results, means, args.samples, args.steps)
    settings = {key: getattr(args, key) for key in SETTINGS} | {
        "click_samples": args.click_samples if args.click else None}
    (args.out / "cross_validation.json").write_text(json.dumps({"settings": settings, "folds": results, "mean": means},
                                                               indent=2) + "\n")
    (args.out / "cross_validation.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
