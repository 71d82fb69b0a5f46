"""The Slicer module as 3D Slicer runs it, in the stand-in (Testing/slicer_standin: Slicer's class chains,
parameter node wrapper, module factory and place mode written from Slicer's sources; PySide6 widgets built from the
module's .ui; real MRML from slicer-core): the module file executed as Slicer's factory does, the panel set up,
entered, left, reloaded and cleaned up; a lesion clicked, segmented with a REAL worker, browsed, accepted and
exported through the panel's own buttons; the module's in-Slicer self test; and the panel behaviours the issue
found broken (a place-mode preview point taken for a lesion, Enter taken from text fields, the module's
dependencies, reload keeping stale code)."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("PySide6")

import slicer_standin  # noqa: E402 - sets the off-screen Qt platform first
from PySide6 import QtCore, QtTest, QtWidgets  # noqa: E402
from slicerlib_testing import (BRIGHT_3D_MODEL_NAME, BRIGHT_CT_MODEL_NAME, add_volume_node,  # noqa: E402
                               oblique_ijk_to_ras, read_seg_nrrd_with_slicerio)

import slicer  # noqa: E402
from SDSegSlicerLib import stats  # noqa: E402
from SDSegSlicerLib.stats import statistics_of_arrays  # noqa: E402

MODULE_SCRIPT = Path(__file__).resolve().parents[1] / "SDSegSlicer" / "SDSegSlicer.py"
SHAPE_KJI = (6, 20, 22)
LESION_CENTRE_IJK = (11.0, 10.0, 3.0)
WAIT_TIMEOUT_S = 240


@pytest.fixture
def application():
    application = slicer_standin.install({"SDSegSlicer": str(MODULE_SCRIPT)})
    yield application
    slicer_standin.uninstall()


def panel():
    """Select the module (its panel is set up on first selection) and return its Python widget."""
    slicer.util.selectModule("SDSegSlicer")
    return slicer.modules.SDSegSlicerWidget


def wait_until(condition, what, timeout=WAIT_TIMEOUT_S):
    """Process Qt events (the panel's timer) until condition() holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        QtWidgets.QApplication.processEvents()
        time.sleep(0.02)


def lesion_mask():
    """(K, J, I) bool: an ellipsoid around LESION_CENTRE_IJK."""
    k, j, i = np.mgrid[0:SHAPE_KJI[0], 0:SHAPE_KJI[1], 0:SHAPE_KJI[2]]
    ci, cj, ck = LESION_CENTRE_IJK
    return ((i - ci) / 5.0) ** 2 + ((j - cj) / 4.0) ** 2 + ((k - ck) / 2.2) ** 2 < 1.0


def lesion_volume():
    """An oblique, anisotropic, flipped volume, bright (above the threshold model's 100) in lesion_mask() only."""
    voxels = np.random.default_rng(0).normal(40.0, 8.0, SHAPE_KJI) + 100.0 * lesion_mask()
    return add_volume_node(slicer.mrmlScene, voxels, oblique_ijk_to_ras(), "patient ct")


def ras_of(ijk):
    return (oblique_ijk_to_ras() @ [*ijk, 1.0])[:3].tolist()


def unwrap(widget):
    return slicer_standin.pythonqt.unwrap(widget)


def press_enter(widget):
    """Enter typed into a widget of the main window (the shortcut map first, as Qt delivers keys)."""
    widget = unwrap(widget)
    widget.window().activateWindow()
    widget.setFocus()
    QtWidgets.QApplication.processEvents()
    QtTest.QTest.keyClick(widget, QtCore.Qt.Key_Return)
    QtWidgets.QApplication.processEvents()


def click_lesion_and_keep_hovering(application, widget, ijk=LESION_CENTRE_IJK):
    """'Click lesion', a click on the lesion in a slice view, then the mouse stays over the view, as a user's
    does before pressing Enter: place mode adds its preview point there."""
    widget.ui.lesionPlaceWidget.placeButton().click()
    application.markupsPlacement.hover(ras_of(ijk))
    application.markupsPlacement.click(ras_of(ijk))
    application.markupsPlacement.hover(ras_of((ijk[0] + 6, ijk[1] + 6, ijk[2])))


def test_the_module_loads_sets_up_enters_leaves_and_cleans_up(application):
    assert slicer.modules.sdsegslicer.title == "SDSeg Slicer"
    volume = lesion_volume()
    widget = panel()
    assert widget.logic.getParameterNode().inputVolume is volume
    assert slicer.mrmlScene.GetSingletonNode("SDSegSlicer", "vtkMRMLScriptedModuleNode") is not None
    assert widget.ui.inputVolumeSelector.currentNode() is volume
    assert widget.ui.segmentButton.enabled and "Whole-volume mode" in widget.ui.modeLabel.text

    parameters = widget.logic.getParameterNode().allParameters
    assert set(parameters) == {"inputVolume", "lesionPoints", "roi", "sliceStart", "sliceEnd", "stopAfterEmpty",
                               "model", "samples", "steps", "seed", "device", "pythonExecutable", "serverUrl",
                               "varianceOpacity"}
    for name in ("inputVolumeSelector", "lesionPointsSelector", "roiSelector"):  # each offers its parameter's type
        selector = getattr(widget.ui, name)
        assert selector.nodeTypes == [parameters[selector.property("SlicerParameterName")].type.__name__]

    widget.ui.samplesSpinBox.value = 5  # the panel's fields are bound to the parameter node, both ways
    assert widget.logic.getParameterNode().samples == 5
    widget.logic.getParameterNode().seed = 9
    assert widget.ui.seedSpinBox.value == 9

    slicer.util.selectModule("Data")  # exit()
    widget.ui.samplesSpinBox.value = 6
    assert widget.logic.getParameterNode().samples == 5, "a left module still writes its parameters"
    slicer.util.selectModule("SDSegSlicer")  # enter() again
    assert widget.ui.samplesSpinBox.value == 5

    widget.ui.restartWorkerButton.click()
    client = widget.logic.client
    assert client is not None and client.is_running(), widget.ui.statusLabel.text
    application.unloadModules()  # application exit: cleanup()
    assert not client.is_running() and widget.logic.client is None


@pytest.mark.usefixtures("worker_env")
def test_click_segment_stream_accept_and_export_through_the_panel(application, tmp_path, monkeypatch):
    release_statistics, statistics_threads = threading.Event(), []

    def statistics_held_until_released(*arguments):
        statistics_threads.append(threading.current_thread())
        assert release_statistics.wait(WAIT_TIMEOUT_S), "the statistics were never released"
        return statistics_of_arrays(*arguments)
    monkeypatch.setattr(stats, "statistics_of_arrays", statistics_held_until_released)
    volume = lesion_volume()
    widget = panel()
    widget.ui.restartWorkerButton.click()  # starts the worker and lists its models
    combo = widget.ui.modelComboBox
    combo.currentIndex = combo.findData(BRIGHT_3D_MODEL_NAME)
    widget.ui.samplesSpinBox.value = 3
    widget.ui.deviceComboBox.currentIndex = widget.ui.deviceComboBox.findData("cpu")
    assert widget.logic.getParameterNode().model == BRIGHT_3D_MODEL_NAME

    click_lesion_and_keep_hovering(application, widget)
    points = widget.logic.getParameterNode().lesionPoints
    assert points.GetNumberOfControlPoints() == 2  # the clicked point and the preview point under the mouse
    assert widget.ui.modeLabel.text.startswith("Segments 1 lesion(s)"), widget.ui.modeLabel.text

    widget.ui.segmentButton.click()
    assert widget.ui.segmentButton.text == "Cancel", widget.ui.statusLabel.text
    wait_until(lambda: widget.logic.has_result() and widget.ui.resultsCollapsibleButton.enabled,
               "the first streamed slice on screen")
    wait_until(lambda: widget.ui.segmentButton.text == "Segment", "the end of the run")
    assert widget.logic.run is not None and widget.logic.run.state == "done", widget.ui.statusLabel.text
    assert len(widget.logic.run.job["prompt"]["lesions"]) == 1, "the preview point became a lesion"
    wait_until(lambda: statistics_threads, "the statistics to start")
    assert statistics_threads[0] is not threading.main_thread(), "the statistics hold the GUI thread"
    assert widget.ui.progressLabel.text == "Computing the statistics..."
    release_statistics.set()
    wait_until(lambda: widget.ui.statsTable.rowCount > 0, "the statistics table")
    assert widget.ui.exportCollapsibleButton.enabled and "lesion 1: " in widget.ui.progressLabel.text + \
        widget.ui.statusLabel.text, (widget.ui.progressLabel.text, widget.ui.statusLabel.text)

    segmentation = widget.logic.result_segmentation
    names = [segmentation.GetSegmentation().GetNthSegment(n).GetName()
             for n in range(segmentation.GetSegmentation().GetNumberOfSegments())]
    assert names == ["consensus", "sample 1", "sample 2", "sample 3"], names
    widget.ui.nextSampleButton.click()
    assert widget.ui.sampleLabel.text.startswith("Sample 2"), widget.ui.sampleLabel.text
    widget.ui.acceptSampleButton.click()
    assert "accepted" in widget.ui.statusLabel.text, widget.ui.statusLabel.text

    widget.ui.exportDirectoryButton.directory = str(tmp_path)
    widget.ui.exportSegNrrdButton.click()
    exported = sorted(tmp_path.glob("*.seg.nrrd"))
    assert len(exported) == 1 and widget.ui.statusLabel.text == f"Exported {exported[0]}"
    masks, _ = read_seg_nrrd_with_slicerio(exported[0])  # an independent reader
    assert {"consensus", "sample 1", "sample 2", "sample 3", "accepted"} <= set(masks)
    np.testing.assert_array_equal(masks["accepted"], masks["sample 2"])
    np.testing.assert_array_equal(masks["consensus"], lesion_mask())  # the threshold model finds it exactly
    assert volume.GetID() == widget.logic.getParameterNode().inputVolume.GetID()


@pytest.mark.usefixtures("worker_env")
def test_the_workers_warning_about_the_input_is_in_the_status_line_before_the_run_ends(application, monkeypatch):
    """A model for CT only on a volume with no negative value (not in Hounsfield units), a real worker: the status line
    says the worker's warning once it accepts the job, before the end of the run (its statistics, held here, come
    last), and once only after it."""
    from sdseg.modality_check import modality_warnings

    warning = "Warning: " + modality_warnings({"modalities": ["CT"]}, np.zeros(1))[0]
    release_statistics = threading.Event()

    def statistics_held_until_released(*arguments):
        assert release_statistics.wait(WAIT_TIMEOUT_S), "the statistics were never released"
        return statistics_of_arrays(*arguments)
    monkeypatch.setattr(stats, "statistics_of_arrays", statistics_held_until_released)
    lesion_volume()
    widget = panel()
    wait_until(lambda: widget.ui.modelComboBox.findData(BRIGHT_CT_MODEL_NAME) >= 0, "the models")
    widget.ui.modelComboBox.currentIndex = widget.ui.modelComboBox.findData(BRIGHT_CT_MODEL_NAME)
    widget.ui.samplesSpinBox.value = 2
    widget.ui.deviceComboBox.currentIndex = widget.ui.deviceComboBox.findData("cpu")
    click_lesion_and_keep_hovering(application, widget)
    widget.ui.segmentButton.click()
    wait_until(lambda: widget.ui.progressLabel.text == "Computing the statistics...", "the end of the slices")
    assert warning in widget.ui.statusLabel.text, widget.ui.statusLabel.text
    release_statistics.set()
    wait_until(lambda: widget.ui.statsTable.rowCount > 0, "the statistics table")
    assert widget.ui.statusLabel.text.count(warning) == 1, widget.ui.statusLabel.text
    assert "lesion 1: " in widget.ui.progressLabel.text + widget.ui.statusLabel.text, widget.ui.statusLabel.text


def process_exists(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.usefixtures("worker_env")
def test_the_worker_starts_with_the_volume_and_serves_every_run_until_the_module_closes(application):
    """Issue #33: the worker loads PyTorch while the user looks at the volume, not after Segment; one process for
    every run; none left once the module is closed."""
    widget = panel()
    assert widget.logic.client is None, "a worker started without a volume to segment"
    lesion_volume()  # loaded while the panel is shown: the selector takes it, the worker starts
    client = widget.logic.client
    assert client is not None and process_exists(client.pid), widget.ui.statusLabel.text
    pid = client.pid
    wait_until(lambda: widget.ui.modelComboBox.findData(BRIGHT_3D_MODEL_NAME) >= 0, "the models, without Segment")
    assert widget.ui.gpuLabel.text and widget.logic.worker_ready()
    widget.ui.modelComboBox.currentIndex = widget.ui.modelComboBox.findData(BRIGHT_3D_MODEL_NAME)
    widget.ui.samplesSpinBox.value = 2
    widget.ui.deviceComboBox.currentIndex = widget.ui.deviceComboBox.findData("cpu")
    click_lesion_and_keep_hovering(application, widget)
    for run in (1, 2):
        widget.ui.segmentButton.click()
        assert widget.ui.segmentButton.text == "Cancel", widget.ui.statusLabel.text
        wait_until(lambda: widget.ui.statsTable.rowCount > 0, f"the end of run {run}")
        assert widget.logic.run.state == "done", widget.ui.statusLabel.text
        assert widget.logic.client.pid == pid, f"run {run} started another worker"
    application.unloadModules()  # application exit: cleanup()
    assert widget.logic.client is None and not process_exists(pid), "the worker outlived the module"


def test_a_worker_that_cannot_start_ahead_says_so_once_and_is_not_retried_on_every_change(application, tmp_path,
                                                                                           monkeypatch):
    widget = panel()
    worker_client = sys.modules["SDSegSlicerLib.worker_client"]  # the module's own (the stand-in imports it anew)
    launches = []
    original_launch = worker_client.WorkerClient.launch

    def counted_launch(client):
        launches.append(client.python_executable)
        return original_launch(client)
    monkeypatch.setattr(worker_client.WorkerClient, "launch", counted_launch)
    widget.ui.pythonExecutableLineEdit.text = str(tmp_path / "no-such-python")
    lesion_volume()  # the worker is started ahead with that interpreter, and fails
    assert launches == [str(tmp_path / "no-such-python")]
    assert "no usable Python interpreter" in widget.ui.statusLabel.text, widget.ui.statusLabel.text
    widget.ui.samplesSpinBox.value = 3  # every parameter change: no new attempt with the same interpreter
    widget.ui.seedSpinBox.value = 4
    assert len(launches) == 1 and widget.logic.client is None


def test_a_preview_point_alone_is_no_lesion_and_segment_leaves_place_mode(application):
    lesion_volume()
    widget = panel()
    widget.ui.lesionPlaceWidget.placeButton().click()
    application.markupsPlacement.hover(ras_of(LESION_CENTRE_IJK))  # the mouse over a view, nothing clicked yet
    points = widget.logic.getParameterNode().lesionPoints
    assert points.GetNumberOfControlPoints() == 1
    assert "Whole-volume mode" in widget.ui.modeLabel.text, widget.ui.modeLabel.text
    job = widget.logic.buildJob(widget.logic.getParameterNode())
    assert job["prompt"] is None

    application.markupsPlacement.click(ras_of(LESION_CENTRE_IJK))
    points.UnsetNthControlPointPosition(0)  # the user unsets the point
    assert widget.logic.buildJob(widget.logic.getParameterNode())["prompt"] is None

    widget.ui.sliceStartSpinBox.value, widget.ui.sliceEndSpinBox.value = 4, 1  # a job refused before any worker
    interaction = application.applicationLogic().GetInteractionNode()
    assert interaction.GetCurrentInteractionMode() == interaction.Place
    widget.ui.segmentButton.click()
    assert interaction.GetCurrentInteractionMode() != interaction.Place
    assert "Slice range" in widget.ui.statusLabel.text, widget.ui.statusLabel.text


def test_enter_segments_from_a_slice_view_but_stays_in_text_fields(application, monkeypatch):
    lesion_volume()
    widget = panel()
    started = []
    monkeypatch.setattr(widget, "onSegmentOrCancel", lambda: started.append(True))
    edited = []
    widget.ui.serverUrlLineEdit.connect("returnPressed()", lambda: edited.append(True))

    press_enter(widget.ui.serverUrlLineEdit)
    assert edited == [True], "the server field never saw Enter"
    press_enter(widget.ui.samplesSpinBox)
    assert started == [], "Enter in a text or number field started a run"

    press_enter(application.layoutManager().sliceWidget("Red").sliceView())
    assert started == [True], "Enter in a slice view did not segment"

    slicer.util.selectModule("Data")
    press_enter(application.layoutManager().sliceWidget("Red").sliceView())
    assert started == [True], "Enter segments while the module is not shown"


def test_dependencies_load_markups_and_segmentations_first():
    """An application told to load only SDSegSlicer (explicit modules) loads what it depends on, first."""
    application = slicer_standin.install({"SDSegSlicer": str(MODULE_SCRIPT)}, explicit_modules=["SDSegSlicer"])
    try:
        loaded = application._factory.loadedModuleNames()
        assert loaded[-1] == "SDSegSlicer" and {"Markups", "Segmentations"} <= set(loaded[:-1]), loaded
        assert panel().ui.segmentButton is not None
    finally:
        slicer_standin.uninstall()


def test_reload_runs_the_current_code_of_the_module_packages(application):
    lesion_volume()
    widget = panel()
    old_modules = {name: sys.modules[name] for name in ("SDSegSlicerGui.widget", "SDSegSlicerLib.session")}
    widget.ui.restartWorkerButton.click()
    old_client = widget.logic.client

    widget.onReload()  # the panel's Reload button (developer mode)
    reloaded = slicer.modules.SDSegSlicerWidget
    assert reloaded is not widget and not old_client.is_running(), "the old panel was not cleaned up"
    for name, module in old_modules.items():
        assert sys.modules[name] is not module, f"{name} was not reloaded"
    assert type(reloaded).__module__ == "SDSegSlicerGui.widget"
    assert type(reloaded) is sys.modules["SDSegSlicerGui.widget"].SDSegSlicerWidget
    assert reloaded.ui.segmentButton.enabled
    reloaded.ui.samplesSpinBox.value = 4
    assert reloaded.logic.getParameterNode().samples == 4


@pytest.mark.usefixtures("worker_env")
def test_the_modules_self_test_passes_in_the_standin(application):
    panel()
    slicer.selfTests["SDSegSlicer"](msec=0)


def test_a_missing_backend_is_said_in_the_status_line_and_enables_install(application, monkeypatch):
    """What README says the panel does when Slicer's Python lacks the backend: a status line and the button, no
    dialog of its own (the PyTorch extension asks to confirm once Install backend is clicked)."""
    from SDSegSlicerLib import backend_install

    monkeypatch.setattr(backend_install, "missing_modules", lambda: ["torch", "diffusers"])
    lesion_volume()
    widget = panel()
    assert widget.ui.backendStatusLabel.text.startswith("Missing in Slicer's Python: torch, diffusers.")
    assert widget.ui.installBackendButton.enabled
    assert not [w for w in QtWidgets.QApplication.topLevelWidgets() if isinstance(w, QtWidgets.QDialog)
                and w.isVisible()]
    widget.ui.pythonExecutableLineEdit.text = "/opt/cuda-env/bin/python"
    assert widget.ui.backendStatusLabel.text == "The worker runs in the Python interpreter above."
    assert not widget.ui.installBackendButton.enabled
