"""Whether a volume looks like the images a model was trained for (``config["modalities"]``, set by
``scripts/bundle_model.py --modalities``): a warning sent with the job's ``accepted`` message, never a refusal (an
image file carries no modality; only its values can be read).

CT is in Hounsfield units, where air is -1000 HU and fat about -100 HU: a CT holds negative values, also when cropped
to soft tissue or clipped to a window (the soft-tissue window starts at -160). MR and PET values are not negative: on
the sarcoma validation volumes (8 patients) every CT's minimum is -1000 HU, every MR T1's and PET's 0. A model trained
on CT only is warned about a volume with no negative value (a CT file whose stored values lack their rescale to HU
included). Models trained for MR or PET only are not checked (their values have no fixed scale). The same test picks
the default model of a job that names none (sdseg.registry.default_model_name).
"""

from __future__ import annotations

import numpy as np


def looks_like_ct(array: np.ndarray) -> bool:
    """Whether voxel values ``array`` can be a CT in Hounsfield units: some value is negative (module docstring)."""
    return float(np.min(array)) < 0


def modality_warnings(config: dict, array: np.ndarray) -> tuple[str, ...]:
    """The warning (at most one) for running a model of ``config`` on a volume of voxel values ``array``."""
    if config.get("modalities") != ["CT"] or looks_like_ct(array):
        return ()
    return ("this model was trained on CT only, and this volume does not look like CT (no negative value, where CT "
            "in Hounsfield units has air at -1000 and fat near -100): its result may mean nothing, choose a model "
            "for this kind of image",)
