import math

import numpy as np

from sdseg.geometry import voxel_spacing


def test_voxel_spacing_is_the_length_of_each_axis_of_a_rotated_anisotropic_grid():
    angle = math.radians(30)
    rotation = np.array([[math.cos(angle), -math.sin(angle), 0], [math.sin(angle), math.cos(angle), 0], [0, 0, 1]])
    ijk_to_ras = np.eye(4)
    ijk_to_ras[:3, :3] = rotation @ np.diag([0.7, 0.9, 3.0])
    ijk_to_ras[:3, 3] = [10, -20, 5]
    np.testing.assert_allclose(voxel_spacing(ijk_to_ras), [0.7, 0.9, 3.0])
    np.testing.assert_allclose(voxel_spacing(ijk_to_ras.tolist()), [0.7, 0.9, 3.0])
