"""What every data source gives: cases (one patient volume, or one 2D image, with its raters' masks) read on demand,
and the error a source raises when its data cannot be read."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple

import numpy as np


class SourceError(Exception):
    """The source data cannot be read; the message says what is wrong and what to do."""


@dataclass(frozen=True)
class Case:
    patient: str
    image: np.ndarray  # float32 (K, J, I)
    masks: np.ndarray  # uint8 (R, K, J, I), values {0, 1}
    ijk_to_ras: np.ndarray  # 4x4 float64
    whole_image_roi: bool = False  # True: the image already is the region of interest (2D crops / photos)
    # An atlas label map (K, J, I) whose labels are separate objects (anatomical structures): each is cropped with
    # its own mask only (sdseg.data.preprocess.object_crops); None: the masks' connected components are the lesions.
    objects: np.ndarray | None = None
    tag: str = ""  # what tells this case from the patient's others in crop file names (e.g. the modality); "" none


class CaseRef(NamedTuple):
    """A case known by its patient id, read from disk only when ``read()`` is called (one volume in memory at a
    time)."""
    patient: str
    read: Callable[[], Case]
