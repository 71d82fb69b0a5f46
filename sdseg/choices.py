"""Names that the command lines offer as choices and the modules that implement them check, free of heavy imports
(torch, SimpleITK), so that `sdseg train|evaluate|preprocess --help` and argument errors answer at once."""

RATER_TARGETS = ("random", "majority", "union")  # the mask a training image comes with (sdseg.masks.rater_target)
AUGMENTATIONS = ("flip", "transpose", "scale", "intensity")  # sdseg.data.augment
DEFAULT_AUGMENTATIONS = ("flip",)
PROMPT_CHANNELS = ("point", "box", "previous")  # sdseg.prompt_maps
DEFAULT_PROMPT_CHANNELS = ("point", "box")  # `sdseg train` without --prompt-channels
SPLITS = ("train", "val", "test")  # sdseg.data.dataset
# The names of sdseg.data.sources.SOURCES and the keys of its IBSI_STS_PREPROCESSING, whose module imports the
# loaders (SimpleITK, torch); a test keeps them equal.
SOURCE_NAMES = ("brats-tcga", "btcv", "chest-ct", "head-ct", "ibsi-sts", "kvasir-seg", "lidc", "lidc-pickle",
                "lidc-slices", "liver-mr", "mricron", "pairs", "pyradiomics")
IBSI_STS_MODALITIES = ("ct", "mr", "pet", "all")
