"""Model kinds -> classes, imported lazily (importing ``sdseg.models`` loads no network code)."""

from __future__ import annotations

import importlib
import threading
from collections.abc import MutableMapping


class _LazyClasses(MutableMapping):
    """Mapping kind -> class whose values may be given as "module:Class" and are imported on first access, one
    import at a time: diffusers replaces its module in ``sys.modules`` while it initialises, so a second thread
    importing it then would get a module without its classes."""

    def __init__(self, entries: dict):
        self._entries = dict(entries)
        self._import_lock = threading.RLock()

    def __getitem__(self, kind):
        with self._import_lock:
            entry = self._entries[kind]
            if isinstance(entry, str):
                module_name, class_name = entry.split(":")
                entry = getattr(importlib.import_module(module_name), class_name)
                self._entries[kind] = entry
        return entry

    def __contains__(self, kind):  # membership must not import the class
        return kind in self._entries

    def __setitem__(self, kind, cls):
        self._entries[kind] = cls

    def __delitem__(self, kind):
        del self._entries[kind]

    def __iter__(self):
        return iter(self._entries)

    def __len__(self):
        return len(self._entries)


MODEL_CLASSES = _LazyClasses({
    "sdseg": "sdseg.models.sdseg_ldm:SDSegModel",
    "ambiguous": "sdseg.models.ambiguous:AmbiguousDiffusionModel",
    "segdiff": "sdseg.models.segdiff:SegDiffModel",
    "unet": "sdseg.models.unet:SegmentationUNet",
    "threshold": "sdseg.models.threshold:IntensityThresholdModel",
})
# Kinds fitted by `sdseg evaluate --baselines` rather than trained by `sdseg train`.
BASELINE_KINDS = frozenset({"threshold"})


def model_class(kind: str):
    """The class of a model kind; an unknown kind raises ValueError listing the known ones."""
    if kind not in MODEL_CLASSES:
        raise ValueError(f"unknown model kind {kind!r}; known kinds: {', '.join(sorted(MODEL_CLASSES))}")
    return MODEL_CLASSES[kind]


def build_model(kind: str, preset: str = "small", **overrides):
    """A new, randomly initialised model of ``kind`` from a named size preset with config overrides."""
    cls = model_class(kind)
    return cls(cls.preset(preset, **overrides))


def model_from_config(kind: str, config: dict):
    """A new model of ``kind`` rebuilt from its saved ``config`` (weights not loaded)."""
    return model_class(kind)(config)


def import_model_classes() -> None:
    """Import every kind's class now (a worker does it while it waits for its first job)."""
    for kind in MODEL_CLASSES:
        model_class(kind)
