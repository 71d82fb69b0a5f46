"""StreamedSegmentationWriter on real MRML (slicer-core): synthetic worker slices for every slice axis on an
oblique, anisotropic, flipped-axis volume land on the right voxels, checked in MRML and in the written files read
back by slicerio and SimpleITK."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
import vtk
from slicerlib_testing import (RAS_TO_LPS, accepted_message, oblique_ijk_to_ras, read_seg_nrrd_with_sitk,
                               read_seg_nrrd_with_slicerio, sitk_ijk_to_lps, synthetic_result, write_slice_messages)

from SDSegSlicerLib import export, segmentation_writer
from SDSegSlicerLib.segmentation_writer import (PROMPT_ATTRIBUTE, SLICE_AXIS_ATTRIBUTE, StreamedSegmentationWriter,
                                                ensure_converter_rules, image_array_kji, numpy_matrix,
                                                read_segment_arrays, sample_colours, segment_ids_by_name,
                                                vtk_matrix)

SHAPE_KJI = (7, 11, 13)
ROI_IJK = [2, 1, 1, 11, 9, 6]
NUM_SAMPLES = 3
NAMES = ["consensus", "sample 1", "sample 2", "sample 3"]


def expected_masks(truth):
    samples, consensus, _ = truth
    return {"consensus": consensus, **{f"sample {n + 1}": samples[n] for n in range(len(samples))}}


def stream(scene, folder, slice_axis, reference_volume_node=None, flush_every=2, seed=0, truth=None):
    """Feed a synthetic job to a writer (flushing every few slices, like a timer) -> (writer, truth)."""
    ijk_to_ras = oblique_ijk_to_ras()
    truth = synthetic_result(SHAPE_KJI, ROI_IJK, NUM_SAMPLES, seed) if truth is None else truth
    writer = StreamedSegmentationWriter(
        scene, accepted_message(SHAPE_KJI, ijk_to_ras, slice_axis, ROI_IJK), "ct tiny", NUM_SAMPLES,
        reference_volume_node)
    for count, message in enumerate(write_slice_messages(folder, truth, ROI_IJK, slice_axis), start=1):
        writer.add_slice(message)
        if count % flush_every == 0:
            assert writer.flush()
    writer.flush()
    return writer, truth


@pytest.mark.parametrize("slice_axis", [0, 1, 2])
def test_slices_land_on_the_right_voxels_in_mrml_and_in_the_files(tmp_path, slice_axis):
    scene = slicer.vtkMRMLScene()
    writer, truth = stream(scene, tmp_path, slice_axis)
    expected = expected_masks(truth)
    assert writer.slices_received == ROI_IJK[slice_axis + 3] - ROI_IJK[slice_axis]

    by_name = segment_ids_by_name(writer.segmentation_node)
    assert list(by_name) == NAMES
    masks, extent, ijk_to_ras = read_segment_arrays(writer.segmentation_node, [by_name[n] for n in NAMES])
    assert extent == [0, SHAPE_KJI[2] - 1, 0, SHAPE_KJI[1] - 1, 0, SHAPE_KJI[0] - 1]
    np.testing.assert_allclose(ijk_to_ras, oblique_ijk_to_ras(), atol=1e-9)
    for name, mask in zip(NAMES, masks):
        np.testing.assert_array_equal(mask, expected[name], err_msg=name)
    np.testing.assert_array_equal(image_array_kji(writer.variance_node.GetImageData()), truth[2])

    path = export.export_segmentation(writer.segmentation_node, tmp_path / "result.seg.nrrd")
    expected_lps = RAS_TO_LPS @ oblique_ijk_to_ras()
    for reader in (read_seg_nrrd_with_slicerio, read_seg_nrrd_with_sitk):
        masks_read, ijk_to_lps = reader(path)
        assert list(masks_read) == NAMES
        np.testing.assert_allclose(ijk_to_lps, expected_lps, atol=1e-6)
        for name in NAMES:
            np.testing.assert_array_equal(masks_read[name], expected[name], err_msg=f"{reader.__name__} {name}")

    variance_path = export.export_volume(writer.variance_node, tmp_path / "variance.nrrd")
    variance_image = sitk.ReadImage(str(variance_path))
    assert variance_image.GetPixelID() == sitk.sitkFloat32
    np.testing.assert_array_equal(sitk.GetArrayFromImage(variance_image), truth[2])
    np.testing.assert_allclose(sitk_ijk_to_lps(variance_image), expected_lps, atol=1e-6)


def test_disjoint_and_empty_samples_stay_apart(tmp_path):
    """Segments that never overlap may share a labelmap layer in MRML: each must still get only its voxels."""
    samples = np.zeros((NUM_SAMPLES, *SHAPE_KJI), dtype=bool)
    samples[0, 1:3, 2:4, 3:6] = True
    samples[1, 3:5, 5:8, 6:10] = True  # sample 3 stays empty; no voxel is in half of the samples
    p = samples.mean(axis=0)
    truth = samples, p >= 0.5, (p * (1 - p)).astype(np.float32)
    scene = slicer.vtkMRMLScene()
    writer, _ = stream(scene, tmp_path, 2, truth=truth)
    by_name = segment_ids_by_name(writer.segmentation_node)
    masks = read_segment_arrays(writer.segmentation_node, [by_name[n] for n in NAMES])[0]
    path = export.export_segmentation(writer.segmentation_node, tmp_path / "d.seg.nrrd")
    masks_read, _ = read_seg_nrrd_with_sitk(path)
    for name, mask in zip(NAMES, masks):
        np.testing.assert_array_equal(mask, expected_masks(truth)[name], err_msg=name)
        np.testing.assert_array_equal(masks_read[name], expected_masks(truth)[name], err_msg=name)


def test_nothing_outside_the_roi_and_flush_only_when_something_arrived(tmp_path):
    scene = slicer.vtkMRMLScene()
    writer, truth = stream(scene, tmp_path, 2)
    assert not writer.flush()
    by_name = segment_ids_by_name(writer.segmentation_node)
    masks, extent, _ = read_segment_arrays(writer.segmentation_node, list(by_name.values()), full_extent=False)
    i0, j0, k0, i1, j1, k1 = ROI_IJK
    assert i0 <= extent[0] and extent[1] < i1 and j0 <= extent[2] and extent[3] < j1
    assert k0 <= extent[4] and extent[5] < k1
    variance = image_array_kji(writer.variance_node.GetImageData())
    outside = np.ones(SHAPE_KJI, dtype=bool)
    outside[k0:k1, j0:j1, i0:i1] = False
    assert not variance[outside].any() and variance[~outside].any()


def test_display_names_and_reruns_never_overwrite(tmp_path):
    scene = slicer.vtkMRMLScene()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, _ = stream(scene, tmp_path / "a", 2, seed=1)
    second, _ = stream(scene, tmp_path / "b", 2, seed=2)
    assert first.segmentation_node.GetName() == "ct tiny"
    assert first.variance_node.GetName() == "ct tiny variance"
    assert second.segmentation_node.GetName() == "ct tiny 2"
    assert second.variance_node.GetName() == "ct tiny variance 2"
    assert second.segmentation_node.GetID() != first.segmentation_node.GetID()
    ids = [segment_ids_by_name(w.segmentation_node)["sample 1"] for w in (first, second)]
    arrays = [read_segment_arrays(w.segmentation_node, [i])[0][0] for w, i in zip((first, second), ids)]
    assert not np.array_equal(arrays[0], arrays[1])  # different seeds: the first result was left as it was

    node = first.segmentation_node
    display = node.GetDisplayNode()
    by_name = segment_ids_by_name(node)
    assert display.GetSegmentVisibility(by_name["consensus"])
    assert not any(display.GetSegmentVisibility(by_name[f"sample {n}"]) for n in range(1, NUM_SAMPLES + 1))
    colours = np.array([node.GetSegmentation().GetSegment(by_name[name]).GetColor() for name in NAMES])
    assert min_colour_distance(colours) > 0.1
    assert min_colour_distance(np.array(sample_colours(12))) > 0.1


def min_colour_distance(colours):
    distances = np.linalg.norm(colours[:, None] - colours[None], axis=-1)
    return distances[~np.eye(len(colours), dtype=bool)].min()


def test_reference_volume_gives_geometry_and_parent_transform(tmp_path):
    scene = slicer.vtkMRMLScene()
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    volume.SetName("patient ct")
    volume.SetIJKToRASMatrix(vtk_matrix(oblique_ijk_to_ras()))
    image = vtk.vtkImageData()
    image.SetDimensions(*SHAPE_KJI[::-1])
    image.AllocateScalars(vtk.VTK_SHORT, 1)
    volume.SetAndObserveImageData(image)
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    volume.SetAndObserveTransformNodeID(transform.GetID())

    writer, truth = stream(scene, tmp_path, 2, reference_volume_node=volume)
    assert writer.segmentation_node.GetTransformNodeID() == transform.GetID()
    assert writer.variance_node.GetTransformNodeID() == transform.GetID()
    node = writer.segmentation_node
    assert node.GetNodeReference(node.GetReferenceImageGeometryReferenceRole()) is volume
    matrix = vtk.vtkMatrix4x4()
    writer.variance_node.GetIJKToRASMatrix(matrix)
    np.testing.assert_allclose(numpy_matrix(matrix), oblique_ijk_to_ras(), atol=1e-9)
    by_name = segment_ids_by_name(writer.segmentation_node)
    mask = read_segment_arrays(writer.segmentation_node, [by_name["sample 2"]])[0][0]
    np.testing.assert_array_equal(mask, truth[0][1])

    moved = oblique_ijk_to_ras()
    moved[0, 3] += 5.0
    with pytest.raises(ValueError, match="position or orientation differs"):
        StreamedSegmentationWriter(scene, accepted_message(SHAPE_KJI, moved, 2, ROI_IJK), "x", 2, volume)
    with pytest.raises(ValueError, match="IJK size"):
        StreamedSegmentationWriter(scene, accepted_message((7, 11, 14), oblique_ijk_to_ras(), 2, [0, 0, 0, 14, 11, 7]),
                                   "x", 2, volume)


def test_converter_rules_are_registered_once():
    ensure_converter_rules()
    ensure_converter_rules()
    names = [rule.GetClassName() for rule in slicer.vtkSegmentationConverterFactory.GetInstance().GetConverterRules()]
    assert sorted(names) == ["vtkBinaryLabelmapToClosedSurfaceConversionRule",
                             "vtkClosedSurfaceToBinaryLabelmapConversionRule"]


def test_rules_that_cannot_be_listed_are_reported_once_and_never_raise(monkeypatch, caplog):
    """Older VTK builds of Slicer cannot call GetConverterRules() from Python; the writer calls this for every
    run (from a timer in the module): it must neither raise nor log each time."""
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    before = [rule.GetClassName() for rule in factory.GetConverterRules()]

    def not_wrapped():
        raise TypeError("GetConverterRules is not wrapped in this VTK build")

    monkeypatch.setattr(segmentation_writer, "_converter_rules_checked", False)
    monkeypatch.setattr(factory, "GetConverterRules", not_wrapped, raising=False)
    monkeypatch.setattr(slicer, "app", object(), raising=False)  # inside Slicer: its startup registered them
    with caplog.at_level("WARNING", logger="SDSegSlicerLib.segmentation_writer"):
        ensure_converter_rules()
        ensure_converter_rules()
    assert [r.getMessage() for r in caplog.records].count(
        "cannot list the segmentation converter rules from Python (GetConverterRules is not wrapped in this VTK "
        "build); using the ones 3D Slicer registered at startup") == 1 and len(caplog.records) == 1
    monkeypatch.undo()
    assert [rule.GetClassName() for rule in factory.GetConverterRules()] == before


def test_bad_slices_are_clear_errors(tmp_path):
    scene = slicer.vtkMRMLScene()
    writer = StreamedSegmentationWriter(
        scene, accepted_message(SHAPE_KJI, oblique_ijk_to_ras(), 2, ROI_IJK), "ct", NUM_SAMPLES)
    plane = (ROI_IJK[4] - ROI_IJK[1], ROI_IJK[3] - ROI_IJK[0])
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, samples=np.zeros((NUM_SAMPLES + 1, *plane), np.uint8), consensus=np.zeros(plane, np.uint8),
             variance=np.zeros(plane, np.float32))
    with pytest.raises(ValueError, match="'samples' of shape"):
        writer.add_slice({"index": 2, "file": str(wrong)})
    with pytest.raises(ValueError, match=r"slice 6 covering \[2, 1, 6, 11, 9, 7\], not one slice inside the ROI"):
        writer.add_slice({"index": 6, "file": str(wrong)})
    with pytest.raises(ValueError, match="not one slice inside the ROI"):
        writer.add_slice({"index": 2, "file": str(wrong), "lesion": 0, "box_ijk": [2, 1, 2, 11, 9, 4]})
    with pytest.raises(ValueError, match="lesion 2; the job has 1"):
        writer.add_slice({"index": 2, "file": str(wrong), "lesion": 1, "box_ijk": [2, 1, 2, 11, 9, 3]})
    with pytest.raises(ValueError, match="Cannot read the slice file"):
        writer.add_slice({"index": 2, "file": str(tmp_path / "missing.npz")})
    with pytest.raises(ValueError, match="outside the volume"):
        StreamedSegmentationWriter(scene, accepted_message(SHAPE_KJI, oblique_ijk_to_ras(), 2, [0, 0, 0, 14, 11, 7]),
                                   "ct", 2)
    assert writer.slices_received == 0 and not writer.flush()


@pytest.mark.parametrize("slice_axis", [0, 1, 2])
def test_prompt_slices_of_two_lesions_land_in_their_boxes_and_segments(tmp_path, slice_axis):
    """A prompt job: slices arrive outward from each prompted slice (not in index order), each covering its own
    box (crops re-centred and grown), two lesions with their own segments; a slice visited by both lesions keeps
    both (variance: the larger)."""
    rng = np.random.default_rng(slice_axis)
    roi = [0, 0, 0, *SHAPE_KJI[::-1]]
    accepted = accepted_message(SHAPE_KJI, oblique_ijk_to_ras(), slice_axis, roi)
    accepted["prompt"] = {"lesions": [{"point_ijk": [4.0, 5.0, 3.0]}, {"point_ijk": [9.0, 6.0, 3.0]}],
                          "stop_after_empty": 2, "max_slices": None}
    writer = StreamedSegmentationWriter(slicer.vtkMRMLScene(), accepted, "ct", 2)
    truth = {(lesion, n): np.zeros(SHAPE_KJI, bool) for lesion in range(2) for n in range(3)}  # n 0: consensus
    variance = np.zeros(SHAPE_KJI, np.float32)
    dims = SHAPE_KJI[::-1]
    start = dims[slice_axis] // 2
    order = [start, start + 1, start - 1, start + 2, start - 2]
    for count, (lesion, index) in enumerate((lesion, index) for lesion in range(2) for index in order):
        box = [0] * 6
        for axis in range(3):
            if axis == slice_axis:
                box[axis], box[axis + 3] = index, index + 1
            else:
                first = int(rng.integers(0, dims[axis] // 2))
                box[axis], box[axis + 3] = first, int(rng.integers(first + 2, dims[axis] + 1))
        shape = tuple(box[a + 3] - box[a] for a in (2, 1, 0) if a != slice_axis)
        samples = rng.random((2, *shape)) < 0.5
        consensus = samples.mean(axis=0) >= 0.5
        slice_variance = rng.random(shape).astype(np.float32) / 4
        path = tmp_path / f"l{lesion}_{index}.npz"
        np.savez(path, samples=samples.astype(np.uint8), consensus=consensus.astype(np.uint8), variance=slice_variance)
        writer.add_slice({"type": "slice", "index": index, "file": str(path), "lesion": lesion, "box_ijk": box})
        region = tuple(slice(box[a], box[a + 3]) if a != slice_axis else box[a] for a in (2, 1, 0))
        for n, mask in enumerate([consensus, *samples]):
            truth[(lesion, n)][region] = mask
        variance[region] = np.maximum(variance[region], slice_variance)
        if count % 3 == 2:
            writer.flush()
    writer.flush()
    node = writer.segmentation_node
    by_name = segment_ids_by_name(node)
    assert list(by_name) == writer.segment_names(0) + writer.segment_names(1) == [
        "lesion 1 consensus", "lesion 1 sample 1", "lesion 1 sample 2",
        "lesion 2 consensus", "lesion 2 sample 1", "lesion 2 sample 2"]
    for lesion in range(2):
        names = writer.segment_names(lesion)
        masks = read_segment_arrays(node, [by_name[name] for name in names])[0]
        for n, (name, mask) in enumerate(zip(names, masks)):
            np.testing.assert_array_equal(mask, truth[(lesion, n)], err_msg=name)
    np.testing.assert_array_equal(image_array_kji(writer.variance_node.GetImageData()), variance)
    assert json.loads(node.GetAttribute(PROMPT_ATTRIBUTE)) == accepted["prompt"]
    assert node.GetAttribute(SLICE_AXIS_ATTRIBUTE) == str(slice_axis)
