"""Copy a trained model into Resources/Models/NAME for shipping: weights in float16, the training card kept, an
intended-use statement and (optionally) the evaluation table of the bundled weights appended.

    python scripts/bundle_model.py TRAINED_FOLDER NAME --summary "one line" [--steps K] \
        [--rules scale.json length.json] [--modalities CT] [--evaluation eval/NAME/metrics.md] \
        [--intended-use use.md]

--steps sets the model's default number of sampling steps and --rules its propagation rules (the JSON files
``scripts/tune_scale_rule.py`` and ``scripts/tune_length_rule.py`` write with --out, merged into
config["propagation"]); choose both on the validation split, never the test split. --modalities records the
images a model was trained for (config["modalities"]; none: any), as a CT-windowed model is for CT only.

Evaluate the bundled folder itself (`sdseg evaluate --model Resources/Models/NAME ...`), then run this again with
--evaluation so the card reports the numbers of exactly the weights that ship.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

from sdseg.checkpoint import CheckpointError, load_model, save_model
from sdseg.lesion_jumps import JumpRule
from sdseg.lesion_length import LengthRule
from sdseg.scale_search import ScaleRule
from sdseg.training import with_training_data
from sdseg.volume_scores import MODALITIES

BUNDLED = Path(__file__).resolve().parents[1] / "Resources" / "Models"
RULES = {rule.CONFIG_KEY: rule for rule in (ScaleRule, JumpRule, LengthRule)}
INTENDED_USE = """## Intended use

A small demonstration default for SDSegSlicer on CPU: it shows consensus, plausible contours and sample variance on
lesion-centred regions of interest of MR/CT slices. It was trained on the crops of three real patients (PyRadiomics
test cases; see the data set row above) and must not be used for clinical decisions or reported as a validated
segmentation model. Train your own model on your data with `sdseg train` (see the project README). Weights are
stored in float16 and cast to float32 on load.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trained", type=Path)
    parser.add_argument("name")
    parser.add_argument("--summary", required=True, help="first line of the card (the model's description)")
    parser.add_argument("--steps", type=int, help="default sampling steps of the shipped model")
    parser.add_argument("--rules", type=Path, nargs="+", default=[], help="propagation rules (JSON written by the "
                        "rule-tuning scripts' --out), merged into config['propagation']")
    parser.add_argument("--modalities", nargs="+", choices=sorted(MODALITIES),
                        help="the only modalities the model was trained for (default: any)")
    parser.add_argument("--into", type=Path, default=BUNDLED, help="the models folder (default Resources/Models)")
    parser.add_argument("--evaluation", type=Path, help="metrics.md written by sdseg evaluate on the bundled folder")
    parser.add_argument("--intended-use", type=Path, help="Markdown of the card's intended-use section (default: the "
                        "demonstration default's, trained on three patients)")
    args = parser.parse_args(argv)
    try:
        model = load_model(args.trained)
    except CheckpointError as error:
        print(f"bundle_model: error: {error}", file=sys.stderr)
        return 2
    if args.steps is not None and model.deterministic:
        print(f"bundle_model: error: --steps: a {model.kind} model draws no samples, it has no sampling steps",
              file=sys.stderr)
        return 2
    if args.steps is not None:
        model.config[model.steps_config_key] = args.steps
    if args.modalities:
        model.config["modalities"] = list(args.modalities)
    if "training_data" in model.config:  # runs of older code recorded a data set once per run
        model.config["training_data"] = functools.reduce(with_training_data, model.config["training_data"], [])
    for rules in args.rules:
        given = json.loads(rules.read_text(encoding="utf-8"))
        model.config["propagation"] = {**model.config.get("propagation", {}), **given}
        try:
            for key in given:
                if key not in RULES:
                    raise ValueError(f"unknown rule {key!r}; known: {', '.join(RULES)}")
                RULES[key].of_config(model.config)
        except ValueError as error:
            print(f"bundle_model: error: --rules {rules}: {error}", file=sys.stderr)
            return 2
    training_card = (args.trained / "README.md").read_text(encoding="utf-8")
    training_card = training_card.split("\n", 1)[1].replace("`samples/", "`(training folder) samples/")
    intended_use = args.intended_use.read_text(encoding="utf-8") if args.intended_use else INTENDED_USE
    card = f"# {args.name}: {args.summary}\n{training_card}\n{intended_use}"
    if args.evaluation:
        card += "\n## Evaluation of these weights\n\n" + args.evaluation.read_text(encoding="utf-8")
    save_model(model, args.into / args.name, card=card, half_precision=True)
    print(f"bundled {args.trained} as {args.into / args.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
