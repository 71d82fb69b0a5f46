"""`sdseg` command line: train, evaluate, preprocess, models. Each subcommand lives in its own module."""

from __future__ import annotations

import importlib
import sys

SUBCOMMANDS = {
    "train": ("sdseg.training", "Train a model on a crops data set."),
    "evaluate": ("sdseg.evaluation", "Evaluate a model on a data set's test split."),
    "preprocess": ("sdseg.data.preprocess", "Turn volumes + masks into 2D training crops."),
    "models": ("sdseg.registry", "List the installed models."),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in SUBCOMMANDS:
        lines = ["usage: sdseg {" + ",".join(SUBCOMMANDS) + "} ...", ""]
        lines += [f"  {name:<11} {help_}" for name, (_, help_) in SUBCOMMANDS.items()]
        print("\n".join(lines), file=sys.stdout if argv and argv[0] in ("-h", "--help") else sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    module = importlib.import_module(SUBCOMMANDS[argv[0]][0])
    return module.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
