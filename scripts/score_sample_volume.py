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
import time
from pathlib import Path

import numpy as np

from SDSegSlicerLib.stats import slice_coherence
from sdseg import registry
from sdseg.checkpoint import load_model
from sdseg.data.sources import SourceError, get_source
from sdseg.evaluation import prompt_point
from sdseg.inference import segment_slices
from sdseg.metrics import dice
from sdseg.propagation import Prompt, propagate
from sdseg.volume_io import Volume, choose_slice_axis, read_volume

SAMPLE_DIR = Path(__file__).resolve().parents[1] / "Resources" / "SampleData"
HEALTHY_POINT_IJK = (20.0, 80.0, 5.0)  # tumour-free brain, far from the tumour


def score_whole(model, volume, truth: np.ndarray, samples: int, seed: int) -> dict:
    """Consensus scores of ``model`` on the whole volume (all slices along the axial axis)."""
    shape = volume.array_kji.shape
    started = time.perf_counter()
    consensus = np.zeros(shape, dtype=bool)
    for result in segment_slices(model, volume.array_kji, [0, 0, 0, shape[2], shape[1], shape[0]], 2, samples,
                                 seed=seed):
        consensus[result.index] = result.consensus > 0
    seconds = time.perf_counter() - started
    lesion = truth.any(axis=(1, 2))
    return {"lesion_slice_dice": float(np.mean([dice(consensus[k], truth[k]) for k in np.flatnonzero(lesion)])),
            "volume_dice": dice(consensus, truth), "false_positive_voxels": int(consensus[~lesion].sum()),
            "seconds": seconds}


def run_prompt(model, volume, point, samples: int, seed: int,
               slice_axis: int = 2) -> tuple[np.ndarray, np.ndarray, int, float, float]:
    """(consensus, samples (N, K, J, I), slices visited, seconds to the first slice, seconds in all) of one click,
    propagated along ``slice_axis`` (IJK axis; the sample volume is axial: 2)."""
    shape = volume.array_kji.shape
    consensus = np.zeros(shape, dtype=bool)
    drawn = np.zeros((samples, *shape), dtype=bool)
    started, first, visited = time.perf_counter(), None, 0
    for result in propagate(model, volume.array_kji, volume.ijk_to_ras, slice_axis, [Prompt(point_ijk=point)],
                            [0, 0, 0, shape[2], shape[1], shape[0]], samples, seed=seed):
        first = time.perf_counter() - started if first is None else first
        i0, j0, k0, i1, j1, k1 = result.box_ijk
        consensus[k0, j0:j1, i0:i1] = result.consensus > 0
        drawn[:, k0, j0:j1, i0:i1] = result.samples > 0
        visited += 1
    return consensus, drawn, visited, first, time.perf_counter() - started


def score_click(model, volume, truth: np.ndarray, samples: int, seed: int) -> tuple[dict, np.ndarray, np.ndarray]:
    """(scores, consensus, samples) of one click at the lesion's centre (the centre of its largest slice), propagated
    along the volume's axial axis (from its geometry, as the worker chooses it)."""
    axis = choose_slice_axis(volume.ijk_to_ras, shape_kji=volume.array_kji.shape)
    consensus, drawn, visited, first, seconds = run_prompt(model, volume, prompt_point(truth, axis), samples, seed,
                                                           axis)
    scores = {"dice": dice(consensus, truth), "voxels": int(consensus.sum()), "truth_voxels": int(truth.sum()),
              "slices": visited, "first_s": first, "seconds": seconds}
    return scores, consensus, drawn


def score_prompt(model, volume, truth: np.ndarray, samples: int, seed: int) -> dict:
    scores, consensus, drawn = score_click(model, volume, truth, samples, seed)
    lesion = truth.any(axis=(1, 2))
    healthy, _, _, _, _ = run_prompt(model, volume, HEALTHY_POINT_IJK, samples, seed)
    coherence = slice_coherence(drawn, 0)
    return {**scores, "false_positive_voxels": int(consensus[~lesion].sum()),
            "within": coherence["within_samples"], "across": coherence["across_samples"],
            "sample_dice": float(np.mean([dice(sample, truth) for sample in drawn])),
            "healthy_found_slices": int(healthy.any(axis=(1, 2)).sum())}


def external_cases(spec: str):
    """(name, volume, truth) of each case with a lesion of ``SOURCE=PATH``, a labelled data source: the union of its
    raters' masks is the truth."""
    name, separator, path = spec.partition("=")
    if not separator or not path:
        raise SystemExit(f"--external needs SOURCE=PATH (e.g. liver-mr=FILE), got {spec!r}")
    try:
        source = get_source(name)
        if not source.labelled:
            raise SourceError(f"{name} has no masks: there is no lesion to click")
        cases = [ref.read() for ref in source.load(Path(path).expanduser())]
    except SourceError as error:
        raise SystemExit(f"--external {spec}: {error}") from None
    found = [(f"{name} {case.patient}", Volume(case.image, case.ijk_to_ras), case.masks.max(axis=0) > 0)
             for case in cases]
    return [case for case in found if case[2].any()]  # a case without a lesion has nothing to click


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
            print(f"| {name} | {r['dice']:.3f} | {r['false_positive_voxels']} | {r['slices']} | {r['first_s']:.2f} "
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
