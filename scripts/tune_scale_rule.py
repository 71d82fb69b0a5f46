"""Choose the scale search's rule parameters (sdseg.scale_search.ScaleRule) on VALIDATION volumes: never on held-out
patients.

    python scripts/tune_scale_rule.py FOLDER [--model sdseg-small] [--samples 8] [--seed 0] [--healthy-weight 2]
        [--out rule.json]

FOLDER as scripts/score_volumes.py reads it (<name>.<ext> + <name>_label.<ext>). For each case the lesion is clicked
at the centre of its largest slice, and healthy tissue 30 mm from its edge (sdseg.volume_scores.healthy_point); the
clicked slice is sampled at every scale of sdseg.scale_search.DEFAULT_SCALES (the scale search's figures:
presence, agreement, border contact, fill) and, scale by scale, its consensus is scored: against the label (2D
Dice) for the lesion click, empty or not for the healthy click. Every rule of a grid (:data:`GRID`) then picks a
scale per click from the figures alone (sdseg.scale_search.choose_scale) and is scored

    objective = mean Dice of the lesion clicks + w x share of the healthy clicks left empty

(w = ``--healthy-weight``, default 2: issue 30 asks an empty result of >= 95 % of healthy clicks, and a scale that
paints healthy tissue on the clicked slice goes on painting it slice after slice);

the best objective wins (ties: the first in grid order). Prints the best rules (and the model's own, when its
config sets one), the always-1x and the best-possible (oracle) Dice, and writes ``{"scale_rule": {...}}`` to
``--out``: `scripts/bundle_model.py --rules` puts it in the shipped config.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import asdict, fields

import numpy as np

from sdseg.evaluation import prompt_point
from sdseg.metrics import dice
from sdseg.propagation import Prompt, propagate
from sdseg.rule_tuning import tuning_inputs, tuning_parser
from sdseg.scale_search import ScaleCandidate, ScaleRule, choose_scale
from sdseg.volume_io import choose_slice_axis, read_volume
from sdseg.volume_scores import healthy_point

GRID = {"min_presence": (0.25, 0.5, 0.75), "target_fill": (0.15, 0.25, 0.35, 0.45, 0.6),
        "score_tolerance": (0.0, 0.05, 0.2), "min_score": (0.0, 0.5, 0.6, 0.7, 0.8),
        "max_fill": (0.35, 0.45, 0.6, 0.83)}


def clicked_slice(model, volume, truth: np.ndarray, point, axis: int, samples: int,
                  seed: int) -> list[tuple[ScaleCandidate, float, bool]]:
    """(figures, Dice of the clicked slice's consensus vs the label, whether it is empty) of each scale searched
    for a click at ``point`` (IJK)."""
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
        return dice(found[tuple(index)], truth[tuple(index)]), not found.any()

    first_slice(None)  # the search's figures
    names = [field.name for field in fields(ScaleCandidate)]
    tried = [ScaleCandidate(**{name: figures[name] for name in names}) for figures in reports[0].scales_tried]
    return [(candidate, *first_slice(candidate.scale)) for candidate in tried]


def chosen(click, rule: ScaleRule):
    """The (figures, Dice, empty) of the scale ``rule`` picks for a click (nothing found: the scale nearest 1, as the
    propagation does)."""
    candidates = [candidate for candidate, _, _ in click]
    n = choose_scale(candidates, rule)
    return click[min(range(len(click)), key=lambda m: abs(math.log(candidates[m].scale))) if n is None else n]


def objective(lesions, healthy, rule: ScaleRule, healthy_weight: float) -> tuple[float, float, float]:
    """(objective, mean lesion Dice, healthy share left empty) of ``rule`` (module docstring)."""
    lesion_dice = float(np.mean([chosen(click, rule)[1] for click in lesions]))
    empty = float(np.mean([chosen(click, rule)[2] for click in healthy])) if healthy else 1.0
    return lesion_dice + healthy_weight * empty, lesion_dice, empty


def main(argv: list[str] | None = None) -> int:
    parser = tuning_parser(__doc__.splitlines()[0])
    parser.add_argument("--healthy-weight", type=float, default=2.0, help="weight of the healthy clicks left empty "
                        "in the objective (default 2)")
    args, found, model = tuning_inputs(parser, argv)
    lesions, healthy = [], []
    for name, volume_path, label_path in found:
        volume = read_volume(volume_path)
        truth = read_volume(label_path).array_kji > 0
        axis = choose_slice_axis(volume.ijk_to_ras, shape_kji=volume.array_kji.shape)
        centre = prompt_point(truth, axis)
        lesion = clicked_slice(model, volume, truth, centre, axis, args.samples, args.seed)
        if not lesion:  # a volume narrower than every crop is segmented on whole slices: no scale to choose
            print(name, "no scale searched (whole slices): left out", flush=True)
            continue
        lesions.append(lesion)
        point = healthy_point(truth, centre, volume.ijk_to_ras, axis)
        if point is not None:
            healthy.append(clicked_slice(model, volume, truth, point, axis, args.samples, args.seed))
        for kind, click in (("lesion", lesions[-1]), ("healthy", healthy[-1] if point is not None else [])):
            print(name, kind, " ".join(f"{c.scale:g}x: Dice {d:.3f}{' empty' if empty else ''} score {c.score:.2f} "
                                       f"fill {c.fill:.2f}{' border' if c.touches_border else ''}"
                                       for c, d, empty in click), flush=True)
    rules = [ScaleRule(**dict(zip(GRID, values))) for values in itertools.product(*GRID.values())]
    ranked = sorted(((objective(lesions, healthy, rule, args.healthy_weight), n, rule) for n, rule in enumerate(rules)),
                    key=lambda item: (-item[0][0], item[1]))
    always_one = float(np.mean([min(click, key=lambda item: abs(math.log(item[0].scale)))[1] for click in lesions]))
    oracle = float(np.mean([max(d for _, d, _ in click) for click in lesions]))
    print(f"\n{len(lesions)} case(s): clicked-slice Dice always 1x {always_one:.3f}, best possible {oracle:.3f}; "
          "default rule: objective {:.3f} (lesion Dice {:.3f}, healthy empty {:.0%})".format(
              *objective(lesions, healthy, ScaleRule(), args.healthy_weight)))
    if model.config.get("propagation", {}).get(ScaleRule.CONFIG_KEY):
        print("the model's own rule: objective {:.3f} (lesion Dice {:.3f}, healthy empty {:.0%})".format(
            *objective(lesions, healthy, ScaleRule.of_config(model.config), args.healthy_weight)))
    print("best rules: objective (lesion Dice, healthy empty) rule")
    for (score, lesion_dice, empty), _, rule in ranked[:5]:
        print(f"{score:.3f} ({lesion_dice:.3f}, {empty:.0%}) {asdict(rule)}")
    tied = [asdict(rule) for (score, _, _), _, rule in ranked if score == ranked[0][0][0]]
    print(f"{len(tied)} rule(s) tie for the best; their values: " + ", ".join(
        f"{name} {sorted({rule[name] for rule in tied})}" for name in GRID))
    if args.out is not None:
        args.out.write_text(json.dumps({ScaleRule.CONFIG_KEY: asdict(ranked[0][2])}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
