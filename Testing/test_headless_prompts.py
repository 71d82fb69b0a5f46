"""`sdseg-slicer segment` with prompts, end to end through a REAL worker subprocess and real MRML (slicer-core), read
back with slicerio: points in mm (RAS) and in voxels on an oblique, mirrored, anisotropic volume, several lesions,
a box, a point where there is no lesion, and a DICOM series. The threshold model (normalised intensity > 0, crops
of its own input size) segments exactly the bright voxels, so where every mask voxel lands is checked exactly."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pydicom
import pytest
from slicerlib_testing import (BRIGHT_3D_MODEL_NAME, BRIGHT_MODEL_NAME, CLI_TIMEOUT_S, RAS_TO_LPS, oblique_ijk_to_ras,
                               read_seg_nrrd_with_slicerio, rotation, write_ct_series, write_volume_file)

from SDSegSlicerLib.prompts import (LENGTH_BOUND, LENGTH_BOUND_HINT, NO_LESION, NO_LESION_AT_POINT_HINT,
                                    OFF_THE_CLICKED_SLICE, WHOLE_VOLUME_WARNING)

SHAPE_KJI = (18, 30, 34)  # every axis at least the crop size: crops are never resized


def blobs():
    """Two bright ellipsoids: lesion A (slices 3..7) and the smaller lesion B (slices 8..10), apart in-plane."""
    k, j, i = np.mgrid[0:SHAPE_KJI[0], 0:SHAPE_KJI[1], 0:SHAPE_KJI[2]]
    a = ((i - 10) / 4.5) ** 2 + ((j - 12) / 3.5) ** 2 + ((k - 5) / 2.4) ** 2 < 1.0
    b = ((i - 25) / 3.0) ** 2 + ((j - 20) / 4.0) ** 2 + ((k - 9) / 1.6) ** 2 < 1.0
    return a, b


def volume_with_blobs(path, ijk_to_ras):
    a, b = blobs()
    voxels = np.random.default_rng(3).normal(30.0, 4.0, SHAPE_KJI) + 120.0 * (a | b)
    return write_volume_file(path, voxels.astype(np.float32), ijk_to_ras)


def segment(worker_env, volume, output, *options):
    """At the model's crop scale (--scale 1): crops of its input size, never resized (test_scale_search: the search)."""
    result = subprocess.run(
        [sys.executable, "-m", "SDSegSlicerLib.headless", "segment", str(volume), "-o", str(output), "--model",
         BRIGHT_MODEL_NAME, "--samples", "2", "--device", "cpu", "--scale", "1", *map(str, options)],
        env=worker_env, capture_output=True, text=True, timeout=CLI_TIMEOUT_S)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    summary = json.loads(output.with_name(output.name.replace(".seg.nrrd", "_summary.json")).read_text())
    return result.stderr, summary


def ras_of(ijk_to_ras, ijk):
    return ",".join(f"{v:.4f}" for v in (ijk_to_ras @ [*ijk, 1.0])[:3])


def test_points_in_mm_and_in_voxels_give_one_set_of_segments_per_lesion(tmp_path, worker_env):
    ijk_to_ras = oblique_ijk_to_ras()
    volume = volume_with_blobs(tmp_path / "two.nrrd", ijk_to_ras)
    output = tmp_path / "two.seg.nrrd"
    stderr, summary = segment(worker_env, volume, output, "--point-ijk", "25,20,9", "--point",
                              ras_of(ijk_to_ras, (10, 12, 5)))  # lesion 1: B, lesion 2: A (the order given)
    a, b = blobs()
    masks, ijk_to_lps = read_seg_nrrd_with_slicerio(output)
    np.testing.assert_allclose(ijk_to_lps, RAS_TO_LPS @ ijk_to_ras, atol=1e-5)
    assert list(masks) == ["lesion 1 consensus", "lesion 1 sample 1", "lesion 1 sample 2",
                           "lesion 2 consensus", "lesion 2 sample 1", "lesion 2 sample 2"]
    for name, mask in masks.items():
        np.testing.assert_array_equal(mask, b if name.startswith("lesion 1") else a, err_msg=name)
    assert summary["mode"] == "prompt" and summary["prompt"]["lesions"][0] == {"point_ijk": [25.0, 20.0, 9.0]}
    np.testing.assert_allclose(summary["prompt"]["lesions"][1]["point_ijk"], [10, 12, 5], atol=1e-3)
    lesions = summary["lesions"]
    assert [lesion["slices"] for lesion in lesions] == [3, 5]
    voxel_ml = abs(np.linalg.det(ijk_to_ras[:3, :3])) / 1000
    assert lesions[1]["volume_ml"] == pytest.approx(a.sum() * voxel_ml, rel=1e-5)  # 6 significant digits
    assert lesions[0]["sample_volume_ml"] == pytest.approx([b.sum() * voxel_ml] * 2, rel=1e-5)
    assert lesions[1]["coherence"]["within_samples"] == lesions[1]["coherence"]["across_samples"]  # equal samples
    assert f"lesion 2: {a.sum() * voxel_ml:.2f} ml on 5 slice(s)" in stderr
    assert "Done: 16 slices" in stderr  # each lesion: its slices, then 2 empty ones each way (9 + 7)


@pytest.mark.parametrize("superior_axis", [0, 1])
def test_points_follow_the_slice_axis_of_any_orientation(tmp_path, worker_env, superior_axis):
    """Stored with IJK axis 0 or 1 closest to superior: slices (and propagation) run along that axis."""
    ijk_to_ras = oblique_ijk_to_ras(superior_axis=superior_axis)
    a, b = blobs()
    voxels = np.random.default_rng(4).normal(30.0, 4.0, SHAPE_KJI) + 120.0 * a
    volume = write_volume_file(tmp_path / "axis.nrrd", voxels.astype(np.float32), ijk_to_ras)
    output = tmp_path / "axis.seg.nrrd"
    _, summary = segment(worker_env, volume, output, "--point-ijk", "10,12,5")
    masks, _ = read_seg_nrrd_with_slicerio(output)
    np.testing.assert_array_equal(masks["consensus"], a)
    assert summary["slice_axis"] == superior_axis
    assert summary["lesions"][0]["slices"] == int(a.any(axis=tuple(x for x in range(3) if x != 2 - superior_axis))
                                                  .sum())


def test_the_summary_says_whether_samples_are_3d_hypotheses(tmp_path, worker_env):
    ijk_to_ras = oblique_ijk_to_ras()
    volume = volume_with_blobs(tmp_path / "two.nrrd", ijk_to_ras)
    a, _ = blobs()
    for model, expected in ((BRIGHT_MODEL_NAME, "per-slice draws"), (BRIGHT_3D_MODEL_NAME, "3D hypotheses")):
        output = tmp_path / f"{model}.seg.nrrd"
        _, summary = segment(worker_env, volume, output, "--point-ijk", "10,12,5", "--model", model)
        assert summary["samples_are"].startswith(expected), summary["samples_are"]
        assert summary["warnings"] == []
        masks, _ = read_seg_nrrd_with_slicerio(output)
        for name, mask in masks.items():
            np.testing.assert_array_equal(mask, a, err_msg=f"{model}: {name}")
    _, summary = segment(worker_env, volume, tmp_path / "whole.seg.nrrd", "--model", BRIGHT_3D_MODEL_NAME)
    assert summary["mode"] == "whole volume" and summary["samples_are"].startswith("per-slice draws")
    assert summary["warnings"] == [WHOLE_VOLUME_WARNING]  # as on the terminal, for whoever reads only the files


def test_lesion_lines_say_what_to_do_where_nothing_was_found_or_the_length_bound_stopped():
    from SDSegSlicerLib.prompts import lesion_lines

    statistics = {"lesions": [{"slices": 0}, {"slices": 0}, {"slices": 3, "volume_ml": 1.5}]}
    prompt = {"lesions": [{"point_ijk": [1, 2, 3]}, {"box_ijk": [0, 0, 0, 4, 4, 4]}, {"point_ijk": [5, 5, 5]}]}
    stops = [{}, {}, {"stops": {"forward": "length", "backward": "empty"}}]
    assert lesion_lines(statistics, prompt, stops) == [
        f"lesion 1: {NO_LESION} ({NO_LESION_AT_POINT_HINT})", "lesion 2: no lesion found in the box",
        f"lesion 3: 1.50 ml on 3 slice(s); {LENGTH_BOUND} (forward): {LENGTH_BOUND_HINT}"]


def test_a_click_beside_a_lesion_that_only_neighbouring_slices_show_is_flagged(tmp_path, worker_env):
    """A click on slice 2, right above lesion A (slices 3..7): the propagation finds A on the next slices, and the
    line and the summary say the clicked slice had nothing (what was found may not be the clicked lesion); a click
    on A's own slice is not flagged."""
    volume = volume_with_blobs(tmp_path / "two.nrrd", oblique_ijk_to_ras())
    a, _ = blobs()
    stderr, summary = segment(worker_env, volume, tmp_path / "above.seg.nrrd", "--point-ijk", "10,12,2")
    masks, _ = read_seg_nrrd_with_slicerio(tmp_path / "above.seg.nrrd")
    np.testing.assert_array_equal(masks["consensus"], a)
    assert summary["lesions"][0]["found_on_clicked_slice"] is False
    assert f"lesion 1: {summary['lesions'][0]['volume_ml']:.2f} ml on 5 slice(s); {OFF_THE_CLICKED_SLICE}\n" in stderr
    stderr, summary = segment(worker_env, volume, tmp_path / "on.seg.nrrd", "--point-ijk", "10,12,5")
    assert summary["lesions"][0]["found_on_clicked_slice"] is True and OFF_THE_CLICKED_SLICE not in stderr


def test_a_point_without_lesion_says_so_and_gives_empty_segments(tmp_path, worker_env):
    volume = volume_with_blobs(tmp_path / "healthy.nrrd", oblique_ijk_to_ras())
    output = tmp_path / "healthy.seg.nrrd"
    stderr, summary = segment(worker_env, volume, output, "--point-ijk", "28,4,2")
    assert f"lesion 1: {NO_LESION} ({NO_LESION_AT_POINT_HINT})\n" in stderr  # and what to do if there is one
    masks, _ = read_seg_nrrd_with_slicerio(output)
    assert not any(mask.any() for mask in masks.values())
    assert summary["lesions"][0]["slices"] == 0 and summary["slices_done"] == 3  # its slice and one each way


def test_a_lesion_stopped_by_its_models_length_bound_says_so(tmp_path, worker_env, tiny_models_dir):
    """A bright rod through all 18 slices and a model whose length rule allows 1 diameter each way: its line says
    the bound stopped it, both ways, and what to do; the summary's stops say "length"."""
    from sdseg.checkpoint import load_model, save_model

    model = load_model(tiny_models_dir / BRIGHT_MODEL_NAME)
    model.config["propagation"] = {"length_rule": {"max_diameters": 1.0}}
    save_model(model, tmp_path / "bounded")
    k, j, i = np.mgrid[0:SHAPE_KJI[0], 0:SHAPE_KJI[1], 0:SHAPE_KJI[2]]
    rod = ((i - 17) / 4.0) ** 2 + ((j - 15) / 4.0) ** 2 < 1.0
    volume = write_volume_file(tmp_path / "rod.nrrd", np.where(rod, 150.0, 20.0).astype(np.float32),
                               np.diag([1.0, 1.0, 2.0, 1.0]))
    stderr, summary = segment(worker_env, volume, tmp_path / "rod.seg.nrrd", "--point-ijk", "17,15,9", "--model",
                              tmp_path / "bounded")
    assert summary["lesions"][0]["stops"] == {"forward": "length", "backward": "length"}
    assert f"; {LENGTH_BOUND} (backward, forward): {LENGTH_BOUND_HINT}" in stderr, stderr
    assert summary["lesions"][0]["slices"] < SHAPE_KJI[0]


def test_a_box_keeps_to_the_box(tmp_path, worker_env):
    """--roi alone is a box prompt: slices and masks stay inside it (lesion A cut by the box's sides and ends)."""
    volume = volume_with_blobs(tmp_path / "boxed.nrrd", oblique_ijk_to_ras())
    output = tmp_path / "boxed.seg.nrrd"
    box = [8, 6, 4, 20, 18, 7]  # I 8..19, J 6..17, K 4..6: at most the crop size / 1.2 (no resizing)
    stderr, summary = segment(worker_env, volume, output, "--roi", ",".join(map(str, box)))
    a, b = blobs()
    inside = np.zeros(SHAPE_KJI, bool)
    inside[4:7, 6:18, 8:20] = True
    masks, _ = read_seg_nrrd_with_slicerio(output)
    np.testing.assert_array_equal(masks["consensus"], (a | b) & inside)
    assert summary["prompt"]["lesions"] == [{"box_ijk": box}] and summary["roi_ijk"] == [0, 0, 0, 34, 30, 18]
    assert "Done: 3 slices" in stderr


def test_a_dicom_series_with_a_point(tmp_path, worker_env):
    a, _ = blobs()
    lps = np.eye(4)  # right-handed (a DICOM reader orders the slices along row x column)
    lps[:3, :3] = rotation((0.2, 1.0, 0.1), 20.0) @ np.diag((0.7, 0.8, 2.5))
    lps[:3, 3] = (-40.0, 12.0, 7.5)
    voxels = np.random.default_rng(5).normal(30.0, 4.0, SHAPE_KJI) + 120.0 * a
    series = write_ct_series(tmp_path / "series", voxels, lps)
    output = tmp_path / "ct.seg.nrrd"
    _, summary = segment(worker_env, series, output, "--point-ijk", "10,12,5")
    masks, ijk_to_lps = read_seg_nrrd_with_slicerio(output)
    np.testing.assert_allclose(ijk_to_lps, lps, atol=1e-4)
    np.testing.assert_array_equal(masks["consensus"], a)
    assert summary["lesions"][0]["slices"] == 5


def test_a_dicom_series_with_a_missing_slice_is_refused_unless_allowed(tmp_path, worker_env):
    """ITK alone would read the 17 slices left as 17 evenly spaced ones (spacing 2.66 mm, positions shifted)."""
    a, _ = blobs()
    voxels = np.random.default_rng(5).normal(30.0, 4.0, SHAPE_KJI) + 120.0 * a
    series = write_ct_series(tmp_path / "series", voxels, np.diag([0.7, 0.8, 2.5, 1.0]))
    missing = next(f for f in series.iterdir() if float(pydicom.dcmread(f).ImagePositionPatient[2]) == 8 * 2.5)
    missing.unlink()
    output = tmp_path / "ct.seg.nrrd"
    refused = subprocess.run(
        [sys.executable, "-m", "SDSegSlicerLib.headless", "segment", str(series), "-o", str(output), "--model",
         BRIGHT_MODEL_NAME, "--samples", "2", "--device", "cpu", "--point-ijk", "10,12,5"],
        env=worker_env, capture_output=True, text=True, timeout=CLI_TIMEOUT_S)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    (line,) = [line for line in refused.stderr.splitlines() if "error" in line]
    assert "(17.50 mm) and" in line and "(22.50 mm) are 5.00 mm apart" in line and "--allow-irregular-slices" in line
    assert not output.exists()
    stderr, summary = segment(worker_env, series, output, "--point-ijk", "10,12,5", "--allow-irregular-slices")
    assert len(summary["warnings"]) == 1 and "5.00 mm apart" in summary["warnings"][0]
    assert "Warning: " in stderr and "5.00 mm apart" in stderr
