"""Exports of SDSegSlicerLib on real MRML (slicer-core), read back by independent readers: .seg.nrrd of selected
segments (slicerio), NIfTI labelmap (SimpleITK), DICOM SEG (pydicom) referencing a DICOM series; statistics
(JSON / CSV) and the PNG preview."""

from __future__ import annotations

import csv
import json
import re

import matplotlib.image
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import slicer
from slicerlib_testing import (RAS_TO_LPS, SPACING, accepted_message, oblique_ijk_to_ras, read_seg_nrrd_with_slicerio,
                               rotation, sitk_ijk_to_lps, synthetic_result, write_ct_series, write_slice_messages)

from SDSegSlicerLib import export, preview, stats
from SDSegSlicerLib.segmentation_writer import StreamedSegmentationWriter, sample_colours, segment_ids_by_name

SHAPE_KJI = (6, 10, 12)
ROI_IJK = [1, 2, 0, 11, 9, 5]


def make_result(scene, folder, truth, ijk_to_ras, slice_axis=2, roi_ijk=ROI_IJK):
    samples = truth[0]
    writer = StreamedSegmentationWriter(
        scene, accepted_message(samples.shape[1:], ijk_to_ras, slice_axis, roi_ijk), "ct", len(samples))
    for message in write_slice_messages(folder, truth, roi_ijk, slice_axis):
        writer.add_slice(message)
    writer.flush()
    return writer


def disjoint_truth():
    """Three samples: two disjoint boxes and an empty one; no consensus (no voxel is in half of them)."""
    samples = np.zeros((3, *SHAPE_KJI), dtype=bool)
    samples[0, 1:3, 3:6, 2:5] = True
    samples[1, 2:5, 6:9, 6:10] = True
    p = samples.mean(axis=0)
    return samples, p >= 0.5, (p * (1 - p)).astype(np.float32)


def test_seg_nrrd_of_selected_segments_keeps_the_full_geometry(tmp_path):
    scene = slicer.vtkMRMLScene()
    truth = synthetic_result(SHAPE_KJI, ROI_IJK, 3)
    writer = make_result(scene, tmp_path, truth, oblique_ijk_to_ras())
    by_name = segment_ids_by_name(writer.segmentation_node)
    nodes_before = scene.GetNumberOfNodes()
    path = export.export_segmentation(writer.segmentation_node, tmp_path / "out" / "two.seg.nrrd",
                                      [by_name["sample 3"], by_name["consensus"]])
    assert scene.GetNumberOfNodes() == nodes_before  # no temporary node left behind
    masks, ijk_to_lps = read_seg_nrrd_with_slicerio(path)
    assert list(masks) == ["sample 3", "consensus"]
    np.testing.assert_allclose(ijk_to_lps, RAS_TO_LPS @ oblique_ijk_to_ras(), atol=1e-6)
    assert masks["sample 3"].shape == SHAPE_KJI
    np.testing.assert_array_equal(masks["sample 3"], truth[0][2])
    np.testing.assert_array_equal(masks["consensus"], truth[1])
    with pytest.raises(ValueError, match="must end with"):
        export.export_segmentation(writer.segmentation_node, tmp_path / "x.png")
    with pytest.raises(ValueError, match="are not in"):
        export.export_segmentation(writer.segmentation_node, tmp_path / "x.seg.nrrd", ["nope"])


def test_nifti_labelmap_labels_follow_the_segment_order(tmp_path):
    scene = slicer.vtkMRMLScene()
    truth = disjoint_truth()
    writer = make_result(scene, tmp_path, truth, oblique_ijk_to_ras(flip_axis=2), roi_ijk=[0, 0, 0, 12, 10, 6])
    by_name = segment_ids_by_name(writer.segmentation_node)
    labels = export.export_nifti_labelmap(writer.segmentation_node, tmp_path / "labels.nii.gz",
                                          [by_name["sample 2"], by_name["sample 1"]])
    assert labels == {1: "sample 2", 2: "sample 1"}
    image = sitk.ReadImage(str(tmp_path / "labels.nii.gz"))
    array = sitk.GetArrayFromImage(image)
    expected = np.zeros(SHAPE_KJI, dtype=np.uint8)
    expected[truth[0][1]] = 1
    expected[truth[0][0]] = 2
    np.testing.assert_array_equal(array, expected)
    np.testing.assert_allclose(sitk_ijk_to_lps(image), RAS_TO_LPS @ oblique_ijk_to_ras(flip_axis=2), atol=1e-4)

    overlapping = make_result(scene, tmp_path, synthetic_result(SHAPE_KJI, ROI_IJK, 3), oblique_ijk_to_ras())
    with pytest.raises(ValueError, match="overlap"):
        export.export_nifti_labelmap(overlapping.segmentation_node, tmp_path / "all.nii.gz")


def test_volume_export_raw_or_compressed_keeps_voxels_and_geometry(tmp_path):
    scene = slicer.vtkMRMLScene()
    truth = synthetic_result(SHAPE_KJI, ROI_IJK, 2, seed=4)
    variance = make_result(scene, tmp_path, truth, oblique_ijk_to_ras(flip_axis=0)).variance_node
    for name, compress, encoding in (("raw.nrrd", False, b"encoding: raw"), ("gz.nrrd", True, b"encoding: gzip"),
                                     ("v.nii.gz", True, None)):
        path = export.export_volume(variance, tmp_path / name, compress=compress)
        if encoding:
            assert encoding in open(path, "rb").read(1000)
        image = sitk.ReadImage(path)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(image), truth[2])
        np.testing.assert_allclose(sitk_ijk_to_lps(image), RAS_TO_LPS @ oblique_ijk_to_ras(flip_axis=0), atol=1e-4)
    with pytest.raises(ValueError, match="must end with"):
        export.export_volume(variance, tmp_path / "v.png")


# --- DICOM SEG ------------------------------------------------------------------------------------------------------

def test_dicom_seg_references_the_source_series_frame_by_frame(tmp_path):
    shape_kji = (5, 9, 8)
    lps = np.eye(4)
    lps[:3, :3] = rotation((0.2, 1.0, 0.1), 20.0) @ np.diag(SPACING)
    lps[:3, 3] = (-40.0, 12.0, 7.5)
    series = write_ct_series(tmp_path / "series", np.arange(np.prod(shape_kji)).reshape(shape_kji), lps)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(series)))
    loaded = reader.Execute()  # what a user would load: sorted along the slice normal
    ijk_to_ras = RAS_TO_LPS @ sitk_ijk_to_lps(loaded)

    scene = slicer.vtkMRMLScene()
    roi = [1, 1, 0, 7, 8, 5]
    truth = synthetic_result(shape_kji, roi, 2, seed=3)
    writer = make_result(scene, tmp_path, truth, ijk_to_ras, roi_ijk=roi)
    path = export.export_dicom_seg(writer.segmentation_node, tmp_path / "seg.dcm", source_dicom=series)

    seg = pydicom.dcmread(path)
    assert seg.Modality == "SEG" and seg.SegmentationType == "BINARY"
    labels = {item.SegmentNumber: item.SegmentLabel for item in seg.SegmentSequence}
    assert labels == {1: "consensus", 2: "sample 1", 3: "sample 2"}
    expected = {"consensus": truth[1], "sample 1": truth[0][0], "sample 2": truth[0][1]}
    sources = {}
    for file in series.iterdir():
        source = pydicom.dcmread(file)
        k = np.linalg.solve(lps[:3, :3], np.array(source.ImagePositionPatient, float) - lps[:3, 3])[2]
        sources[source.SOPInstanceUID] = int(round(k))
    frames = seg.pixel_array
    assert frames.shape == (3 * shape_kji[0], shape_kji[1], shape_kji[2])
    seen = set()
    for frame, group in zip(frames, seg.PerFrameFunctionalGroupsSequence):
        number = group.SegmentIdentificationSequence[0].ReferencedSegmentNumber
        uid = group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        k = sources[uid]
        np.testing.assert_array_equal(frame.astype(bool), expected[labels[number]][k], err_msg=f"{number} {k}")
        seen.add((number, k))
    assert len(seen) == 3 * shape_kji[0]

    other = lps.copy()
    other[:3, 2] *= 1.5  # another slice spacing: not the grid of the segmentation
    wrong = write_ct_series(tmp_path / "other", np.zeros(shape_kji), other)
    with pytest.raises(ValueError, match="does not match the source DICOM series"):
        export.export_dicom_seg(writer.segmentation_node, tmp_path / "bad.dcm", source_dicom=wrong)
    with pytest.raises(ValueError, match="needs the DICOM series"):
        export.export_dicom_seg(writer.segmentation_node, tmp_path / "none.dcm")


# --- statistics and preview -----------------------------------------------------------------------------------------

def test_dice_and_voxel_volume_by_hand():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    a[0, :4] = True
    b[0, 2:] = True
    b[1, 0] = True
    assert stats.dice(a, b) == pytest.approx(2 * 2 / (4 + 3))
    assert stats.dice(a[:0], b[:0]) == 1.0
    np.testing.assert_allclose(stats.pairwise_dice(np.array([a, b, a])),
                               [[1, 4 / 7, 1], [4 / 7, 1, 4 / 7], [1, 4 / 7, 1]])
    assert stats.voxel_volume_ml(oblique_ijk_to_ras()) == pytest.approx(np.prod(SPACING) / 1000)


def test_statistics_of_a_result_match_the_samples(tmp_path):
    scene = slicer.vtkMRMLScene()
    samples, consensus, variance = truth = synthetic_result(SHAPE_KJI, ROI_IJK, 4, seed=5)
    writer = make_result(scene, tmp_path, truth, oblique_ijk_to_ras())
    result = stats.segmentation_statistics(writer.segmentation_node, writer.variance_node)
    voxel_ml = np.prod(SPACING) / 1000
    by_name = {segment["segment"]: segment for segment in result["segments"]}
    assert list(by_name) == ["consensus", "sample 1", "sample 2", "sample 3", "sample 4"]
    assert by_name["consensus"]["volume_ml"] == pytest.approx(consensus.sum() * voxel_ml)
    for n in range(4):
        assert by_name[f"sample {n + 1}"]["volume_ml"] == pytest.approx(samples[n].sum() * voxel_ml)
        assert by_name[f"sample {n + 1}"]["variance_max"] == pytest.approx(variance[samples[n]].max())
    overlap = (samples[:, None] & samples[None]).sum(axis=(2, 3, 4))
    sizes = samples.sum(axis=(1, 2, 3))
    (lesion,) = result["lesions"]
    np.testing.assert_allclose(lesion["dice_between_samples"], 2 * overlap / (sizes[:, None] + sizes[None]))
    assert lesion["volume_ml"] == pytest.approx(consensus.sum() * voxel_ml)
    assert lesion["slices"] == int(consensus.any(axis=(1, 2)).sum())  # slices along K (the default axis)
    np.testing.assert_allclose(lesion["sample_volume_ml"], sizes * voxel_ml)
    for key in ("variance_mean", "variance_max"):
        assert result[key] == lesion[key]
    assert result["variance_mean"] == pytest.approx(variance[samples.any(axis=0)].mean())
    assert result["variance_max"] == pytest.approx(variance.max())

    stats.write_statistics(result, tmp_path / "s.json", tmp_path / "s.csv", extra={"state": "done"})
    text = (tmp_path / "s.json").read_text()
    saved = json.loads(text)
    assert saved["state"] == "done"
    np.testing.assert_allclose(saved["lesions"][0]["dice_between_samples"], lesion["dice_between_samples"], rtol=1e-5)
    assert saved["variance_mean"] == float(f"{result['variance_mean']:.6g}")  # 6 significant digits, no more
    for number in re.findall(r"\d+\.\d+", text + (tmp_path / "s.csv").read_text()):  # e.g. 0.0102504, 13.1992
        assert len(number.replace(".", "").lstrip("0")) <= 6, number
    with open(tmp_path / "s.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert [row["segment"] for row in rows] == list(by_name)
    assert float(rows[2]["dice_with_sample_3"]) == pytest.approx(lesion["dice_between_samples"][1][2])
    assert float(rows[1]["volume_ml"]) == pytest.approx(samples[0].sum() * voxel_ml)


def test_each_lesions_variance_figures_are_its_own_where_the_lesions_overlap(tmp_path):
    """Two lesions prompted in one run, on the same crop: the variance volume keeps the larger of the two there,
    but each lesion's figures are those of its own samples, as if it had been prompted alone."""
    accepted = accepted_message(SHAPE_KJI, oblique_ijk_to_ras(), 2, [0, 0, 0, *SHAPE_KJI[::-1]])
    accepted["prompt"] = {"lesions": [{"point_ijk": [5.0, 4.0, 2.0]}, {"point_ijk": [6.0, 5.0, 2.0]}],
                          "stop_after_empty": 2, "max_slices": None}
    writer = StreamedSegmentationWriter(slicer.vtkMRMLScene(), accepted, "ct", 4)
    rng = np.random.default_rng(2)
    own = []
    for lesion, fraction in enumerate((0.2, 0.5)):
        samples = rng.random((4, *SHAPE_KJI[1:])) < fraction
        p = samples.mean(axis=0)
        variance = (p * (1 - p)).astype(np.float32)
        path = tmp_path / f"lesion{lesion}.npz"
        np.savez(path, samples=samples.astype(np.uint8), consensus=(p >= 0.5).astype(np.uint8), variance=variance)
        writer.add_slice({"type": "slice", "index": 2, "file": str(path), "lesion": lesion,
                          "box_ijk": [0, 0, 2, SHAPE_KJI[2], SHAPE_KJI[1], 3]})
        own.append((samples, variance))
    writer.flush()
    result = stats.segmentation_statistics(writer.segmentation_node, writer.variance_node)
    rows = {row["segment"]: row for row in result["segments"]}
    for number, (samples, variance) in enumerate(own, start=1):
        lesion = result["lesions"][number - 1]
        assert lesion["variance_mean"] == pytest.approx(variance[samples.any(axis=0)].mean())
        assert lesion["variance_max"] == pytest.approx(variance.max())
        for n in range(4):
            row = rows[f"lesion {number} sample {n + 1}"]
            assert row["variance_mean"] == pytest.approx(variance[samples[n]].mean())
    shown = np.maximum(own[0][1], own[1][1])  # the overlay: the larger variance where the lesions overlap
    assert result["variance_max"] == pytest.approx(shown.max())
    assert (shown > own[0][1]).any()  # so lesion 1's figures would differ if taken from the overlay


def test_coherence_of_3d_samples_exceeds_that_of_per_slice_draws():
    """Two samples that are each one object (A: a cylinder, B: another) have consecutive slices that agree within a
    sample (Dice 1) but not across samples; independent per-slice draws agree about as much within as across."""
    a, b = np.zeros((2, 6, 10, 10), bool)
    a[1:5, 2:6, 2:6] = True
    b[1:5, 4:8, 4:8] = True
    coherent = stats.slice_coherence(np.array([a, b]), 0)
    assert coherent["within_samples"] == 1.0
    assert coherent["across_samples"] == pytest.approx(2 * 4 / 32)
    rng = np.random.default_rng(0)
    draws = rng.random((4, 6, 10, 10)) < 0.5
    random = stats.slice_coherence(draws, 0)
    assert abs(random["within_samples"] - random["across_samples"]) < 0.02
    assert stats.slice_coherence(np.array([a]), 0) == {"within_samples": 1.0, "across_samples": None}
    assert stats.slice_coherence(np.zeros((2, 3, 4, 4), bool), 0) == {"within_samples": None, "across_samples": None}


def test_preview_draws_every_sample_and_the_variance(tmp_path):
    scene = slicer.vtkMRMLScene()
    samples = np.zeros((3, 8, 40, 40), dtype=bool)
    k, j, i = np.mgrid[0:8, 0:40, 0:40]
    for n, radius in enumerate((6, 8, 10)):
        samples[n, 2:6] = ((i - 20) ** 2 + (j - 20) ** 2 < radius ** 2)[2:6]
    p = samples.mean(axis=0)
    writer = make_result(scene, tmp_path, (samples, p >= 0.5, (p * (1 - p)).astype(np.float32)),
                         oblique_ijk_to_ras(), roi_ijk=[0, 0, 0, 40, 40, 8])
    image = np.random.default_rng(0).normal(size=samples.shape[1:])
    path = preview.write_preview(tmp_path / "p.png", writer.segmentation_node, writer.variance_node, 2, image)
    pixels = matplotlib.image.imread(path)[..., :3]
    for colour in sample_colours(3):
        assert np.linalg.norm(pixels - np.array(colour), axis=-1).min() < 0.08, colour
    assert preview.preview_slices(samples.any(axis=0), 0, 4) == [2, 3, 4, 5]
    largest = np.zeros_like(samples[0])
    largest[4, :3] = True  # the consensus' largest slice: 4
    assert preview.preview_slices(samples.any(axis=0), 0, 2, largest) == [3, 4]  # it and its nearest neighbour
    assert preview.preview_slices(samples.any(axis=0), 0, 3, largest) == [3, 4, 5]
    assert preview.preview_slices(np.zeros((5, 2, 2), bool), 0, 3) == [1, 2, 3]
