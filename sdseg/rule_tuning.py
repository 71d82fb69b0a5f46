"""What the scripts that tune or probe the propagation on validation volumes share (scripts/tune_scale_rule.py,
scripts/tune_length_rule.py, scripts/probe_healthy_clicks.py): their common arguments, the labelled cases of the
folder and the model."""

from __future__ import annotations

import argparse
from pathlib import Path

from sdseg import registry
from sdseg.checkpoint import load_model
from sdseg.volume_scores import folder_cases


def tuning_parser(description: str, rule_out: bool = True) -> argparse.ArgumentParser:
    """A parser with the arguments every tuning script takes: FOLDER, --model, --samples, --seed and (``rule_out``:
    a script that chooses a rule) --out."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("folder", type=Path, help="validation volumes <name>.<ext> with labels <name>_label.<ext>")
    parser.add_argument("--model", default=registry.DEFAULT_MODEL, help="model name or folder (default: %(default)s)")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    if rule_out:
        parser.add_argument("--out", type=Path, help="write the best rule here as JSON")
    return parser


def tuning_inputs(parser: argparse.ArgumentParser, argv: list[str] | None):
    """(arguments, the folder's (name, volume, label) cases, the loaded model); a usage error when the folder holds
    no labelled volume."""
    args = parser.parse_args(argv)
    try:
        cases = folder_cases(args.folder)
    except (ValueError, OSError) as error:
        parser.error(str(error))
    return args, cases, load_model(registry.resolve_model(args.model))
