"""Geometry and segment logic of SDSegSlicer that needs no Qt and no slicer.app: ROI -> IJK bounds, slice axis,
the job's ROI, accepting a sample into an editable segment.

Runs in Slicer and on slicer-core alike, so the module and the tests share this code.
"""

from __future__ import annotations

import numpy as np
import slicer
import vtk

from .segmentation_writer import numpy_matrix, segment_labelmap

ACCEPTED_SEGMENT_NAME = "accepted"
ACCEPTED_SEGMENT_COLOUR = (0.1, 0.9, 0.3)


def world_to_ijk_matrix(volume_node) -> np.ndarray:
    """4x4 matrix from world RAS to the volume's IJK, through a linear parent transform if there is one."""
    ras_to_ijk = vtk.vtkMatrix4x4()
    volume_node.GetRASToIJKMatrix(ras_to_ijk)
    world_to_local = np.eye(4)
    parent = volume_node.GetParentTransformNode()
    if parent is not None:
        if not parent.IsTransformToWorldLinear():
            raise ValueError(
                f"Volume '{volume_node.GetName()}' is under a non-linear transform: harden the transform "
                "(Data module, right-click the volume, 'Harden transform') and try again.")
        to_world = vtk.vtkMatrix4x4()
        parent.GetMatrixTransformToWorld(to_world)
        world_to_local = np.linalg.inv(numpy_matrix(to_world))
    return numpy_matrix(ras_to_ijk) @ world_to_local


def volume_ijk_to_world_directions(volume_node) -> np.ndarray:
    """3x3: column a is the world direction of IJK axis a."""
    return np.linalg.inv(world_to_ijk_matrix(volume_node))[:3, :3]


def slice_axis_closest_to_superior(volume_node) -> int:
    """IJK axis (0, 1, 2) whose world direction is closest to the RAS S axis: axial slices for any orientation."""
    directions = volume_ijk_to_world_directions(volume_node)
    unit = directions / np.linalg.norm(directions, axis=0, keepdims=True)
    return int(np.argmax(np.abs(unit[2, :])))


def volume_dimensions(volume_node) -> tuple[int, int, int]:
    image = volume_node.GetImageData()
    if image is None:
        raise ValueError(f"Volume '{volume_node.GetName()}' has no image data: load a volume first.")
    return tuple(int(d) for d in image.GetDimensions())


def roi_corners_world(roi_node) -> np.ndarray:
    """(8, 3) world RAS corners of a box ROI (rotation and parent transforms included)."""
    size = np.array(roi_node.GetSize(), dtype=float)
    if np.any(size <= 0):
        raise ValueError(f"ROI '{roi_node.GetName()}' has zero size: resize it so it covers the lesion.")
    half = size / 2.0
    signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=float)
    corners_object = np.hstack([signs * half, np.ones((8, 1))])
    object_to_world = numpy_matrix(roi_node.GetObjectToWorldMatrix())
    return (object_to_world @ corners_object.T).T[:, :3]


def roi_ijk_bounds(roi_node, volume_node) -> list[int]:
    """[i0, j0, k0, i1, j1, k1] (end exclusive) of the voxels whose cells the ROI's IJK bounding box touches,
    clipped to the volume. An ROI rotated with respect to the volume gets the IJK box enclosing it."""
    corners = np.hstack([roi_corners_world(roi_node), np.ones((8, 1))])
    corners_ijk = (world_to_ijk_matrix(volume_node) @ corners.T).T[:, :3]
    dims = np.array(volume_dimensions(volume_node))
    # Voxel n covers [n - 0.5, n + 0.5) in continuous IJK.
    start = np.floor(corners_ijk.min(axis=0) + 0.5).astype(int)
    end = np.floor(corners_ijk.max(axis=0) + 0.5).astype(int) + 1
    start = np.clip(start, 0, dims)
    end = np.clip(end, 0, dims)
    if np.any(end <= start):
        raise ValueError(
            f"ROI '{roi_node.GetName()}' does not overlap volume '{volume_node.GetName()}': "
            "move the ROI onto the volume, or clear the ROI selector to segment the whole volume.")
    return [int(v) for v in start] + [int(v) for v in end]


def job_roi_ijk(volume_node, roi_node=None, slice_start: int = 0, slice_end: int = -1,
                slice_axis: int | None = None) -> list[int] | None:
    """The `roi_ijk` of a segment job: the ROI (or the whole volume) narrowed to slices
    slice_start..slice_end (inclusive; -1 = last slice) along slice_axis. None means the whole volume."""
    dims = volume_dimensions(volume_node)
    bounds = roi_ijk_bounds(roi_node, volume_node) if roi_node is not None else [0, 0, 0, *dims]
    axis = slice_axis_closest_to_superior(volume_node) if slice_axis is None else slice_axis
    last = dims[axis] - 1 if slice_end < 0 else slice_end
    if slice_start < 0 or slice_start > last or last >= dims[axis]:
        raise ValueError(
            f"Slice range {slice_start}..{last} is not inside the volume's {dims[axis]} slices "
            f"(0..{dims[axis] - 1}): set the first slice <= the last slice, or -1 as last slice for 'up to the end'.")
    bounds[axis] = max(bounds[axis], slice_start)
    bounds[axis + 3] = min(bounds[axis + 3], last + 1)
    if bounds[axis + 3] <= bounds[axis]:
        raise ValueError(
            f"The ROI covers none of slices {slice_start}..{last}: widen the slice range or move the ROI.")
    if bounds == [0, 0, 0, *dims]:
        return None
    return bounds


def unique_segment_name(segmentation, base_name: str) -> str:
    """base_name if free, else 'base_name 2', 'base_name 3', ..."""
    name, number = base_name, 1
    while segmentation.GetSegmentIdBySegmentName(name):
        number += 1
        name = f"{base_name} {number}"
    return name


def accept_sample(segmentation_node, sample_segment_id: str, base_name: str = ACCEPTED_SEGMENT_NAME) -> str:
    """Copy the voxels of one sample segment into a new editable segment and return its ID.

    An existing `accepted` segment (maybe edited by the user) is never overwritten: the copy is named
    `accepted 2`, `accepted 3`, ...
    """
    segmentation = segmentation_node.GetSegmentation()
    if segmentation.GetSegment(sample_segment_id) is None:
        raise ValueError(f"Segment '{sample_segment_id}' is not in '{segmentation_node.GetName()}'.")
    labelmap = segment_labelmap(segmentation_node, sample_segment_id)
    name = unique_segment_name(segmentation, base_name)
    new_id = segmentation.AddEmptySegment("", name, ACCEPTED_SEGMENT_COLOUR)
    slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
        labelmap, segmentation_node, new_id, slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE)
    return new_id
