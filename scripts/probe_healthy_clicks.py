"""Healthy-tissue clicks around each lesion of a folder of VALIDATION volumes, in every direction and at several
gaps from the lesion's edge (`scripts/score_volumes.py` clicks one per volume): how often, and how much, a click on
healthy tissue paints.

    python scripts/probe_healthy_clicks.py FOLDER [--model M] [--samples 8] [--seed 0] [--gaps 20,30,45]

FOLDER as scripts/score_volumes.py reads it (<name>.<ext> + <name>_label.<ext>). On the slice of the click at the
centre of each lesion's largest slice, one click per direction (8, 45 degrees apart: sdseg.volume_scores.
healthy_point) and gap (mm from every label voxel on that slice; a direction that leaves the volume first is
skipped), each propagated as the worker does; prints the ml each paints and the share left empty.
"""

from __future__ import annotations

from sdseg.evaluation import prompt_point
from sdseg.geometry import voxel_ml
from sdseg.propagation import Prompt, propagate
from sdseg.rule_tuning import tuning_inputs, tuning_parser
from sdseg.volume_io import choose_slice_axis, read_volume
from sdseg.volume_scores import HEALTHY_DIRECTIONS, healthy_point


def main(argv: list[str] | None = None) -> int:
    parser = tuning_parser(__doc__.splitlines()[0], rule_out=False)
    parser.add_argument("--gaps", default="20,30,45", help="mm from the lesion's edge, comma separated")
    args, found, model = tuning_inputs(parser, argv)
    gaps = [float(gap) for gap in args.gaps.split(",")]
    painted_ml = []
    for name, volume_path, label_path in found:
        volume = read_volume(volume_path)
        truth = read_volume(label_path).array_kji > 0
        axis = choose_slice_axis(volume.ijk_to_ras, shape_kji=volume.array_kji.shape)
        centre = prompt_point(truth, axis)
        roi = [0, 0, 0, *volume.array_kji.shape[::-1]]
        ml_per_voxel = voxel_ml(volume.ijk_to_ras)
        for direction in HEALTHY_DIRECTIONS:
            for gap in gaps:
                point = healthy_point(truth, centre, volume.ijk_to_ras, axis, gap, directions=(direction,))
                if point is None:
                    continue
                voxels = sum(int(result.consensus.sum()) for result in propagate(
                    model, volume.array_kji, volume.ijk_to_ras, axis, [Prompt(point_ijk=tuple(point))], roi,
                    args.samples, seed=args.seed))
                painted_ml.append(voxels * ml_per_voxel)
                print(f"{name} direction {direction * 45} deg, {gap:g} mm: {painted_ml[-1]:.1f} ml", flush=True)
    painted = [ml for ml in painted_ml if ml > 0]
    print(f"{len(painted_ml)} healthy clicks: {len(painted_ml) - len(painted)} left empty "
          f"({100.0 * (len(painted_ml) - len(painted)) / max(1, len(painted_ml)):.1f} %), largest "
          f"{max(painted_ml, default=0.0):.1f} ml")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
