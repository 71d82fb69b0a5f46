"""Names that the command lines offer as choices and the modules that implement them check, free of heavy imports
(torch, SimpleITK), so that `sdseg train --help`, `sdseg evaluate --help` and argument errors answer at once."""

RATER_TARGETS = ("random", "majority", "union")  # the mask a training image comes with (sdseg.masks.rater_target)
AUGMENTATIONS = ("flip", "transpose", "scale", "intensity")  # sdseg.data.augment
DEFAULT_AUGMENTATIONS = ("flip",)
PROMPT_CHANNELS = ("point", "box", "previous")  # sdseg.prompt_maps
DEFAULT_PROMPT_CHANNELS = ("point", "box")  # `sdseg train` without --prompt-channels
SPLITS = ("train", "val", "test")  # sdseg.data.dataset
