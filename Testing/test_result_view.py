"""SDSegSlicerLib.result_view, what the Slicer module and the web app show, on a REAL run (real worker subprocess,
tiny real model, real MRML): the sample browser's visibility in each mode and accept, the progress and end texts,
the statistics as text, the model choices and the device line."""

from __future__ import annotations

import copy

import pytest
import slicer
from test_session import lesion_node, run_to_the_end
from slicerlib_testing import MODEL_NAME

from SDSegSlicerLib import result_view
from SDSegSlicerLib.session import SegmentationSession


@pytest.fixture
def finished(worker_env):
    session = SegmentationSession(slicer.vtkMRMLScene())
    volume = lesion_node(session.scene)
    session.start_worker()
    run = run_to_the_end(session, session.build_job(volume, model=MODEL_NAME, samples=3, steps=2, device="cpu"),
                         volume)
    yield session, run
    session.shutdown()


def visible(session) -> list[str]:
    segmentation, display = session.result_segmentation.GetSegmentation(), session.result_segmentation.GetDisplayNode()
    return [segmentation.GetSegment(segment_id).GetName() for segment_id in segmentation.GetSegmentIDs()
            if display.GetSegmentVisibility(segment_id)]


def test_sample_browser_modes_and_accept(finished):
    session, _ = finished
    browser = result_view.SampleBrowser(session, mode="none")
    assert browser.show() == "Consensus only (3 samples)" and visible(session) == ["consensus"]
    with pytest.raises(ValueError, match="Show one sample"):
        browser.accept()
    assert browser.show(mode="one") == "Sample 1 of 3" and visible(session) == ["consensus", "sample 1"]
    assert browser.show(browser.index - 1) == "Sample 3 of 3" and visible(session) == ["consensus", "sample 3"]
    assert browser.accept() == ("Sample 3 copied to segment 'accepted': edit it in the Segment Editor.")
    assert browser.show(mode="all") == "All 3 samples"
    assert set(visible(session)) >= {"consensus", "sample 1", "sample 2", "sample 3"}
    display = session.result_segmentation.GetDisplayNode()
    filled = {segment_id: display.GetSegmentVisibility2DFill(segment_id) for segment_id in session.sample_segment_ids()}
    assert not any(filled.values())  # all samples: outlines, so none hides another or the variance
    browser.show(mode="one")
    assert all(display.GetSegmentVisibility2DFill(segment_id) for segment_id in session.sample_segment_ids())
    browser.show(mode="all")
    with pytest.raises(ValueError, match="Unknown sample mode"):
        browser.show(mode="some")
    browser.reset()
    assert (browser.index, browser.mode) == (0, "none")
    assert result_view.SampleBrowser(SegmentationSession(slicer.vtkMRMLScene())).show() == "Sample -"


def test_progress_end_and_statistics_texts(finished):
    session, run = finished
    total = run.progress["total"]
    assert result_view.finished_texts(run, None) == (f"Done: {total} slices.", "", False)
    running = {"phase": "segmenting", "done": 1, "total": 4, "eta_s": 75.0, "total_is_bound": False}
    assert result_view.progress_text(running) == "segmenting: 1/4 slices, about 1:15 left"
    assert result_view.progress_text({**running, "done": 4, "eta_s": 0.0}) == "segmenting: 4/4 slices"
    assert result_view.progress_percent(running, "running") == 25.0
    # A prompt job: its total is a bound, so no time left from it (the worker's eta_s assumed all 25 slices).
    bounded = {"phase": "segmenting", "done": 4, "total": 25, "eta_s": 427.0, "total_is_bound": True}
    assert result_view.progress_text(bounded, elapsed_s=10.0) == "segmenting: 4 slices (at most 25), 2.5 s a slice"
    assert result_view.progress_percent(bounded, "running") is None
    assert result_view.progress_percent({**bounded, "done": 10}, "done") == 100.0
    assert result_view.progress_percent({**bounded, "done": 10}, "cancelled") == 40.0
    header, rows = result_view.statistics_text_table(session.statistics(), result_view.SUMMARY_COLUMNS)
    assert header == list(result_view.SUMMARY_COLUMNS)
    assert [row[0] for row in rows] == ["consensus", "sample 1", "sample 2", "sample 3"]
    voxels = {row["segment"]: row["voxels"] for row in session.statistics()["segments"]}
    assert all(row[2] == str(voxels[row[0]]) for row in rows)
    run.accepted["warnings"] = ["this model was trained on CT only, and this volume does not look like CT"]
    assert result_view.finished_texts(run, None)[1] == f"Warning: {run.accepted['warnings'][0]}"  # the worker's
    run.state = "cancelled"
    assert result_view.finished_texts(run, None)[1] == (f"Cancelled: the slices already segmented are kept. "
                                                         f"Warning: {run.accepted['warnings'][0]}")
    run.state, run.error_message = "error", "The worker ran out of memory."
    assert result_view.finished_texts(run, None)[1:] == (
        f"The worker ran out of memory. Warning: {run.accepted['warnings'][0]}", True)
    run.accepted["warnings"] = []
    assert result_view.finished_texts(run, None)[1:] == ("The worker ran out of memory.", True)
    run.job["model"] = None  # a job that named no model: the status says which one the worker chose
    assert result_view.finished_texts(run, None)[1:] == (
        f"The worker ran out of memory. Model: {run.accepted['model']} (the default for this volume).", True)
    # the worker's hello says for which images that model is the default (here as a worker with it as PET default)
    hello = run.client.hello
    run.client.hello = {**hello, "models": [{**model, "default_for_pet": model["name"] == run.accepted["model"]}
                                            for model in hello["models"]]}
    try:
        assert result_view.finished_texts(run, None)[1] == (f"The worker ran out of memory. Model: "
                                                            f"{run.accepted['model']} (the default for this volume, "
                                                            "a PET in SUV).")
    finally:
        run.client.hello = hello


def test_model_choices_and_device_line():
    choices = result_view.model_choices([{"name": "m", "kind": "sdseg", "description": "d", "card": "",
                                          "default": False, "default_for_ct": False}])
    assert [(c["label"], c["name"], c["card"]) for c in choices] == [
        ("default model", "", "The worker's default model."), ("m (sdseg)", "m", "d")]
    models = [{"name": "small", "kind": "sdseg", "card": "", "default": True, "default_for_ct": False},
              {"name": "ct", "kind": "sdseg", "card": "", "default": False, "default_for_ct": True},
              {"name": "pet", "kind": "sdseg", "card": "", "default": False, "default_for_pet": True}]
    assert result_view.model_choices(models)[0]["card"] == (
        "The worker's default model: ct on a CT in Hounsfield units (with air or fat below -100 HU); pet on a PET in "
        "SUV (fractional values, 99.9 % of them at most 50); small on any other volume.")
    before_pet = [{**model, "default_for_pet": None} for model in models[:2]]  # a worker before the PET default
    assert result_view.model_choices(before_pet)[0]["card"] == (
        "The worker's default model: ct on a CT in Hounsfield units (with air or fat below -100 HU); small on any "
        "other volume.")
    old_worker = [{"name": "small", "kind": "sdseg", "card": "", "default": True}]  # before the CT default
    assert result_view.model_choices(old_worker)[0]["card"] == "The worker's default model: small."
    assert result_view.describe_device({"torch": "2.13"}) == "no GPU found: CPU (torch 2.13)"
    assert result_view.describe_device({"torch": "2.11", "gpu_name": "H200", "gpu_free_mb": 2048, "cuda": "13.0"}) \
        == "H200, 2.0 GB free (CUDA 13.0, torch 2.11)"


def test_run_notes_are_given_once_a_run_and_again_for_the_next_run(finished):
    _, run = finished
    notes = result_view.RunNotes()
    accepted, run.accepted = run.accepted, None
    assert notes.status(run, "Starting.") is None  # not accepted yet
    run.accepted = {**accepted, "warnings": ["this volume does not look like CT"]}
    assert notes.status(run, "Starting.") == "Starting. Warning: this volume does not look like CT"
    assert notes.status(run, "Starting.") is None  # said once
    following = copy.copy(run)  # the next run (another SegmentationRun): no reset needed
    assert notes.status(following, "") == "Warning: this volume does not look like CT"
    run.accepted = {**accepted, "warnings": []}  # the job named its model: no note
    assert result_view.RunNotes().status(run, "Starting.") is None
