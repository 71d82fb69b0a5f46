"""`sdseg` command line: train, evaluate, preprocess, models. Each subcommand lives in its own module, imported
only when it runs (`sdseg --help` and `sdseg models` load no torch); train, evaluate and preprocess have their
arguments in a module without torch, parsed first, so that their `--help` and argument errors load none either."""

from __future__ import annotations

import importlib
import os
import sys

SUBCOMMANDS = {
    "train": ("sdseg.training", "Train a model on a crops data set."),
    "evaluate": ("sdseg.evaluation", "Evaluate a model on a data set's test split."),
    "preprocess": ("sdseg.data.preprocess", "Turn volumes + masks into 2D training crops."),
    "models": ("sdseg.registry", "List the installed models."),
}
ARGUMENT_MODULES = {"train": "sdseg.training_args", "evaluate": "sdseg.evaluation_args",
                    "preprocess": "sdseg.data.preprocess_args"}  # their build_parser(), without torch


def main(argv: list[str] | None = None) -> int:
    try:
        status = run(argv)
        sys.stdout.flush()  # here, not at exit: a reader that went away is handled below
        return status
    except BrokenPipeError:  # `sdseg models | head`: the reader has what it wanted; no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit's flush must not fail again
        return 1


def run(argv: list[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in SUBCOMMANDS:
        lines = ["usage: sdseg {" + ",".join(SUBCOMMANDS) + "} ...", ""]
        lines += [f"  {name:<11} {help_}" for name, (_, help_) in SUBCOMMANDS.items()]
        print("\n".join(lines), file=sys.stdout if argv and argv[0] in ("-h", "--help") else sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    if argv[0] in ARGUMENT_MODULES:  # --help and argument errors exit here, before the command's heavy imports
        importlib.import_module(ARGUMENT_MODULES[argv[0]]).build_parser().parse_args(argv[1:])
    module = importlib.import_module(SUBCOMMANDS[argv[0]][0])
    return module.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
