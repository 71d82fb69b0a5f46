"""Choose the scale search's rule parameters (sdseg.scale_search.ScaleRule) on VALIDATION volumes: never on held-out
patients.

    python scripts/tune_scale_rule.py FOLDER [--model sdseg-small] [--samples 8] [--seed 0] [--out rule.json]

FOLDER as scripts/score_volumes.py reads it (<name>.<ext> + <name>_label.<ext>). For each case the lesion is clicked
at the centre of its largest slice; that slice is sampled at every scale of sdseg.scale_search.DEFAULT_SCALES (the
scale search's figures: presence, agreement, border contact, fill) and, scale by scale, its consensus is scored
against the label (2D Dice). Every rule of a grid (min_presence x target_fill x score_tolerance) then picks a scale
per case from the figures alone (sdseg.scale_search.choose_scale); the rule with the best mean Dice wins (ties: the
first in grid order). Prints the best rules, the always-1x and the best-possible (oracle) means, and writes
``{"scale_rule": {...}}`` to ``--out``: put it under ``propagation`` in the model's config.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np

from sdseg import registry
from sdseg.checkpoint import load_model
from sdseg.evaluation import prompt_point
from sdseg.metrics import dice
from sdseg.propagation import Prompt, propagate
from sdseg.scale_search import ScaleCandidate, ScaleRule, choose_scale
from sdseg.volume_io import choose_slice_axis, read_volume
from sdseg.volume_scores import folder_cases

GRID = {"min_presence": (0.25, 0.5, 0.75), "target_fill": (0.15, 0.2, 0.25, 0.3, 0.35, 0.45, 0.55, 0.7),
        "score_tolerance": (0.0, 0.05, 0.1, 0.2, 0.5)}


def clicked_slice(model, volume, truth: np.ndarray, samples: int, seed: int) -> list[tuple[ScaleCandidate, float]]:
    """(figures, Dice of the clicked slice's consensus vs the label) of each scale searched on one case."""
    axis = choose_slice_axis(volume.ijk_to_ras, shape_kji=volume.array_kji.shape)
    point = prompt_point(truth, axis)
    roi = [0, 0, 0, *volume.array_kji.shape[::-1]]
    reports = []

    def first_slice(scale):
        (result,) = propagate(model, volume.array_kji, volume.ijk_to_ras, axis, [Prompt(point_ijk=point)], roi,
                              samples, seed=seed, max_slices=1, scale=scale, on_report=reports.append)
        found = np.zeros(volume.array_kji.shape, bool)
        i0, j0, k0, i1, j1, k1 = result.box_ijk
        found[k0:k1, j0:j1, i0:i1] = result.consensus.reshape(k1 - k0, j1 - j0, i1 - i0) > 0
        index = [slice(None)] * 3
        index[2 - axis] = result.index
        return dice(found[tuple(index)], truth[tuple(index)])

    first_slice(None)  # the search's figures
    names = [field.name for field in fields(ScaleCandidate)]
    tried = [ScaleCandidate(**{name: figures[name] for name in names}) for figures in reports[0].scales_tried]
    return [(candidate, first_slice(candidate.scale)) for candidate in tried]


def chosen_dice(cases, rule: ScaleRule) -> float:
    """Mean Dice of the scales ``rule`` picks (nothing found: the scale nearest 1, as the propagation does)."""
    scores = []
    for case in cases:
        candidates = [candidate for candidate, _ in case]
        chosen = choose_scale(candidates, rule)
        if chosen is None:
            chosen = min(range(len(case)), key=lambda n: abs(math.log(candidates[n].scale)))
        scores.append(case[chosen][1])
    return float(np.mean(scores))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="validation volumes <name>.<ext> with labels <name>_label.<ext>")
    parser.add_argument("--model", help="model name or folder (default: the default model)")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="write the best rule here as JSON")
    args = parser.parse_args(argv)
    found = folder_cases(args.folder)
    if not found:
        print(f"tune_scale_rule: error: no <name>.<ext> + <name>_label.<ext> pairs in {args.folder}", file=sys.stderr)
        return 2
    model = load_model(registry.resolve_model(args.model))
    cases = []
    for name, volume_path, label_path in found:
        volume = read_volume(volume_path)
        cases.append(clicked_slice(model, volume, read_volume(label_path).array_kji > 0, args.samples, args.seed))
        print(name, " ".join(f"{c.scale:g}x: Dice {d:.3f} score {c.score:.2f} fill {c.fill:.2f}"
                             f"{' border' if c.touches_border else ''}" for c, d in cases[-1]), flush=True)
    rules = [ScaleRule(*values) for values in itertools.product(*(GRID[field.name] for field in fields(ScaleRule)))]
    ranked = sorted(((chosen_dice(cases, rule), n, rule) for n, rule in enumerate(rules)),
                    key=lambda item: (-item[0], item[1]))
    always_one = float(np.mean([min(case, key=lambda item: abs(math.log(item[0].scale)))[1] for case in cases]))
    oracle = float(np.mean([max(d for _, d in case) for case in cases]))
    print(f"\n{len(cases)} case(s): clicked-slice Dice always 1x {always_one:.3f}, best possible {oracle:.3f}, "
          f"default rule {chosen_dice(cases, ScaleRule()):.3f}")
    for score, _, rule in ranked[:5]:
        print(f"{score:.3f} {asdict(rule)}")
    if args.out is not None:
        args.out.write_text(json.dumps({"scale_rule": asdict(ranked[0][2])}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
