"""SDSegSlicerLib.session, the Slicer module's logic without Qt, with a REAL worker subprocess, a tiny real model
and real MRML (slicer-core): a whole run (result nodes, statistics, accept, exports), what an input error leaves
on screen, the worker's input copy, the busy state that stops re-entrant actions while a GUI processes events,
and the environment of an external interpreter."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
from slicerlib_testing import (BRIGHT_MODEL_NAME, MODEL_NAME, add_volume_node, oblique_ijk_to_ras,
                               read_seg_nrrd_with_slicerio)

from SDSegSlicerLib.segmentation_writer import read_segment_arrays, segment_ids_by_name, vtk_matrix
from SDSegSlicerLib.session import BusyError, SegmentationSession
from SDSegSlicerLib.worker_client import WorkerError

SHAPE_KJI = (4, 18, 20)
RUN_TIMEOUT_S = 120


@pytest.fixture
def session(worker_env):
    scene = slicer.vtkMRMLScene()
    session = SegmentationSession(scene)
    yield session
    session.shutdown()


def lesion_node(scene):
    k, j, i = np.mgrid[0:SHAPE_KJI[0], 0:SHAPE_KJI[1], 0:SHAPE_KJI[2]]
    lesion = ((i - 10) / 5.0) ** 2 + ((j - 9) / 4.0) ** 2 < 1.0
    voxels = np.random.default_rng(0).normal(40.0, 10.0, SHAPE_KJI) + 80.0 * lesion
    return add_volume_node(scene, voxels, oblique_ijk_to_ras(), "patient ct")


def run_to_the_end(session, job, volume):
    run = session.start_run(job, volume)
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while session.process_run() == "running":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return run


def test_a_whole_run_gives_result_nodes_statistics_accept_and_exports(session, tmp_path):
    volume = lesion_node(session.scene)
    session.start_worker()
    job = session.build_job(volume, slice_start=1, slice_end=2, model=MODEL_NAME, samples=2, steps=2,
                            device="cpu")
    assert job["roi_ijk"] == [0, 0, 1, SHAPE_KJI[2], SHAPE_KJI[1], 3] and job["slice_axis"] == 2
    run = run_to_the_end(session, job, volume)
    assert run.state == "done", run.error_message
    with open(run.job["volume"], "rb") as copy:  # the worker's input: uncompressed, fast to write
        assert b"encoding: raw" in copy.read(1000)
    input_dir = Path(run.job["volume"]).parent
    session.finish_run()
    assert not input_dir.exists()

    segmentation = session.result_segmentation
    assert segmentation.GetNodeReference(segmentation.GetReferenceImageGeometryReferenceRole()) is volume
    by_name = segment_ids_by_name(segmentation)
    assert session.sample_segment_ids() == [by_name["sample 1"], by_name["sample 2"]]
    sample_2 = read_segment_arrays(segmentation, [by_name["sample 2"]])[0][0]
    voxels = {row["segment"]: row["voxels"] for row in session.statistics()["segments"]}
    assert voxels["sample 2"] == sample_2.sum()
    assert session.accept_sample(by_name["sample 2"]) == "accepted"
    np.testing.assert_array_equal(read_segment_arrays(segmentation, [segment_ids_by_name(segmentation)["accepted"]])
                                  [0][0], sample_2)
    paths = {what: session.export_result(what, tmp_path) for what in ("segmentation", "nifti", "variance", "stats")}
    assert {what: Path(path).name for what, path in paths.items()} == {
        "segmentation": "patient_ct_tiny-ambiguous.seg.nrrd", "nifti": "patient_ct_tiny-ambiguous_consensus.nii.gz",
        "variance": "patient_ct_tiny-ambiguous_variance.nrrd", "stats": "patient_ct_tiny-ambiguous_summary.csv"}
    masks, _ = read_seg_nrrd_with_slicerio(paths["segmentation"])
    np.testing.assert_array_equal(masks["sample 2"], sample_2)
    with pytest.raises(ValueError, match="Unknown export 'png'"):
        session.export_result("png", tmp_path)


def test_input_errors_never_lose_the_result_on_screen(session, tmp_path):
    volume = lesion_node(session.scene)
    session.start_worker()
    run_to_the_end(session, session.build_job(volume, model=MODEL_NAME, samples=1, steps=2, device="cpu"), volume)
    session.finish_run()
    result = session.result_segmentation
    assert result is not None
    with pytest.raises(ValueError, match="Slice range 3..1"):  # checked before anything else happens
        session.build_job(volume, slice_start=3, slice_end=1)
    with pytest.raises(ValueError, match="Select an input volume"):
        session.build_job(None)
    good = session.build_job(volume, model=MODEL_NAME, samples=1, steps=2, device="cpu")
    session.stop_worker()
    with pytest.raises(WorkerError, match="not running"):
        session.start_run(good, volume)
    assert session.result_segmentation is result and session.has_result()


def test_busy_session_refuses_a_second_start_a_run_and_an_install(session):
    volume = lesion_node(session.scene)
    refused = []

    def on_wait():  # a GUI processing events while the worker starts: the user clicks again
        if not refused:
            for action in (session.start_worker,
                           lambda: session.start_run(session.build_job(volume, model=MODEL_NAME), volume),
                           lambda: session.busy("the backend is being installed").__enter__()):
                with pytest.raises(BusyError, match="Please wait: the worker is starting"):
                    action()
                refused.append(action)

    hello = session.start_worker(on_wait=on_wait)
    assert hello["type"] == "hello" and len(refused) == 3
    assert session.busy_reason is None and session.worker_ready()
    with session.busy("the backend is being installed"):
        with pytest.raises(BusyError, match="the backend is being installed"):
            session.start_worker()
    session.start_worker()  # not busy any more


def test_an_external_interpreter_runs_in_the_environment_it_is_given(session, tiny_models_dir, monkeypatch):
    """In Slicer: slicer.util.startupEnvironment(), not Slicer's own library paths."""
    external = dict(os.environ, SDSEG_MODELS_PATH=str(tiny_models_dir))
    monkeypatch.setenv("SDSEG_MODELS_PATH", "")  # this process's environment lists no tiny model
    hello = session.start_worker(sys.executable, external_env=external)
    assert MODEL_NAME in [model["name"] for model in hello["models"]]
    assert session.worker_ready(sys.executable) and not session.worker_ready("")
    hello = session.start_worker("")  # Slicer's own Python: this process's environment
    assert MODEL_NAME not in [model["name"] for model in hello["models"]]


def test_start_worker_is_refused_while_a_run_is_going(session):
    volume = lesion_node(session.scene)
    session.start_worker()
    session.start_run(session.build_job(volume, model=MODEL_NAME, samples=2, steps=40, device="cpu"), volume)
    with pytest.raises(BusyError, match="cancel it"):
        session.start_worker()
    with pytest.raises(BusyError, match="running already"):
        session.start_run(session.build_job(volume, model=MODEL_NAME), volume)
    session.cancel_run()


def add_points(scene, *world_points):
    node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "lesion points")
    for point in world_points:
        node.AddControlPointWorld(*[float(v) for v in point])
    return node


def test_jobs_from_points_a_box_or_neither(session):
    volume = lesion_node(session.scene)
    transform = session.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    moved = np.eye(4)
    moved[:3, 3] = (7.0, -4.0, 2.0)
    transform.SetMatrixTransformToParent(vtk_matrix(moved))
    volume.SetAndObserveTransformNodeID(transform.GetID())
    ijk_to_world = moved @ oblique_ijk_to_ras()
    points = add_points(session.scene, (ijk_to_world @ [10.0, 9.0, 2.0, 1.0])[:3], (ijk_to_world @ [3, 4, 1, 1])[:3])
    job = session.build_job(volume, points_node=points, stop_after_empty=3)
    np.testing.assert_allclose([lesion["point_ijk"] for lesion in job["prompt"]["lesions"]], [[10, 9, 2], [3, 4, 1]],
                               atol=1e-3)
    assert job["prompt"]["stop_after_empty"] == 3 and job["roi_ijk"] is None
    roi = session.scene.AddNewNodeByClass("vtkMRMLMarkupsROINode")
    roi.SetCenterWorld(*(ijk_to_world @ [10.0, 9.0, 2.0, 1.0])[:3])
    roi.SetSize(6.0, 6.0, 3.0)
    with_roi = session.build_job(volume, points_node=points, roi_node=roi)
    assert with_roi["prompt"]["lesions"] == job["prompt"]["lesions"] and with_roi["roi_ijk"] is not None
    boxed = session.build_job(volume, points_node=add_points(session.scene), roi_node=roi)  # no point: the box
    assert boxed["prompt"]["lesions"] == [{"box_ijk": with_roi["roi_ijk"]}] and boxed["roi_ijk"] is None
    assert session.build_job(volume)["prompt"] is None  # whole-volume mode


def test_a_run_with_two_points_gives_each_lesion_its_segments(session, tmp_path):
    k, j, i = np.mgrid[0:SHAPE_KJI[0], 0:SHAPE_KJI[1], 0:SHAPE_KJI[2]]
    first = ((i - 5) / 2.5) ** 2 + ((j - 5) / 2.5) ** 2 < 1.0
    second = ((i - 14) / 2.5) ** 2 + ((j - 12) / 2.5) ** 2 + ((k - 2) / 1.2) ** 2 < 1.0
    voxels = np.random.default_rng(0).normal(20.0, 3.0, SHAPE_KJI) + 130.0 * (first | second)
    volume = add_volume_node(session.scene, voxels, oblique_ijk_to_ras(), "two lesions")
    world = oblique_ijk_to_ras()
    points = add_points(session.scene, (world @ [5.0, 5.0, 1.0, 1.0])[:3], (world @ [14.0, 12.0, 2.0, 1.0])[:3])
    session.start_worker()
    job = session.build_job(volume, points_node=points, model=BRIGHT_MODEL_NAME, samples=2, device="cpu")
    job["prompt"]["scale"] = 1.0  # crops of the model's input size: exact masks (test_scale_search: the search)
    run = run_to_the_end(session, job, volume)
    assert run.state == "done", run.error_message
    by_name = segment_ids_by_name(session.result_segmentation)
    assert list(by_name) == [f"lesion {n} {name}" for n in (1, 2) for name in ("consensus", "sample 1", "sample 2")]
    assert len(session.sample_segment_ids()) == 4
    statistics = session.statistics()
    assert [lesion["slices"] for lesion in statistics["lesions"]] == [4, 3]
    masks = read_segment_arrays(session.result_segmentation, [by_name["lesion 1 consensus"],
                                                              by_name["lesion 2 consensus"]])[0]
    np.testing.assert_array_equal(masks[0], first)
    np.testing.assert_array_equal(masks[1], second)
    labels = sitk.GetArrayFromImage(sitk.ReadImage(session.export_result("nifti", tmp_path)))
    np.testing.assert_array_equal(labels, first * 1 + second * 2)


def test_closing_mid_run_keeps_what_arrived_and_leaves_no_worker(session):
    """What the module does when it is closed or Slicer quits during a run: the worker is stopped (no orphan), the
    slices that arrived stay in the scene."""
    volume = lesion_node(session.scene)
    session.start_worker()
    worker = session.client.pid
    run = session.start_run(session.build_job(volume, model=MODEL_NAME, samples=2, steps=40, device="cpu"), volume)
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while session.process_run() == "running" and (run.writer is None or run.writer.slices_received == 0):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    received = run.writer.slices_received
    segmentation = session.result_segmentation
    session.shutdown()
    assert run.state == "cancelled" and 1 <= received <= run.writer.slices_received < SHAPE_KJI[0]
    assert segmentation.GetScene() is session.scene  # the result nodes stay
    with pytest.raises(ProcessLookupError):
        os.kill(worker, 0)
