"""SDSegSlicerLib.module_logic on real MRML (slicer-core): ROI -> IJK bounds on oblique volumes, slice axis,
job ROI, accepting a sample into an editable segment, the variance colour map."""

from __future__ import annotations

import numpy as np
import pytest
import slicer
import vtk
from slicerlib_testing import rotation

from SDSegSlicerLib import module_logic
from SDSegSlicerLib.segmentation_writer import (ensure_converter_rules, image_array_kji, labelmap_image,
                                                volume_ijk_to_ras as ijk_to_ras, vtk_matrix as to_vtk_matrix)

DIMS_IJK = (20, 24, 16)
SPACING = (0.8, 1.2, 2.0)
ORIGIN = (-10.0, 5.0, 30.0)


OBLIQUE = rotation((1.0, 0.4, 0.2), 30.0)


@pytest.fixture
def scene():
    return slicer.vtkMRMLScene()


def add_volume(scene, directions=OBLIQUE, dims=DIMS_IJK):
    image = vtk.vtkImageData()
    image.SetDimensions(*dims)
    image.AllocateScalars(vtk.VTK_FLOAT, 1)
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "oblique")
    node.SetAndObserveImageData(image)
    node.SetSpacing(*SPACING)
    node.SetOrigin(*ORIGIN)
    node.SetIJKToRASDirections(*[float(v) for v in np.asarray(directions).ravel()])
    return node


def add_roi(scene, center_ras, size, directions=np.eye(3)):
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "roi")
    object_to_node = np.eye(4)
    object_to_node[:3, :3] = directions
    object_to_node[:3, 3] = center_ras
    roi.GetObjectToNodeMatrix().DeepCopy(to_vtk_matrix(object_to_node))
    roi.SetCenter(*[float(v) for v in center_ras])
    roi.SetSize(*[float(v) for v in size])
    return roi


def add_roi_over_ijk_box(scene, volume, lo_ijk, hi_ijk):
    """An ROI aligned with the volume's axes covering continuous IJK lo..hi."""
    lo, hi = np.asarray(lo_ijk, float), np.asarray(hi_ijk, float)
    center = ijk_to_ras(volume) @ np.append((lo + hi) / 2, 1.0)
    size = (hi - lo) * np.asarray(SPACING)
    return add_roi(scene, center[:3], size, OBLIQUE)


def test_volume_aligned_roi_on_oblique_volume_gives_exact_ijk_bounds(scene):
    volume = add_volume(scene)
    roi = add_roi_over_ijk_box(scene, volume, (2.6, 3.7, 1.9), (9.4, 12.2, 7.3))
    # voxel n covers [n - 0.5, n + 0.5): first voxels 3, 4, 2; last voxels 9, 12, 7 (end exclusive + 1)
    assert module_logic.roi_ijk_bounds(roi, volume) == [3, 4, 2, 10, 13, 8]
    assert roi.GetSize()[0] == pytest.approx(6.8 * SPACING[0])  # the ROI really is in mm, not IJK


def test_rotated_roi_bounds_enclose_exactly_the_voxels_whose_centres_it_contains(scene):
    volume = add_volume(scene)
    roi_directions = rotation((0.0, 0.3, 1.0), -25.0)
    center = ijk_to_ras(volume) @ np.array([9.0, 11.0, 7.0, 1.0])
    roi = add_roi(scene, center[:3], (9.0, 11.0, 13.0), roi_directions)
    bounds = np.array(module_logic.roi_ijk_bounds(roi, volume))

    # Independent check: every voxel centre inside the rotated box must lie in the bounds; the bounds exceed
    # the IJK box of those voxels by at most the ROI's rotation slack (1 voxel here, plus the rotation overhang).
    k, j, i = np.meshgrid(*[np.arange(n) for n in reversed(DIMS_IJK)], indexing="ij")
    ijk = np.stack([i.ravel(), j.ravel(), k.ravel(), np.ones(i.size)])
    ras = ijk_to_ras(volume) @ ijk
    local = roi_directions.T @ (ras[:3] - center[:3, None])
    inside = np.all(np.abs(local) <= np.array([4.5, 5.5, 6.5])[:, None], axis=0)
    assert inside.sum() > 50
    inside_ijk = ijk[:3, inside]
    assert np.all(inside_ijk.min(axis=1) >= bounds[:3])
    assert np.all(inside_ijk.max(axis=1) < bounds[3:])
    corners_ijk = np.linalg.inv(ijk_to_ras(volume)) @ np.vstack(
        [module_logic.roi_corners_world(roi).T, np.ones(8)])
    assert np.all(bounds[:3] == np.maximum(np.floor(corners_ijk[:3].min(axis=1) + 0.5), 0))
    assert np.all(bounds[3:] == np.minimum(np.floor(corners_ijk[:3].max(axis=1) + 0.5) + 1, DIMS_IJK))


def test_roi_bounds_follow_the_volume_parent_transform(scene):
    volume = add_volume(scene)
    roi = add_roi_over_ijk_box(scene, volume, (2.6, 3.7, 1.9), (9.4, 12.2, 7.3))
    shift = np.array([12.0, -7.0, 4.0])
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    matrix = np.eye(4)
    matrix[:3, 3] = shift
    transform.SetMatrixTransformToParent(to_vtk_matrix(matrix))
    volume.SetAndObserveTransformNodeID(transform.GetID())
    roi.SetCenter(*(np.array(roi.GetCenter()) + shift))  # the same box in world coordinates
    assert module_logic.roi_ijk_bounds(roi, volume) == [3, 4, 2, 10, 13, 8]


def test_roi_outside_or_clipped_to_the_volume(scene):
    volume = add_volume(scene)
    far = ijk_to_ras(volume) @ np.array([100.0, 100.0, 100.0, 1.0])
    with pytest.raises(ValueError, match="does not overlap"):
        module_logic.roi_ijk_bounds(add_roi(scene, far[:3], (5, 5, 5), OBLIQUE), volume)
    partly = add_roi_over_ijk_box(scene, volume, (-5.2, 20.1, 10.2), (4.2, 30.0, 40.0))
    assert module_logic.roi_ijk_bounds(partly, volume) == [0, 20, 10, 5, 24, 16]


def test_slice_axis_is_the_ijk_axis_closest_to_superior(scene):
    assert module_logic.slice_axis_closest_to_superior(add_volume(scene)) == 2
    coronal_stack = np.array([[1.0, 0, 0], [0, 0, -1.0], [0, 1.0, 0]])  # i -> R, j -> S, k -> -A
    assert module_logic.slice_axis_closest_to_superior(add_volume(scene, OBLIQUE @ coronal_stack)) == 1
    sagittal_stack = np.array([[0, 0, 1.0], [0, 1.0, 0], [-1.0, 0, 0]])  # i -> -S
    assert module_logic.slice_axis_closest_to_superior(add_volume(scene, sagittal_stack)) == 0


def test_job_roi_combines_roi_and_slice_range(scene):
    volume = add_volume(scene)
    assert module_logic.job_roi_ijk(volume) is None
    assert module_logic.job_roi_ijk(volume, slice_start=3, slice_end=5) == [0, 0, 3, 20, 24, 6]
    assert module_logic.job_roi_ijk(volume, slice_start=4, slice_axis=1) == [0, 4, 0, 20, 24, 16]
    roi = add_roi_over_ijk_box(scene, volume, (2.6, 3.7, 1.9), (9.4, 12.2, 7.3))
    assert module_logic.job_roi_ijk(volume, roi, slice_start=5) == [3, 4, 5, 10, 13, 8]
    assert module_logic.job_roi_ijk(volume, roi, slice_start=0, slice_end=3) == [3, 4, 2, 10, 13, 4]
    with pytest.raises(ValueError, match="covers none"):
        module_logic.job_roi_ijk(volume, roi, slice_start=10, slice_end=12)
    with pytest.raises(ValueError, match="not inside"):
        module_logic.job_roi_ijk(volume, slice_start=9, slice_end=4)
    with pytest.raises(ValueError, match="not inside"):
        module_logic.job_roi_ijk(volume, slice_end=16)


# --- accepting a sample -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module", autouse=True)
def segmentation_converters():
    ensure_converter_rules()


def set_segment_array(segmentation_node, segment_id, volume, array_kji):
    slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
        labelmap_image(array_kji, ijk_to_ras(volume), (0, 0, 0)), segmentation_node, segment_id,
        slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE)


def segment_array(segmentation_node, segment_id, volume):
    """The segment's voxels on the volume's grid, read from its own labelmap and its own geometry."""
    image = slicer.vtkOrientedImageData()
    slicer.vtkSlicerSegmentationsModuleLogic.GetSegmentBinaryLabelmapRepresentation(
        segmentation_node, segment_id, image)
    matrix = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(matrix)
    np.testing.assert_allclose([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)],
                               ijk_to_ras(volume), atol=1e-9)
    out = np.zeros(tuple(reversed(DIMS_IJK)), np.uint8)
    extent = image.GetExtent()
    if extent[1] < extent[0]:
        return out
    out[extent[4]:extent[5] + 1, extent[2]:extent[3] + 1, extent[0]:extent[1] + 1] = image_array_kji(image) > 0
    return out


@pytest.fixture
def samples(scene):
    volume = add_volume(scene)
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "result")
    node.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    rng = np.random.default_rng(3)
    arrays = {}
    for name in ("sample 1", "sample 2"):
        array = np.zeros(tuple(reversed(DIMS_IJK)), np.uint8)
        k0, j0, i0 = rng.integers(2, 8, size=3)
        array[k0:k0 + 6, j0:j0 + 9, i0:i0 + 7] = rng.random((6, 9, 7)) > 0.3
        segment_id = node.GetSegmentation().AddEmptySegment("", name)
        set_segment_array(node, segment_id, volume, array)
        arrays[segment_id] = array
    return volume, node, arrays


def test_accept_copies_exactly_the_sample_voxels(samples):
    volume, node, arrays = samples
    sample_1, sample_2 = list(arrays)
    accepted = module_logic.accept_sample(node, sample_2)
    segmentation = node.GetSegmentation()
    assert segmentation.GetSegment(accepted).GetName() == "accepted"
    np.testing.assert_array_equal(segment_array(node, accepted, volume), arrays[sample_2])
    assert not np.array_equal(arrays[sample_1], arrays[sample_2])
    for segment_id, array in arrays.items():  # the samples themselves are untouched
        np.testing.assert_array_equal(segment_array(node, segment_id, volume), array)


def test_second_accept_never_overwrites_an_edited_accepted_segment(samples):
    volume, node, arrays = samples
    sample_1, sample_2 = list(arrays)
    first = module_logic.accept_sample(node, sample_2)
    edited = segment_array(node, first, volume)
    edited[0:3, 0:4, 0:5] = 1  # the user paints in the accepted segment
    set_segment_array(node, first, volume, edited)

    second = module_logic.accept_sample(node, sample_1)
    third = module_logic.accept_sample(node, sample_2)
    segmentation = node.GetSegmentation()
    assert [segmentation.GetSegment(s).GetName() for s in (first, second, third)] == [
        "accepted", "accepted 2", "accepted 3"]
    np.testing.assert_array_equal(segment_array(node, first, volume), edited)
    np.testing.assert_array_equal(segment_array(node, second, volume), arrays[sample_1])
    np.testing.assert_array_equal(segment_array(node, third, volume), arrays[sample_2])


def test_accept_unknown_segment_says_so(samples):
    _, node, _ = samples
    with pytest.raises(ValueError, match="not in 'result'"):
        module_logic.accept_sample(node, "no such segment")
