"""How well each installed model segments the bundled sample volume (PyRadiomics patient brain1, held out from
the bundled models' training sets), slice by slice as the worker does, against its tumour label. Prints a table.

    python scripts/score_sample_volume.py [--models NAME ...] [--samples 8] [--seed 0]

Columns: mean Dice of the consensus on the slices that hold tumour (the empty mask scores 0 there), Dice of the
whole consensus volume, and the consensus voxels on slices without tumour (false positives there). The models
were trained on lesion-centred crops, so they tend to draw a lesion on every slice: give them the lesion's slice
range or an ROI.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from sdseg import registry
from sdseg.checkpoint import load_model
from sdseg.inference import segment_slices
from sdseg.metrics import dice
from sdseg.volume_io import choose_slice_axis, read_volume

SAMPLE_DIR = Path(__file__).resolve().parents[1] / "Resources" / "SampleData"


def score(model, volume, truth: np.ndarray, samples: int, seed: int) -> dict:
    """Consensus scores of ``model`` on the whole volume (all slices along the axial axis)."""
    shape = volume.array_kji.shape
    axis = choose_slice_axis(volume.ijk_to_ras, shape_kji=shape)
    if axis != 2:
        raise SystemExit("the sample volume is expected to be stored axially")
    started = time.perf_counter()
    consensus = np.zeros(shape, dtype=bool)
    for result in segment_slices(model, volume.array_kji, [0, 0, 0, shape[2], shape[1], shape[0]], axis, samples,
                                 seed=seed):
        consensus[result.index] = result.consensus > 0
    seconds = time.perf_counter() - started
    lesion = truth.any(axis=(1, 2))
    return {"lesion_slice_dice": float(np.mean([dice(consensus[k], truth[k]) for k in np.flatnonzero(lesion)])),
            "volume_dice": dice(consensus, truth), "false_positive_voxels": int(consensus[~lesion].sum()),
            "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", help="model names or folders (default: every installed model)")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    volume = read_volume(SAMPLE_DIR / "sample.nrrd")
    truth = read_volume(SAMPLE_DIR / "sample_label.nrrd").array_kji > 0
    names = args.models or [entry["name"] for entry in registry.list_models()]
    print(f"sample volume {volume.array_kji.shape[::-1]} (I, J, K), tumour on {int(truth.any(axis=(1, 2)).sum())} "
          f"slices, {args.samples} samples, seed {args.seed}")
    print("| model | Dice on tumour slices | Dice of the volume | false-positive voxels on other slices | s |")
    print("| --- | --- | --- | --- | --- |")
    for name in names:
        model = load_model(registry.resolve_model(name))
        result = score(model, volume, truth, args.samples, args.seed)
        print(f"| {name} | {result['lesion_slice_dice']:.3f} | {result['volume_dice']:.3f} | "
              f"{result['false_positive_voxels']} | {result['seconds']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
