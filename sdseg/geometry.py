"""Voxel geometry of a volume given by its 4 x 4 IJK -> RAS matrix."""

from __future__ import annotations

import numpy as np


def voxel_spacing(ijk_to_ras) -> np.ndarray:
    """Voxel size in mm along I, J, K: the lengths of the matrix's first three columns."""
    return np.linalg.norm(np.asarray(ijk_to_ras, dtype=float)[:3, :3], axis=0)


def voxel_ml(ijk_to_ras) -> float:
    """Volume of one voxel in ml: |det| of the 3 x 3 IJK -> RAS part (mm^3, any orientation or shear) / 1000."""
    return float(abs(np.linalg.det(np.asarray(ijk_to_ras, dtype=float)[:3, :3]))) / 1000.0
