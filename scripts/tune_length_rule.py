"""Choose the propagation's length rule (sdseg.lesion_length.LengthRule) on VALIDATION volumes: never on held-out
patients.

    python scripts/tune_length_rule.py FOLDER [--model sdseg-union] [--samples 8] [--seed 0] [--leak-ml 5]
        [--leak-weight 1] [--out rule.json]

FOLDER as scripts/score_volumes.py reads it (<name>.<ext> + <name>_label.<ext>). Each lesion is clicked at the centre
of its largest slice and propagated once with no length bound (the model's own rule set aside); every bound of
:data:`GRID` (max_diameters; None: no bound) then keeps, per direction, the slices within max_diameters x the
prompted slice's equivalent diameter of it, exactly as the propagation would stop there (a stop only drops the
slices after it), and is scored

    objective = mean 3D Dice of the consensus + w x share of the clicks with at most L ml on slices without lesion

(w = ``--leak-weight``, L = ``--leak-ml``: issue 30 asks that no click leak more than 5 ml off the lesion's
slices). The best objective wins (ties: the larger bound). Prints every bound's figures, the mean Dice the best
stops per direction would give (read from the labels: the ceiling of any rule that stops these traces earlier), and
writes ``{"length_rule": {...}}`` to ``--out``: `scripts/bundle_model.py --rules` puts it in the shipped config.
"""

from __future__ import annotations

import json
import math

import numpy as np

from sdseg.evaluation import prompt_point
from sdseg.geometry import voxel_ml
from sdseg.lesion_length import LengthRule, reach_slices
from sdseg.propagation import Prompt, propagate
from sdseg.rule_tuning import tuning_inputs, tuning_parser
from sdseg.volume_io import choose_slice_axis, read_volume

GRID = (None, 2.0, 1.5, 1.2, 1.0, 0.9, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.5)


def traced_click(model, volume, truth: np.ndarray, samples: int, seed: int) -> dict:
    """The click's slices ({index: (consensus voxels, voxels on the label)}), its prompted slice, the bound (in
    slices) of each rule of GRID, the label's voxels and slices, and a voxel's ml."""
    axis = choose_slice_axis(volume.ijk_to_ras, shape_kji=volume.array_kji.shape)
    centre = prompt_point(truth, axis)
    roi = [0, 0, 0, *volume.array_kji.shape[::-1]]
    slices, first = {}, None
    for result in propagate(model, volume.array_kji, volume.ijk_to_ras, axis, [Prompt(point_ijk=centre)], roi,
                            samples, seed=seed):
        i0, j0, k0, i1, j1, k1 = result.box_ijk
        consensus = result.consensus.reshape(k1 - k0, j1 - j0, i1 - i0) > 0
        first = result.index if first is None else first  # the prompted slice comes first
        slices[result.index] = (int(consensus.sum()), int((consensus & truth[k0:k1, j0:j1, i0:i1]).sum()))
    bounds = {}
    for max_diameters in GRID:
        reach = reach_slices(LengthRule(max_diameters), slices[first][0], volume.ijk_to_ras, axis)
        bounds[max_diameters] = math.inf if reach is None else reach
    on_label = truth.any(axis=tuple(a for a in range(3) if a != 2 - axis))
    return {"slices": slices, "first": first, "bounds": bounds, "truth_voxels": int(truth.sum()),
            "label_slices": set(np.flatnonzero(on_label).tolist()),
            "voxel_ml": voxel_ml(volume.ijk_to_ras)}


def bounded_scores(click: dict, max_diameters) -> tuple[float, float]:
    """(3D Dice, ml on slices without lesion) of a click had the propagation stopped at ``max_diameters``."""
    kept = [(index, found) for index, found in click["slices"].items()
            if abs(index - click["first"]) <= click["bounds"][max_diameters]]
    voxels, on_label = sum(f[0] for _, f in kept), sum(f[1] for _, f in kept)
    off_ml = sum(f[0] for index, f in kept if index not in click["label_slices"]) * click["voxel_ml"]
    return 2.0 * on_label / (voxels + click["truth_voxels"]), off_ml


def best_stops_dice(click: dict) -> float:
    """The 3D Dice of a click had each direction stopped at its best slice, chosen from the label (the two directions
    together, each keeping a contiguous run of slices from the prompted one): no rule that stops this trace earlier,
    whatever it measures, can do better (the trace itself ends where the propagation's other stops end it)."""
    first, slices = click["first"], click["slices"]
    # per direction, the (consensus voxels, voxels on the label) of its first n slices, n = 0, 1, ...
    kept = [np.cumsum([(0, 0)] + [slices[index] for index in sorted(slices, reverse=step < 0)
                                  if (index - first) * step > 0], axis=0) for step in (1, -1)]
    voxels = slices[first][0] + kept[0][:, None, 0] + kept[1][None, :, 0]
    on_label = slices[first][1] + kept[0][:, None, 1] + kept[1][None, :, 1]
    return float(np.max(2.0 * on_label / (voxels + click["truth_voxels"])))


def main(argv: list[str] | None = None) -> int:
    parser = tuning_parser(__doc__.splitlines()[0])
    parser.add_argument("--leak-ml", type=float, default=5.0, help="the most ml a click may leave off the lesion's "
                        "slices (default 5)")
    parser.add_argument("--leak-weight", type=float, default=1.0, help="weight of the share of clicks within "
                        "--leak-ml in the objective (default 1)")
    args, found, model = tuning_inputs(parser, argv)
    model.config.setdefault("propagation", {})[LengthRule.CONFIG_KEY] = {}  # traced without a bound
    clicks = []
    for name, volume_path, label_path in found:
        click = traced_click(model, read_volume(volume_path), read_volume(label_path).array_kji > 0, args.samples,
                             args.seed)
        clicks.append(click)
        dice, off_ml = bounded_scores(click, None)
        print(f"{name}: {len(click['slices'])} slices, Dice {dice:.3f}, {off_ml:.1f} ml off the lesion's slices "
              "without a bound", flush=True)
    print(f"\n{len(clicks)} click(s); max_diameters: mean Dice, clicks within {args.leak_ml:g} ml, largest ml off "
          "the lesion's slices, objective")
    rows = []
    for max_diameters in GRID:
        scores = [bounded_scores(click, max_diameters) for click in clicks]
        dice = float(np.mean([d for d, _ in scores]))
        within = float(np.mean([off <= args.leak_ml for _, off in scores]))
        rows.append((dice + args.leak_weight * within, max_diameters))
        print(f"{str(max_diameters):>5}: {dice:.3f}, {within:.0%}, {max(off for _, off in scores):.1f} ml, "
              f"{rows[-1][0]:.3f}", flush=True)
    best = max(rows, key=lambda row: (row[0], math.inf if row[1] is None else row[1]))[1]
    print(f"best: max_diameters {best}")
    print("best stops (each direction stopped at its best slice, from the labels; no earlier stop does better): "
          f"mean Dice {np.mean([best_stops_dice(click) for click in clicks]):.3f}")
    if args.out is not None:
        args.out.write_text(json.dumps({LengthRule.CONFIG_KEY: {"max_diameters": best}}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
