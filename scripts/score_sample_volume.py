"""How well each installed model segments the bundled sample volume (PyRadiomics patient brain1, held out from
the bundled models' training sets) against its tumour label, as a user would: clicking the tumour (prompt mode,
the default) or segmenting every slice (whole-volume mode). Prints tables.

    python scripts/score_sample_volume.py [--models NAME ...] [--samples 8] [--seed 0] [--modes prompt whole]
        [--external SOURCE=PATH ...]

Prompt mode: one click at the tumour's centre (the centre of mass of its largest slice), propagated outward as
the worker does; columns: Dice of the 3D consensus vs the label, consensus voxels on slices without tumour, slices
visited, the samples' coherence (mean Dice of consecutive slices within a sample / across two samples: equal for
per-slice draws, within > across for 3D hypotheses), mean Dice of each sample (a 3D hypothesis) vs the label, and
for a click in tumour-free tissue the slices where a lesion was found (0 is right). Whole-volume mode:
mean Dice of the consensus on the tumour slices, Dice of the whole volume, consensus voxels on the other slices.
``--external SOURCE=PATH`` (e.g. ``liver-mr=~/.cache/sdseg/pydicom_data-1.0.0-py3-none-any.whl``) also clicks the
lesion of each case of a labelled data source (sdseg.data.sources), as for the sample volume: patients from other
sources than any training data.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from SDSegSlicerLib.stats import slice_coherence
from sdseg import registry
from sdseg.checkpoint import load_model
from sdseg.data.sources import SourceError
from sdseg.evaluation import prompt_point
from sdseg.metrics import dice
from sdseg.volume_io import choose_slice_axis, read_volume
from sdseg.volume_scores import labelled_cases, run_prompt, score_click, score_whole

SAMPLE_DIR = Path(__file__).resolve().parents[1] / "Resources" / "SampleData"
HEALTHY_POINT_IJK = (20.0, 80.0, 5.0)  # tumour-free brain, far from the tumour


def score_prompt(model, volume, truth: np.ndarray, samples: int, seed: int) -> dict:
    scores, _, drawn = score_click(model, volume, truth, samples, seed)
    healthy, _, _, _, _ = run_prompt(model, volume, HEALTHY_POINT_IJK, samples, seed)
    coherence = slice_coherence(drawn, 0)
    return {**scores, "within": coherence["within_samples"], "across": coherence["across_samples"],
            "sample_dice": float(np.mean([dice(sample, truth) for sample in drawn])),
            "healthy_found_slices": int(healthy.any(axis=(1, 2)).sum())}


def external_cases(spec: str):
    """(name, volume, truth) of each case with a lesion of ``SOURCE=PATH``, a labelled data source."""
    name, separator, path = spec.partition("=")
    if not separator or not path:
        raise SystemExit(f"--external needs SOURCE=PATH (e.g. liver-mr=FILE), got {spec!r}")
    try:
        return [(f"{name} {patient}", volume, truth) for patient, volume, truth in labelled_cases(name, Path(path))]
    except SourceError as error:
        raise SystemExit(f"--external {spec}: {error}") from None


def _number(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", help="model names or folders (default: every installed model)")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--modes", nargs="+", default=["prompt", "whole"], choices=["prompt", "whole"])
    parser.add_argument("--external", action="append", default=[], metavar="SOURCE=PATH",
                        help="also click the lesion of each case of this labelled data source; repeatable")
    args = parser.parse_args()
    volume = read_volume(SAMPLE_DIR / "sample.nrrd")
    truth = read_volume(SAMPLE_DIR / "sample_label.nrrd").array_kji > 0
    if choose_slice_axis(volume.ijk_to_ras, shape_kji=volume.array_kji.shape) != 2:
        raise SystemExit("the sample volume is expected to be stored axially")
    externals = {spec: external_cases(spec) for spec in args.external}  # bad specs fail before any scoring
    names = args.models or [entry["name"] for entry in registry.list_models()]
    models = {name: load_model(registry.resolve_model(name)) for name in names}
    point = [round(v, 1) for v in prompt_point(truth)]
    print(f"sample volume {volume.array_kji.shape[::-1]} (I, J, K), tumour on {int(truth.any(axis=(1, 2)).sum())} "
          f"slices, {args.samples} samples, seed {args.seed}")
    if "prompt" in args.modes:
        print(f"\nPrompt mode: a click at the tumour centre {point} (IJK); a click in tumour-free tissue "
              f"{list(HEALTHY_POINT_IJK)}")
        print("| model | Dice (3D consensus vs label) | consensus voxels on slices without tumour | slices visited "
              "| first slice s | total s | coherence within / across samples | sample Dice vs label "
              "| slices found at the tumour-free click |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for name, model in models.items():
            r = score_prompt(model, volume, truth, args.samples, args.seed)
            print(f"| {name} | {r['dice']:.3f} | {r['off_lesion_slice_voxels']} | {r['slices']} | {r['first_s']:.2f} "
                  f"| {r['seconds']:.1f} | {_number(r['within'])} / {_number(r['across'])} | {r['sample_dice']:.3f} "
                  f"| {r['healthy_found_slices']} |", flush=True)
    if "whole" in args.modes:
        print("\nWhole-volume mode (every slice)")
        print("| model | Dice on tumour slices | Dice of the volume | false-positive voxels on other slices | s |")
        print("| --- | --- | --- | --- | --- |")
        for name, model in models.items():
            r = score_whole(model, volume, truth, args.samples, args.seed)
            print(f"| {name} | {r['lesion_slice_dice']:.3f} | {r['volume_dice']:.3f} | "
                  f"{r['false_positive_voxels']} | {r['seconds']:.1f} |", flush=True)
    for spec in externals:
        print(f"\nExternal cases ({spec}): a click at each lesion's centre")
        print("| case | model | Dice (consensus vs label) | consensus voxels | label voxels | slices visited | s |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for case, case_volume, case_truth in externals[spec]:
            for name, model in models.items():
                r, _, _ = score_click(model, case_volume, case_truth, args.samples, args.seed)
                print(f"| {case} | {name} | {r['dice']:.3f} | {r['voxels']} | {r['truth_voxels']} | {r['slices']} "
                      f"| {r['seconds']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
