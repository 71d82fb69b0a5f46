"""The web app's scene without a browser (real MRML, trame-slicer's views, no server started): the input on the file's
own voxel grid, a clicked point labelled with its lesion number beside it and shown as the voxel of the file,
orientation cubes and no volume rendering. The page itself is tested in Chromium (test_web.py)."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

pytest.importorskip("trame_slicer")
os.environ["TRAME_ARGS"] = ""  # trame parses no command line of its own (pytest's)

SAMPLE = Path(__file__).resolve().parents[1] / "Resources" / "SampleData" / "sample.nrrd"
HOLD_S = 60  # how long the held statistics wait for the test before going on (only reached when the page is stuck)
RUN_TIMEOUT_S = 300  # a run of the tiny model on a loaded machine


@pytest.fixture(scope="module")
def web_app():
    from SDSegSlicerWeb.app import SDSegWebApp

    app = SDSegWebApp(max_upload_mb=1)
    assert app.load_volume(str(SAMPLE))
    yield app
    app.shutdown()


@pytest.fixture()
def run_fields(web_app):
    """The page's run fields (Model, Samples, Steps, Seed, Device) as the test found them, restored after it."""
    from SDSegSlicerWeb.panel import RUN_FIELDS

    kept = {f"sdseg_{name}": web_app.state[f"sdseg_{name}"] for name in RUN_FIELDS}
    yield
    web_app.state.update(kept)


def matrix(vtk_matrix) -> np.ndarray:
    return np.array([[vtk_matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def test_the_volume_keeps_the_files_grid(web_app):
    import vtk

    ijk_to_ras = vtk.vtkMatrix4x4()
    web_app.volume_node.GetIJKToRASMatrix(ijk_to_ras)
    image = sitk.ReadImage(str(SAMPLE))
    expected = np.eye(4)
    expected[:3, :3] = np.asarray(image.GetDirection()).reshape(3, 3) * np.asarray(image.GetSpacing())
    expected[:3, 3] = image.GetOrigin()
    expected[:2] *= -1  # LPS to RAS
    np.testing.assert_allclose(matrix(ijk_to_ras), expected, atol=1e-4)  # K step +6.5 mm, not reversed
    from slicer.util import arrayFromVolume

    assert np.array_equal(arrayFromVolume(web_app.volume_node), sitk.GetArrayFromImage(image))


def test_a_point_is_labelled_with_its_lesion_number_and_shown_as_the_files_voxel(web_app):
    import vtk

    ijk_to_ras = vtk.vtkMatrix4x4()
    web_app.volume_node.GetIJKToRASMatrix(ijk_to_ras)
    points = web_app._markups_node("point")
    points.AddControlPoint(*ijk_to_ras.MultiplyPoint((45.3, 30.8, 16.2, 1))[:3])
    assert points.GetNthControlPointLabel(0) == "1"  # not "lesion points-1"
    assert list(web_app.state.sdseg_points) == ["lesion 1: IJK 45, 31, 16"]
    web_app.state.sdseg_model, web_app.state.sdseg_samples = "sdseg-small", 2
    assert web_app.job()["prompt"]["lesions"] == [{"point_ijk": [45, 31, 16]}]  # what segment --point-ijk gets
    web_app.clear_prompts()


def test_views_have_orientation_cubes_and_no_volume_rendering(web_app):
    from slicer import vtkMRMLAbstractViewNode

    for view in web_app.slicer_app.view_manager.get_views():
        assert view.get_view_node().GetOrientationMarkerType() == vtkMRMLAbstractViewNode.OrientationMarkerTypeCube
    rendering = web_app.slicer_app.volume_rendering.get_vr_display_node(web_app.volume_node)
    assert rendering is None or not rendering.GetVisibility()


def annotations(web_app) -> dict:
    """The texts over each slice view (page state), by view name."""
    return {name: dict(web_app.state[f"sdseg_view_{name}"]) for name in ("Red", "Green", "Yellow")}


def test_slice_views_are_named_lettered_and_numbered_in_the_files_indices(web_app, tmp_path):
    """Axial, coronal and sagittal views lettered as Slicer shows them (radiological: R on the left), the slice shown
    as the file's index, following the slider; a file stored with its slices in the other order (z step -6.5) is
    numbered by its own indices."""
    texts = annotations(web_app)
    assert {name: (t["title"], t["left"], t["right"], t["top"], t["bottom"]) for name, t in texts.items()} == {
        "Red": ("Axial · Red", "R", "L", "A", "P"), "Green": ("Coronal · Green", "R", "L", "S", "I"),
        "Yellow": ("Sagittal · Yellow", "A", "P", "S", "I")}
    assert texts["Red"]["slice"] == "slice K 12 of 0-24 · S 0.0 mm"  # the middle one of the sample's 25
    assert texts["Yellow"]["slice"].startswith("slice I 48 of 0-95 · R ")
    red = web_app.slicer_app.view_manager.get_slice_views()[0]
    red.set_slice_value(26.0)
    assert annotations(web_app)["Red"]["slice"] == "slice K 16 of 0-24 · S 26.0 mm"  # the README's tumour slice

    image = sitk.ReadImage(str(SAMPLE))  # the same voxels in the other slice order
    reversed_slices = sitk.GetImageFromArray(np.ascontiguousarray(sitk.GetArrayFromImage(image)[::-1]))
    reversed_slices.SetSpacing(image.GetSpacing())
    reversed_slices.SetDirection(np.asarray(image.GetDirection()) * [1, 1, 1, 1, 1, 1, 1, 1, -1])
    reversed_slices.SetOrigin(image.TransformIndexToPhysicalPoint((0, 0, image.GetSize()[2] - 1)))
    sitk.WriteImage(reversed_slices, str(tmp_path / "reversed.nrrd"))
    try:
        assert web_app.load_volume(str(tmp_path / "reversed.nrrd"))
        red.set_slice_value(26.0)
        assert annotations(web_app)["Red"]["slice"] == "slice K 8 of 0-24 · S 26.0 mm"  # 24 - 16
        assert annotations(web_app)["Red"]["left"] == "R"
    finally:
        assert web_app.load_volume(str(SAMPLE))


def test_a_slice_slider_keeps_the_value_the_page_sent(web_app):
    """The view left a hair off the slice grid, as a fit leaves it in the browser (2.1e-14 mm for slice 12): the page's
    slider sends each slice's offset (-78 + 6.5 k mm), the view moves there, and the slider keeps the value sent, so
    the app pushes nothing back (Slicer's answer, 2.8e-14 for 0, arriving late, moved the thumb back after fast
    presses)."""
    from trame_slicer.app.logic.slice_view_logic import get_view_slider_typed_state

    red = web_app.slicer_app.view_manager.get_slice_views()[0]
    slider = get_view_slider_typed_state(web_app.server, red)
    web_app.state.ready()  # as a started server's state: a change runs its listeners when flushed
    try:
        red.set_slice_value(2.1e-14)
        for k in [12, *range(25), 12]:
            sent = -78 + 6.5 * k
            with web_app.state:  # as trame's protocol applies a page's change (trame.state.update)
                web_app.state[slider.name.value] = sent
            assert red.get_slice_value() == pytest.approx(sent, abs=1e-9) and slider.data.value == sent, k
    finally:
        red.set_slice_value(0.0)


class Held:
    """``owner.name`` replaced (monkeypatch) by a version that waits for the test's ``release`` (at most HOLD_S: only
    when the test is stuck) before it runs: a slow step of the app. ``started`` is set when it is called,
    ``finished`` when it has run."""

    def __init__(self, monkeypatch, owner, name: str):
        self.started, self.release, self.finished = threading.Event(), threading.Event(), threading.Event()
        original = getattr(owner, name)

        def held(*args, **kwargs):
            self.started.set()
            self.release.wait(HOLD_S)
            try:
                return original(*args, **kwargs)
            finally:
                self.finished.set()

        monkeypatch.setattr(owner, name, held)


def click_the_tumour(web_app) -> None:
    """A point at the centre of the sample's tumour (voxel 45, 31, 16)."""
    import vtk

    ijk_to_ras = vtk.vtkMatrix4x4()
    web_app.volume_node.GetIJKToRASMatrix(ijk_to_ras)
    web_app._markups_node("point").AddControlPoint(*ijk_to_ras.MultiplyPoint((45, 31, 16, 1))[:3])


async def segment_until_held(web_app, step: Held) -> None:
    """Segment (the page's button) and wait until the run reaches the held ``step``."""
    web_app.segment_or_cancel()
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while not step.started.is_set():
        assert time.monotonic() < deadline and not web_app._run_task.done(), web_app.state.sdseg_status
        await asyncio.sleep(0.1)


def test_a_display_mode_shows_at_once_while_the_statistics_are_computed(web_app, worker_env, monkeypatch, run_fields):
    """The end of a run (a real worker, the tiny model) computes its statistics with the page answering: All, chosen
    while they are computed (held here until All has shown), shows the samples at once, not after them; the
    statistics and the 3D surfaces follow."""
    from slicerlib_testing import MODEL_NAME

    from SDSegSlicerLib import stats

    statistics = Held(monkeypatch, stats, "statistics_of_arrays")
    click_the_tumour(web_app)
    web_app.state.update({"sdseg_model": MODEL_NAME, "sdseg_samples": 2, "sdseg_steps": 2})
    web_app.state.ready()  # as a started server's state: a change runs its listeners when flushed

    async def segment_and_choose_all():
        await segment_until_held(web_app, statistics)
        web_app.state.sdseg_sample_mode = "all"  # the page's All button
        web_app.state.flush()
        display = web_app.session.result_segmentation.GetDisplayNode()
        shown = [display.GetSegmentVisibility(i) for i in web_app.session.sample_segment_ids()]
        answered = (web_app.state.sdseg_sample_label, shown, statistics.finished.is_set())
        statistics.release.set()
        await web_app._run_task
        return answered

    try:
        label, shown, statistics_done = asyncio.run(segment_and_choose_all())
        assert label == "All 2 samples" and shown == [True, True] and not statistics_done
        assert [row[0] for row in web_app.state.sdseg_stats_rows] == ["consensus", "sample 1", "sample 2"]
        assert web_app.session.result_segmentation.GetSegmentation().ContainsRepresentation("Closed surface")
        assert web_app.state.sdseg_sample_label == "All 2 samples" and not web_app.state.sdseg_running
    finally:
        statistics.release.set()
        web_app.clear_prompts()


def test_the_workers_warning_about_the_input_is_in_the_status_line_before_the_run_ends(web_app, worker_env,
                                                                                       monkeypatch, run_fields):
    """A model for CT only on the sample (an MR: no negative value), a real worker: the status line says the worker's
    warning once it accepts the job, before the end of the run (its statistics, held here, come last), and once
    only after it."""
    from slicerlib_testing import BRIGHT_CT_MODEL_NAME

    from sdseg.modality_check import modality_warnings
    from SDSegSlicerLib import stats

    warning = "Warning: " + modality_warnings({"modalities": ["CT"]}, np.zeros(1))[0]
    statistics = Held(monkeypatch, stats, "statistics_of_arrays")
    click_the_tumour(web_app)
    web_app.state.update({"sdseg_model": BRIGHT_CT_MODEL_NAME, "sdseg_samples": 2, "sdseg_steps": 0})

    async def segment():
        await segment_until_held(web_app, statistics)
        before_the_end = web_app.state.sdseg_status
        statistics.release.set()
        await web_app._run_task
        return before_the_end

    try:
        before_the_end = asyncio.run(segment())
        assert warning in before_the_end and not web_app.state.sdseg_status_error, before_the_end
        assert web_app.state.sdseg_status.count(warning) == 1 and "Done" in web_app.state.sdseg_progress_text, \
            web_app.state.sdseg_status
    finally:
        statistics.release.set()
        web_app.clear_prompts()


def test_a_cancel_that_arrives_after_the_run_ended_changes_nothing(web_app, worker_env, monkeypatch, run_fields):
    """A Cancel click sent while the page still showed Cancel, received once the run has ended (its 3D surfaces,
    held here, are the last step): the status stays the run's end, not "Cancelling" for ever; a real worker."""
    from slicerlib_testing import BRIGHT_MODEL_NAME

    from SDSegSlicerWeb import app, view_aids

    monkeypatch.setattr(app, "DOUBLE_CLICK_S", 0.0)  # a fast run: its late Cancel is no double click's second click
    surfaces = Held(monkeypatch, view_aids, "closed_surfaces")
    click_the_tumour(web_app)
    web_app.state.update({"sdseg_model": BRIGHT_MODEL_NAME, "sdseg_samples": 2, "sdseg_steps": 0})

    async def segment_then_cancel_late():
        await segment_until_held(web_app, surfaces)
        ended = (web_app.state.sdseg_status, web_app.state.sdseg_progress_text)
        web_app.segment_or_cancel(cancel=True)  # what the button said when it was clicked
        answered = (web_app.state.sdseg_status, web_app.state.sdseg_progress_text)
        surfaces.release.set()
        await web_app._run_task
        return ended, answered

    try:
        ended, answered = asyncio.run(segment_then_cancel_late())
        assert ended[1].startswith("Done") and answered == ended, (ended, answered)
        assert (web_app.state.sdseg_status, web_app.state.sdseg_progress_text) == ended
    finally:
        surfaces.release.set()
        web_app.clear_prompts()


def test_segment_runs_with_the_fields_the_page_sent_with_the_click(web_app, worker_env, run_fields):
    """The Segment click carries the page's Model, Samples, Steps, Seed and Device (a value typed just before the
    click can reach the server's state after the click's trigger): the job is made of those, not of the server's
    older state; a real worker."""
    from slicerlib_testing import BRIGHT_MODEL_NAME

    web_app.state.update({"sdseg_model": "", "sdseg_samples": 8, "sdseg_steps": 0, "sdseg_seed": 0,
                          "sdseg_device": "auto"})
    sent = {"model": BRIGHT_MODEL_NAME, "samples": 3, "steps": 7, "seed": 5, "device": "cpu"}

    async def segment():
        web_app.segment_or_cancel(False, sent)
        await web_app._run_task

    try:
        asyncio.run(segment())
        accepted = web_app.session.run.accepted
        assert web_app.state.sdseg_progress_text.startswith("Done"), web_app.state.sdseg_status
        assert {name: accepted[name] for name in sent} == sent  # what the worker ran
        assert [web_app.state[f"sdseg_{name}"] for name in sent] == list(sent.values())  # what the page shows
    finally:
        web_app.clear_prompts()
