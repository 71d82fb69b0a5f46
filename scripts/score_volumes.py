"""Score one-click 3D segmentation on every labelled volume of a folder, as a user would use SDSegSlicer, through the
real worker (`python -m sdseg.worker`), and print per patient and per modality tables.

    python scripts/score_volumes.py FOLDER [--model sdseg-small] [--samples 8] [--seed 0] [--scale S]
        [--deterministic NAME] [--json OUT.json]

FOLDER holds <name>.nrrd / .nii.gz / .nii / .mha volumes, each with its label <name>_label.<same or other
extension> (non-zero = lesion). The modality of a case is the first of CT, MR, PET found in its name (else "other").
Per case, three prompts, each a worker job:

- ``click``: a point at the centre of the lesion's largest slice (sdseg.evaluation.prompt_point);
- ``box``: the lesion's bounding box, each side moved out by 10 % of its extent (at least 1 voxel), in the volume;
- ``healthy``: a point 30 mm from the lesion's edge on the same slice
  (sdseg.volume_scores.healthy_point; none: skipped): its result should be empty.

Columns (sdseg.volume_scores.prompt_scores): Dice of the 3D consensus, volume error (%), false-positive ml on the
slices without lesion, samples' Dice vs the label (min-max), GED, variance mass (ml) in the 3-voxel band around the
label's boundary vs elsewhere, seconds from the worker's `accepted` to the first slice and to `done` (the model is
loaded once, before). The healthy click reports the ml it found. Baselines on the same clicks: a threshold +
connected component (SimpleITK ConnectedThreshold from the click, bounds mean +- 2 std of the 5 x 5 x 3 voxels
around it), and with ``--deterministic NAME`` that model (1 sample). ``--scale 1`` gives the figures without the
scale search (the model's crop recipe).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from SDSegSlicerLib.worker_client import WorkerClient
from sdseg.evaluation import prompt_point
from sdseg.geometry import voxel_ml
from sdseg.metrics import dice
from sdseg.volume_io import choose_slice_axis, read_volume
from sdseg.volume_scores import folder_cases, healthy_point, modality, off_lesion_slices, prompt_scores

BOX_MARGIN = 0.1
JOB_TIMEOUT_S = 3600.0
THRESHOLD_STD = 2.0


def lesion_box(truth: np.ndarray) -> list[int]:
    """The IJK box (end exclusive) around the label, each side moved out by BOX_MARGIN of its extent."""
    box = []
    for kji_axis in (2, 1, 0):
        present = np.flatnonzero(truth.any(axis=tuple(a for a in range(3) if a != kji_axis)))
        margin = max(1, math.ceil(BOX_MARGIN * (present[-1] - present[0] + 1)))
        box.append((max(0, present[0] - margin), min(truth.shape[kji_axis], present[-1] + 1 + margin)))
    return [int(low) for low, _ in box] + [int(high) for _, high in box]


def run_job(client: WorkerClient, job: dict, shape_kji) -> dict:
    """Run one worker job; its model (as the worker names it), consensus (K, J, I), samples (N, K, J, I), seconds
    to the first slice and in all (from `accepted`), and the `done` summary's lesion."""
    job_id = client.submit(job)
    consensus, drawn = np.zeros(shape_kji, bool), None
    accepted_at = first = None
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while time.monotonic() < deadline:
        for message in client.poll(1.0):
            if message.get("job_id") != job_id:
                continue
            kind = message["type"]
            if kind == "accepted":
                accepted_at, model = time.monotonic(), message["model"]
                drawn = np.zeros((message["samples"], *shape_kji), bool)
            elif kind == "slice":
                first = first or time.monotonic() - accepted_at
                i0, j0, k0, i1, j1, k1 = message["box_ijk"]
                with np.load(message["file"]) as arrays:
                    consensus[k0:k1, j0:j1, i0:i1] = arrays["consensus"].reshape(k1 - k0, j1 - j0, i1 - i0) > 0
                    drawn[:, k0:k1, j0:j1, i0:i1] = arrays["samples"].reshape(-1, k1 - k0, j1 - j0, i1 - i0) > 0
            elif kind == "done":
                client.discard_job(job_id)
                return {"model": model, "consensus": consensus, "samples": drawn, "first_s": first,
                        "seconds": time.monotonic() - accepted_at, "lesion": message["summary"]["lesions"][0]}
            elif kind in ("error", "cancelled"):
                raise RuntimeError(f"job {job_id}: {message.get('message', kind)}")
    raise RuntimeError(f"job {job_id}: no answer within {JOB_TIMEOUT_S:.0f} s")


def threshold_baseline(volume, point_ijk) -> np.ndarray:
    """The threshold + connected component baseline of a click (module docstring), (K, J, I) bool."""
    array = volume.array_kji.astype(np.float32)
    i, j, k = (int(round(v)) for v in point_ijk)
    patch = array[max(0, k - 1):k + 2, max(0, j - 2):j + 3, max(0, i - 2):i + 3]
    low, high = patch.mean() - THRESHOLD_STD * patch.std(), patch.mean() + THRESHOLD_STD * patch.std()
    image = sitk.GetImageFromArray(array)
    grown = sitk.ConnectedThreshold(image, seedList=[(i, j, k)], lower=float(low), upper=float(high))
    return sitk.GetArrayFromImage(grown) > 0


def score_case(client, name: str, volume_path: Path, label_path: Path, args) -> list[dict]:
    volume = read_volume(volume_path)
    truth = read_volume(label_path).array_kji > 0
    axis = choose_slice_axis(volume.ijk_to_ras, shape_kji=volume.array_kji.shape)
    ml_per_voxel = voxel_ml(volume.ijk_to_ras)
    centre = [round(v, 2) for v in prompt_point(truth, axis)]
    prompts = {"click": {"point_ijk": centre}, "box": {"box_ijk": lesion_box(truth)}}
    healthy = healthy_point(truth, centre, volume.ijk_to_ras, axis)
    if healthy is not None:
        prompts["healthy"] = {"point_ijk": healthy}
    models = [(args.model, args.samples)] + ([(args.deterministic, 1)] if args.deterministic else [])
    rows = []
    for model, samples in models:
        for kind, lesion in prompts.items():
            prompt = {"lesions": [lesion], **({"scale": args.scale} if args.scale is not None else {})}
            job = {"volume": str(volume_path.resolve()), "model": model, "samples": samples, "seed": args.seed,
                   "device": args.device, "prompt": prompt}
            result = run_job(client, job, volume.array_kji.shape)
            row = {"case": name, "modality": modality(name), "model": result["model"], "prompt": kind,
                   "first_s": result["first_s"], "seconds": result["seconds"],
                   "scale": result["lesion"].get("scale"), "stops": result["lesion"].get("stops")}
            if kind == "healthy":
                row["found_ml"] = float(result["consensus"].sum() * ml_per_voxel)
            else:
                row.update(prompt_scores(result["consensus"], result["samples"], truth, ml_per_voxel, axis))
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "stops"}), file=sys.stderr, flush=True)
    started = time.monotonic()
    baseline = threshold_baseline(volume, centre)
    rows.append({"case": name, "modality": modality(name), "model": "threshold + component", "prompt": "click",
                 "first_s": None, "seconds": time.monotonic() - started, "dice": dice(baseline, truth),
                 "volume_error": float(baseline.sum() / truth.sum() - 1.0),
                 "off_lesion_slice_ml": off_lesion_slices(baseline, truth, axis) * ml_per_voxel})
    if healthy is not None:
        rows.append({"case": name, "modality": modality(name), "model": "threshold + component",
                     "prompt": "healthy", "found_ml": float(threshold_baseline(volume, healthy).sum() * ml_per_voxel)})
    return rows


def _cell(value, digits=2, percent=False) -> str:
    if value is None:
        return "-"
    return f"{100 * value:+.0f} %" if percent else f"{value:.{digits}f}"


def print_tables(rows: list[dict]) -> None:
    print("| case | modality | model | prompt | Dice | volume error | FP ml off lesion slices | sample Dice min-max "
          "| GED | variance ml band / elsewhere | scale | first slice s | total s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        if r["prompt"] == "healthy":
            print(f"| {r['case']} | {r['modality']} | {r['model']} | healthy (found ml) | {_cell(r['found_ml'])} | "
                  f"| | | | | {_cell(r.get('scale'), 1)} | {_cell(r.get('first_s'))} | {_cell(r.get('seconds'))} |")
            continue
        spread = (f"{r['sample_dice_min']:.2f}-{r['sample_dice_max']:.2f}" if "sample_dice_min" in r else "-")
        variance = (f"{r['variance_band_ml']:.2f} / {r['variance_elsewhere_ml']:.2f}" if "variance_band_ml" in r
                    else "-")
        print(f"| {r['case']} | {r['modality']} | {r['model']} | {r['prompt']} | {r['dice']:.3f} | "
              f"{_cell(r['volume_error'], percent=True)} | {_cell(r['off_lesion_slice_ml'])} | {spread} | "
              f"{_cell(r.get('ged'))} | {variance} | {_cell(r.get('scale'), 1)} | {_cell(r.get('first_s'))} | "
              f"{_cell(r.get('seconds'))} |")
    print("\nMeans per modality (healthy: share of clicks with an empty consensus)")
    print("| modality | model | prompt | cases | Dice mean | Dice min | FP ml off lesion slices (max) | total s mean |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    groups = {}
    for r in rows:
        groups.setdefault((r["modality"], r["model"], r["prompt"]), []).append(r)
    for (kind, model, prompt), group in sorted(groups.items()):
        seconds = [r["seconds"] for r in group if r.get("seconds") is not None]
        mean_s = _cell(float(np.mean(seconds)) if seconds else None)
        if prompt == "healthy":
            empty = np.mean([r["found_ml"] == 0 for r in group])
            print(f"| {kind} | {model} | healthy | {len(group)} | empty {empty:.0%} | | | {mean_s} |")
            continue
        dices = [r["dice"] for r in group]
        print(f"| {kind} | {model} | {prompt} | {len(group)} | {np.mean(dices):.3f} | {min(dices):.3f} | "
              f"{max(r['off_lesion_slice_ml'] for r in group):.2f} | {mean_s} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="volumes <name>.<ext> with labels <name>_label.<ext>")
    parser.add_argument("--model", default=None, help="model name or folder (default: the default model)")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--scale", type=float, help="force the crop scale (default: the worker searches it)")
    parser.add_argument("--deterministic", metavar="NAME", help="also run this model (1 sample) on the same clicks")
    parser.add_argument("--json", type=Path, help="also write every row to this JSON file")
    args = parser.parse_args(argv)
    try:
        cases = folder_cases(args.folder)
    except (ValueError, OSError) as error:
        parser.error(str(error))
    client = WorkerClient(python_executable=sys.executable)
    rows = []
    try:
        client.start(300.0)
        for name, volume_path, label_path in cases:
            rows += score_case(client, name, volume_path, label_path, args)
    finally:
        client.stop()
    print(f"{len(cases)} case(s) in {args.folder}; model {args.model or 'default'}, {args.samples} samples, "
          f"seed {args.seed}, scale {'searched' if args.scale is None else args.scale}")
    print_tables(rows)
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
