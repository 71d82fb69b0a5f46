"""Whether a volume looks like the images a model was trained for (``config["modalities"]``, set by
``scripts/bundle_model.py --modalities``): a warning sent with the job's ``accepted`` message, never a refusal (an
image file carries no modality; only its values can be read).

CT is in Hounsfield units, where air is -1000 HU: a CT of a body holds some (the lungs, the air around the body, the
scanner's padding at -1024 or below). MR and PET values are not negative. On the sarcoma validation volumes (8
patients) every CT's minimum is -1000 HU, every MR T1's and PET's 0. A model trained on CT only is warned about a
volume with no value below :data:`CT_AIR_BELOW_HU`. Models trained for MR or PET only are not checked (their values
have no fixed scale).
"""

from __future__ import annotations

import numpy as np

CT_AIR_BELOW_HU = -500.0  # a CT has values below this (air, -1000 HU); MR and PET have none


def modality_warnings(config: dict, array: np.ndarray) -> tuple[str, ...]:
    """The warning (at most one) for running a model of ``config`` on a volume of voxel values ``array``."""
    if config.get("modalities") != ["CT"] or float(np.min(array)) < CT_AIR_BELOW_HU:
        return ()
    return (f"this model was trained on CT only, and this volume does not look like CT (no value below "
            f"{CT_AIR_BELOW_HU:g}; CT has air at -1000 HU): its result may mean nothing, choose a model for this "
            "kind of image",)
