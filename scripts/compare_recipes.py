"""Compare training recipes cross-validated with several training seeds. Each recipe is given as the
scripts/cross_validate.py folders of its seeds, one folder a seed, all validated alike (the same folds and
validation patients, crops, samples and clicks; a recipe may sample with its own number of steps); prints, per
recipe, each seed's mean over the folds and the mean +- SD over all seed x fold cells, then the empty mask's. One
training seed moves a fold's figures more than many recipe changes do (README "Cross-validation"), so a
recipe is judged on the cells of several seeds, never on one run.

    python scripts/compare_recipes.py bundled=cv/sdseg-flip,cv/sdseg-flip-seed1 \\
        synth-real=cv/sdseg-synth-real,cv/sdseg-synth-real-seed1 [--out comparison.md]

Reads each folder's cross_validation.json (written by cross_validate.py; run it again on a folder of an earlier
version to record its evaluation settings: it reuses every finished step) and runs nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cross_validate import CLICK_COLUMNS, COLUMNS, SETTINGS, summary


class ComparisonError(Exception):
    """A folder without a cross-validation, or runs validated otherwise than the rest: one line for the user."""


def _recipe(text: str) -> tuple[str, list[Path]]:
    name, _, folders = text.partition("=")
    if not name or not folders:
        raise argparse.ArgumentTypeError(f"a recipe is NAME=FOLDER[,FOLDER...], got {text!r}")
    return name, [Path(folder).expanduser() for folder in folders.split(",")]


def read_run(folder: Path) -> dict:
    """One cross-validation run: its evaluation settings and its folds, in fold order."""
    path = folder / "cross_validation.json"
    if not path.exists():
        raise ComparisonError(f"{folder} has no cross_validation.json: run scripts/cross_validate.py there first")
    try:
        run = json.loads(path.read_text())
        folds = sorted(run["folds"], key=lambda fold: fold["fold"])
    except (KeyError, TypeError, ValueError):
        raise ComparisonError(f"{path} is not a result of scripts/cross_validate.py") from None
    if set(run.get("settings", ())) != set(SETTINGS):
        raise ComparisonError(f"{path} does not record its evaluation settings: run scripts/cross_validate.py there "
                              "again (it reuses every finished step)")
    return {"settings": run["settings"], "folds": folds}


def validation(run: dict) -> str:
    """What a run was validated on, in words: samples, crops, clicks and each fold with its validation patients."""
    settings = run["settings"]
    crops = ("the train crops" if not settings["eval_negatives"]
             else f"{settings['eval_negatives']:g} lesion-free crops")
    clicks = "no clicks" if settings["click_samples"] is None else f"clicks of {settings['click_samples']} samples"
    folds = ", ".join(f"{fold['fold']} ({' '.join(fold['val'])})" for fold in run["folds"])
    return f"N = {settings['samples']}, {crops}, {clicks}, folds {folds}"


def sampling(run: dict) -> str:
    """How a run's models sampled: a setting of the recipe, so recipes may differ in it, a recipe's runs may not."""
    steps = run["settings"]["steps"]
    return "each model's default" if steps is None else str(steps)


def compare(recipes: list[tuple[str, list[Path]]]) -> str:
    """A Markdown table: per recipe, the mean of each run (seed) over its folds and, given several, of all its
    cells; then the empty mask's over the folds. Every run must be validated alike (samples, crops, clicks, the
    same folds with the same validation patients); a recipe's runs must also sample with the same steps."""
    runs = {(name, folder): read_run(folder) for name, folders in recipes for folder in folders}
    (first, first_run), *others = runs.items()
    for (name, folder), run in others:
        if validation(run) != validation(first_run):
            raise ComparisonError(f"{folder} ({name}) validated on {validation(run)}; {first[1]}: "
                                  f"{validation(first_run)}. Compare runs validated alike")
    for name, folders in recipes:
        steps = {folder: sampling(runs[name, folder]) for folder in folders}
        if len(set(steps.values())) > 1:
            listed = ", ".join(f"{folder}: {value}" for folder, value in steps.items())
            raise ComparisonError(f"the runs of {name} sample with different steps ({listed}): give each step count "
                                  "as its own recipe")
    first_folds = first_run["folds"]
    columns = [c for c in COLUMNS + CLICK_COLUMNS if c[0] in first_folds[0]["model"]]
    rows = []
    for name, folders in recipes:
        for folder in folders:
            folds = runs[name, folder]["folds"]
            rows.append({"recipe": name, "steps": sampling(runs[name, folder]), "cells": str(folder), "n": len(folds),
                         "mean": summary(folds)["model"]})
        if len(folders) > 1:
            cells = [fold for folder in folders for fold in runs[name, folder]["folds"]]
            rows.append({"recipe": name, "steps": rows[-1]["steps"],
                         "cells": f"all {len(folders)} seeds x {len(first_folds)} folds",
                         "n": len(cells), "mean": summary(cells)["model"]})
    empty = summary(first_folds)["empty mask"]
    rows.append({"recipe": "empty mask", "steps": "", "cells": "every fold", "n": len(first_folds), "mean": empty})

    def cell(mean: dict) -> str:
        if mean["mean"] is None:
            return "n/a"
        return f"{mean['mean']:.3f}" + ("" if mean["sd"] is None else f" ± {mean['sd']:.3f}")

    lines = ["| recipe | sampling steps | cells (mean ± SD over) | n | " + " | ".join(t for _, t in columns) + " |",
             "| --- " * (4 + len(columns)) + "|"]
    lines += [f"| {row['recipe']} | {row['steps']} | {row['cells']} | {row['n']} | "
              + " | ".join(cell(row["mean"][key]) for key, _ in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recipes", nargs="+", type=_recipe, metavar="NAME=FOLDER[,FOLDER...]",
                        help="a recipe and its cross-validation folders, one a training seed")
    parser.add_argument("--out", type=Path, help="also write the table (Markdown) here")
    args = parser.parse_args(argv)
    try:
        text = compare(args.recipes)
    except ComparisonError as error:
        print(f"compare_recipes: error: {error}", file=sys.stderr)
        return 2
    if args.out:
        args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
