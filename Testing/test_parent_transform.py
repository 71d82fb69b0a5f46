"""Results of a volume under a (translated, or rotated) parent transform, on real MRML (slicer-core): the writer
stores the segments in the volume's own frame and makes the segmentation observe the volume's transform, so every
way back to voxels (statistics, .seg.nrrd / NIfTI / DICOM SEG exports, accepting a sample) must read them in that
frame, not apply the transform a second time. Each is checked voxel by voxel against the streamed truth, the files
with independent readers (slicerio, SimpleITK, pydicom)."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import slicer
import vtk
from slicerlib_testing import (RAS_TO_LPS, SPACING, accepted_message, read_seg_nrrd_with_slicerio, rotation,
                               sitk_ijk_to_lps, synthetic_result, write_ct_series, write_slice_messages)

from SDSegSlicerLib import export, module_logic, stats
from SDSegSlicerLib.segmentation_writer import (StreamedSegmentationWriter, read_segment_arrays, segment_ids_by_name,
                                                vtk_matrix)

SHAPE_KJI = (5, 9, 8)
ROI_IJK = [1, 1, 0, 7, 8, 5]
SAMPLES = 3


def translation(x, y, z):
    matrix = np.eye(4)
    matrix[:3, 3] = (x, y, z)
    return matrix


def rotated_and_translated():
    matrix = translation(12.0, -6.0, 3.5)
    matrix[:3, :3] = rotation((0.3, 1.0, 0.4), 35.0)
    return matrix


PARENT_TRANSFORMS = {"translated 7/-4 mm": translation(7.0, -4.0, 0.0), "rotated": rotated_and_translated()}


@pytest.fixture(params=list(PARENT_TRANSFORMS), ids=list(PARENT_TRANSFORMS))
def result(request, tmp_path):
    """A DICOM series loaded as a volume under a parent transform, and a streamed result on it:
    (scene, volume, writer, truth, (series folder, its IJK-to-LPS))."""
    lps = np.eye(4)
    lps[:3, :3] = rotation((0.2, 1.0, 0.1), 20.0) @ np.diag(SPACING)
    lps[:3, 3] = (-40.0, 12.0, 7.5)
    series = write_ct_series(tmp_path / "series", np.zeros(SHAPE_KJI), lps)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(series)))
    ijk_to_ras = RAS_TO_LPS @ sitk_ijk_to_lps(reader.Execute())

    scene = slicer.vtkMRMLScene()
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "ct")
    volume.SetIJKToRASMatrix(vtk_matrix(ijk_to_ras))
    image = vtk.vtkImageData()
    image.SetDimensions(*SHAPE_KJI[::-1])
    image.AllocateScalars(vtk.VTK_SHORT, 1)
    volume.SetAndObserveImageData(image)
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "moved")
    transform.SetMatrixTransformToParent(vtk_matrix(PARENT_TRANSFORMS[request.param]))
    volume.SetAndObserveTransformNodeID(transform.GetID())

    truth = synthetic_result(SHAPE_KJI, ROI_IJK, SAMPLES, seed=4)
    writer = StreamedSegmentationWriter(scene, accepted_message(SHAPE_KJI, ijk_to_ras, 2, ROI_IJK), "ct", SAMPLES,
                                        volume)
    for message in write_slice_messages(tmp_path, truth, ROI_IJK, 2):
        writer.add_slice(message)
    writer.flush()
    assert writer.segmentation_node.GetTransformNodeID() == transform.GetID()
    return scene, volume, writer, truth, (series, lps)


def expected(truth) -> dict[str, np.ndarray]:
    samples, consensus, _ = truth
    return {"consensus": consensus, **{f"sample {n + 1}": samples[n] for n in range(len(samples))}}


def test_segment_arrays_and_statistics(result):
    _, _, writer, truth, _ = result
    by_name = segment_ids_by_name(writer.segmentation_node)
    masks = read_segment_arrays(writer.segmentation_node, [by_name[name] for name in expected(truth)])[0]
    for (name, truth_mask), mask in zip(expected(truth).items(), masks):
        np.testing.assert_array_equal(mask, truth_mask, err_msg=name)
    result_stats = stats.segmentation_statistics(writer.segmentation_node, writer.variance_node)
    voxels = {segment["segment"]: segment["voxels"] for segment in result_stats["segments"]}
    assert voxels == {name: int(mask.sum()) for name, mask in expected(truth).items()}
    assert result_stats["variance_mean"] == pytest.approx(truth[2][truth[0].any(axis=0)].mean())
    assert result_stats["lesions"][0]["slices"] == int(truth[1].any(axis=(1, 2)).sum())


def test_seg_nrrd_and_nifti_exports(result, tmp_path):
    _, volume, writer, truth, _ = result
    masks, ijk_to_lps = read_seg_nrrd_with_slicerio(export.export_segmentation(writer.segmentation_node,
                                                                                tmp_path / "r.seg.nrrd"))
    matrix = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(matrix)
    local_ijk_to_lps = RAS_TO_LPS @ np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
    np.testing.assert_allclose(ijk_to_lps, local_ijk_to_lps, atol=1e-6)  # the volume's own frame, like its file
    for name, truth_mask in expected(truth).items():
        np.testing.assert_array_equal(masks[name], truth_mask, err_msg=name)
    consensus_id = segment_ids_by_name(writer.segmentation_node)["consensus"]
    export.export_nifti_labelmap(writer.segmentation_node, tmp_path / "c.nii.gz", [consensus_id])
    labelmap = sitk.ReadImage(str(tmp_path / "c.nii.gz"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(labelmap) == 1, truth[1])
    np.testing.assert_allclose(sitk_ijk_to_lps(labelmap), local_ijk_to_lps, atol=1e-4)


def test_dicom_seg_export(result, tmp_path):
    _, _, writer, truth, (series, lps) = result
    seg = pydicom.dcmread(export.export_dicom_seg(writer.segmentation_node, tmp_path / "seg.dcm",
                                                  source_dicom=series))
    labels = {item.SegmentNumber: item.SegmentLabel for item in seg.SegmentSequence}
    slice_of = {}
    for file in series.iterdir():
        source = pydicom.dcmread(file)
        k = np.linalg.solve(lps[:3, :3], np.array(source.ImagePositionPatient, float) - lps[:3, 3])[2]
        slice_of[source.SOPInstanceUID] = int(round(k))
    frames_seen = 0
    for frame, group in zip(seg.pixel_array, seg.PerFrameFunctionalGroupsSequence):
        name = labels[group.SegmentIdentificationSequence[0].ReferencedSegmentNumber]
        k = slice_of[group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID]
        np.testing.assert_array_equal(frame.astype(bool), expected(truth)[name][k], err_msg=f"{name} slice {k}")
        frames_seen += 1
    assert frames_seen == len(labels) * SHAPE_KJI[0] == (SAMPLES + 1) * SHAPE_KJI[0]


def test_accepting_a_sample_copies_its_voxels(result, tmp_path):
    _, _, writer, truth, _ = result
    node = writer.segmentation_node
    accepted_id = module_logic.accept_sample(node, segment_ids_by_name(node)["sample 2"])
    np.testing.assert_array_equal(read_segment_arrays(node, [accepted_id])[0][0], truth[0][1])
    masks, _ = read_seg_nrrd_with_slicerio(export.export_segmentation(node, tmp_path / "a.seg.nrrd", [accepted_id]))
    np.testing.assert_array_equal(masks["accepted"], truth[0][1])
