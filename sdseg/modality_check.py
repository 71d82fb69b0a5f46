"""Whether a volume looks like the images a model was trained for (``config["modalities"]``, set by
``scripts/bundle_model.py --modalities``), read from its values alone (an image file carries no modality).

CT is in Hounsfield units, where air is -1000 HU and fat about -100 HU; MR and PET values are not negative. Four
tests:

- :func:`could_be_ct`: some value is negative. A CT has some, also when cropped to soft tissue or clipped to a window
  (the soft-tissue window starts at -160). A model trained on CT only is warned about a volume that has none (a CT
  file whose stored values lack their rescale to HU included): a warning sent with the job's ``accepted`` message,
  never a refusal. Models trained for MR or PET only are not checked (their values have no fixed scale).
- :func:`looks_like_ct`: at least ``CT_MIN_SHARE`` of the voxels at or below ``CT_AIR_OR_FAT_HU`` (air or fat). It
  picks the default model of a job that names none (sdseg.registry.default_model_name), so a few negative values
  (an MR resampled with an overshooting interpolator, a z-scored image) do not make a volume CT.
- :func:`label_map_warnings`: a volume of 0 and a few positive whole numbers is a label map or a mask, not an image,
  and a volume of one value holds nothing to segment (any model, a warning as the CT one).
- :func:`looks_like_suv_pet`: a PET in standardised uptake values (SUV), as the PET of the sarcoma source and of
  Slicer's PET-IndiC SUV conversion: fractional values (an MR or a PET stored as counts is integer-valued), 99.9 % of
  the voxels at most ``PET_MAX_SUV``, and none below ``-PET_UNDERSHOOT`` x that percentile (a resampling's small
  undershoot; a z-scored image goes far lower); values that are not finite (NaN padding) are left out. It picks the
  default model too. Quantitative maps with small fractional values (an ADC map in mm^2/s, a T1 map in s, an MR
  rescaled to [0, 1]) pass it as well: nothing in the values tells them apart.

On the sarcoma validation volumes (8 patients) every CT's minimum is -1000 HU, with 44-62 % of its voxels at or below
-100 HU; every MR T1's and PET's minimum is 0; every PET's 99.9th percentile is 2.7-14.3 SUV (fractional values),
every MR T1 is integer-valued (99.9th percentile ~1,100) and so is the bundled brain MR sample (int16).
"""

from __future__ import annotations

import numpy as np

CT_AIR_OR_FAT_HU = -100.0
CT_MIN_SHARE = 0.01
PET_MAX_SUV = 50.0  # tumours rarely exceed an SUV of 30; MR and CT values run to hundreds or thousands
PET_UNDERSHOOT = 0.05  # the most negative value a PET in SUV may have, x its 99.9th percentile
VALUES_CHECKED = 1_000_000  # at most this many voxels, evenly spaced, are read by looks_like_suv_pet, label_map_warnings
LABEL_MAP_MAX_VALUES = 16  # 0 and so few other whole numbers are a label map (a mask: 0 and 1), not an image


def could_be_ct(array: np.ndarray) -> bool:
    """Whether voxel values ``array`` can be a CT in Hounsfield units: some value is negative."""
    return float(np.min(array)) < 0


def looks_like_ct(array: np.ndarray) -> bool:
    """Whether voxel values ``array`` are clearly a CT in Hounsfield units: at least CT_MIN_SHARE of them are air or
    fat (<= CT_AIR_OR_FAT_HU)."""
    return float(np.mean(np.asarray(array) <= CT_AIR_OR_FAT_HU)) >= CT_MIN_SHARE


def looks_like_suv_pet(array: np.ndarray) -> bool:
    """Whether voxel values ``array`` are clearly a PET in SUV: some fractional, the 99.9th percentile at most
    PET_MAX_SUV and nothing below -PET_UNDERSHOOT x that percentile (read on at most VALUES_CHECKED evenly spaced
    finite voxels)."""
    values = _sampled(array)
    if values.size == 0 or not np.any(values != np.floor(values)):
        return False
    top = float(np.percentile(values, 99.9))
    return 0 < top <= PET_MAX_SUV and float(values.min()) >= -PET_UNDERSHOOT * top


def _sampled(array: np.ndarray) -> np.ndarray:
    """At most VALUES_CHECKED evenly spaced voxel values of ``array``, the finite ones, as float64."""
    values = np.asarray(array).reshape(-1)
    values = values[:: -(-values.size // VALUES_CHECKED) or 1].astype(np.float64)
    return values[np.isfinite(values)]


def label_map_warnings(array: np.ndarray) -> tuple[str, ...]:
    """The warning (at most one) for a volume of one value (nothing to segment), or of 0 and at most
    LABEL_MAP_MAX_VALUES - 1 positive whole numbers (a label map or a mask given in place of the image; a scanner's
    image has hundreds of values), read on at most VALUES_CHECKED evenly spaced voxels."""
    values = _sampled(array)
    if values.size == 0 or np.any(values != np.floor(values)):
        return ()
    distinct = np.unique(values)
    if distinct.size == 1:
        return (f"every voxel of this volume has the value {distinct[0]:g}: there is nothing to segment",)
    if distinct.size > LABEL_MAP_MAX_VALUES or distinct[0] != 0:
        return ()
    shown = ", ".join(f"{v:g}" for v in distinct[:4]) + (", ..." if distinct.size > 4 else "")
    return (f"this volume has only {distinct.size} distinct values ({shown}): it looks like a label map or a mask, "
            "not an image; segment the image it belongs to",)


def modality_warnings(config: dict, array: np.ndarray) -> tuple[str, ...]:
    """The warning (at most one) for running a model of ``config`` on a volume of voxel values ``array``."""
    if config.get("modalities") != ["CT"] or could_be_ct(array):
        return ()
    return ("this model was trained on CT only, and this volume does not look like CT (no negative value, where CT "
            "in Hounsfield units has air at -1000 and fat near -100): its result may mean nothing, choose a model "
            "for this kind of image",)
