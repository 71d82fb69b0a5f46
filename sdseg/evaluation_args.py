"""`sdseg evaluate`'s arguments, without torch: `--help` and argument errors answer at once (sdseg.cli parses them
before it imports sdseg.evaluation)."""

from __future__ import annotations

import argparse

from sdseg.choices import SPLITS

PROMPTS = ("click", "none")
PREVIOUS = ("unknown", "neighbour")  # what a model with the previous-slice channel is given (--previous)


def parse_sample_counts(text: str) -> list[int]:
    """``"1,4,16"`` -> ``[1, 4, 16]`` (sorted, unique, each >= 1)."""
    try:
        counts = sorted({int(part) for part in text.split(",")})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sample counts separated by commas, e.g. 1,4,16; got {text!r}") \
            from None
    if counts[0] < 1:
        raise argparse.ArgumentTypeError(f"sample counts must be at least 1, got {text!r}")
    return counts


def _int_at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer of at least {minimum}, got {text!r}")
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    """`sdseg evaluate`'s arguments."""
    parser = argparse.ArgumentParser(
        prog="sdseg evaluate", description="Evaluate a model on a crops data set split: Dice/IoU of the consensus, "
        "GED, sample diversity, variance-vs-rater-disagreement AUROC and speed, per sample count, with and without "
        "relative-area post-processing. Writes OUT/metrics.json, OUT/metrics.md and OUT/grid.png.")
    parser.add_argument("--model", required=True, help="installed model name (see `sdseg models`) or model folder")
    parser.add_argument("--data", required=True, help="crops data set folder (with dataset.json)")
    parser.add_argument("--split", default="test", choices=SPLITS, help="split to evaluate (default test)")
    parser.add_argument("--samples", default=[1, 4, 16], type=parse_sample_counts,
                        help="sample counts N, comma separated (default 1,4,16)")
    parser.add_argument("--max-cases", type=_int_at_least(1), help="evaluate only the first N cases (file name order)")
    parser.add_argument("--spread", action="store_true", help="with --max-cases: N cases evenly spaced over the "
                        "split (file name order) instead of the first N, so that every part of a large split counts")
    parser.add_argument("--seed", type=_int_at_least(0), default=0, help="random seed (default 0)")
    parser.add_argument("--steps", type=_int_at_least(1), help="sampling steps (default: the model's)")
    parser.add_argument("--out", help="output folder (default ./evaluation-MODEL-SPLIT)")
    parser.add_argument("--overwrite", action="store_true", help="replace the evaluation already in --out")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="default auto")
    parser.add_argument("--prompt", choices=PROMPTS, default="click", help="for models with prompt channels: "
                        "click each lesion case where a user would (and a lesion-free case at its centre), or give "
                        "no prompt (default click)")
    parser.add_argument("--previous", choices=PREVIOUS, default="unknown",
                        help="for models with the previous-slice channel: give each case no previous mask "
                             "(unknown, as the prompted slice; default) or its neighbouring slice's raters' union, "
                             "as the propagation gives the slices after the prompted one (neighbour)")
    parser.add_argument("--baselines", action="store_true",
                        help="also score the empty mask, the train mean mask and an intensity threshold fitted on "
                             "the train split")
    parser.add_argument("--baselines-from", metavar="DATA",
                        help="score the baselines (--baselines) fitted on the train split of this data set instead "
                             "(for an external test set, which has no train split: e.g. the model's training data)")
    return parser
