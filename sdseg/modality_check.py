"""Whether a volume looks like the images a model was trained for (``config["modalities"]``, set by
``scripts/bundle_model.py --modalities``), read from its values alone (an image file carries no modality).

CT is in Hounsfield units, where air is -1000 HU and fat about -100 HU; MR and PET values are not negative. Two
tests, one for each way of being wrong:

- :func:`could_be_ct`: some value is negative. A CT has some, also when cropped to soft tissue or clipped to a window
  (the soft-tissue window starts at -160). A model trained on CT only is warned about a volume that has none (a CT
  file whose stored values lack their rescale to HU included): a warning sent with the job's ``accepted`` message,
  never a refusal. Models trained for MR or PET only are not checked (their values have no fixed scale).
- :func:`looks_like_ct`: at least ``CT_MIN_SHARE`` of the voxels at or below ``CT_AIR_OR_FAT_HU`` (air or fat). It
  picks the default model of a job that names none (sdseg.registry.default_model_name), so a few negative values
  (an MR resampled with an overshooting interpolator, a z-scored image) do not make a volume CT.
- :func:`looks_like_suv_pet`: a PET in standardised uptake values (SUV), as the PET of the sarcoma source and of
  Slicer's PET-IndiC SUV conversion: no negative value, fractional values (an MR or a PET stored as counts is
  integer-valued), and 99.9 % of the voxels at most ``PET_MAX_SUV``. It picks the default model too. An MR rescaled
  to small fractional values ([0, 1]) passes it as well: nothing in the values tells them apart.

On the sarcoma validation volumes (8 patients) every CT's minimum is -1000 HU, with 44-62 % of its voxels at or below
-100 HU; every MR T1's and PET's minimum is 0; every PET's 99.9th percentile is 2.7-14.3 SUV (fractional values),
every MR T1 is integer-valued (99.9th percentile ~1,100) and so is the bundled brain MR sample (int16).
"""

from __future__ import annotations

import numpy as np

CT_AIR_OR_FAT_HU = -100.0
CT_MIN_SHARE = 0.01
PET_MAX_SUV = 50.0  # tumours rarely exceed an SUV of 30; MR and CT values run to hundreds or thousands
VALUES_CHECKED = 1_000_000  # at most this many voxels, evenly spaced, are read by looks_like_suv_pet


def could_be_ct(array: np.ndarray) -> bool:
    """Whether voxel values ``array`` can be a CT in Hounsfield units: some value is negative."""
    return float(np.min(array)) < 0


def looks_like_ct(array: np.ndarray) -> bool:
    """Whether voxel values ``array`` are clearly a CT in Hounsfield units: at least CT_MIN_SHARE of them are air or
    fat (<= CT_AIR_OR_FAT_HU)."""
    return float(np.mean(np.asarray(array) <= CT_AIR_OR_FAT_HU)) >= CT_MIN_SHARE


def looks_like_suv_pet(array: np.ndarray) -> bool:
    """Whether voxel values ``array`` are clearly a PET in SUV: none negative, some fractional, and the 99.9th
    percentile at most PET_MAX_SUV (read on at most VALUES_CHECKED evenly spaced voxels)."""
    values = np.asarray(array).ravel()
    values = values[:: max(1, values.size // VALUES_CHECKED)].astype(np.float64)
    return (values.size > 0 and float(values.min()) >= 0 and bool(np.any(values != np.floor(values)))
            and float(np.percentile(values, 99.9)) <= PET_MAX_SUV)


def modality_warnings(config: dict, array: np.ndarray) -> tuple[str, ...]:
    """The warning (at most one) for running a model of ``config`` on a volume of voxel values ``array``."""
    if config.get("modalities") != ["CT"] or could_be_ct(array):
        return ()
    return ("this model was trained on CT only, and this volume does not look like CT (no negative value, where CT "
            "in Hounsfield units has air at -1000 and fat near -100): its result may mean nothing, choose a model "
            "for this kind of image",)
