"""SDSegSlicer: diffusion-model lesion segmentation with uncertainty, as a 3D Slicer scripted module.

The module is thin: the GUI binds a parameter node, a QTimer drives SDSegSlicerLib's SegmentationSession (the model
runs in a separate worker process, so Slicer never freezes), and everything else lives in SDSegSlicerLib.
"""

import logging
import os
import shutil
import tempfile
import time
from typing import Annotated

import numpy as np
import qt
import slicer
import vtk
from slicer import vtkMRMLMarkupsFiducialNode, vtkMRMLMarkupsROINode, vtkMRMLScalarVolumeNode
from slicer.parameterNodeWrapper import Choice, Minimum, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from SDSegSlicerLib import backend_install, result_view, variance_display
from SDSegSlicerLib.prompts import DEFAULT_STOP_AFTER_EMPTY, WHOLE_VOLUME_WARNING
from SDSegSlicerLib.run import DEFAULT_SAMPLES, MAX_SAMPLES
from SDSegSlicerLib.session import BusyError, SegmentationSession
from SDSegSlicerLib.worker_client import WorkerError

TIMER_INTERVAL_MS = 100
TOKEN_SETTING = "SDSegSlicer/ServerToken"
POINT_EVENTS = (slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent, slicer.vtkMRMLMarkupsNode.PointRemovedEvent)


class SDSegSlicer(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "SDSeg Slicer"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["SDSegSlicer developers"]
        self.parent.helpText = """
Diffusion-model lesion segmentation with uncertainty. Pick a volume, optionally an ROI around the lesion, a model
and a number of samples, then click <b>Segment</b>. The result is a segmentation with a <i>consensus</i> segment and
one segment per plausible sample, plus a per-voxel sample-variance volume shown as an overlay. Browse the samples,
accept the one you prefer into an editable <i>accepted</i> segment, and export the results.
The model runs in a separate Python process (the worker): install the backend from the Model section, or point
the module to a Python interpreter that has it.
"""
        self.parent.acknowledgementText = """
Models written from the papers: ambiguous medical image segmentation with diffusion models (Christensen et al.),
SDSeg (Lin et al. 2024) and SegDiff (Amit et al. 2021).
"""


@parameterNodeWrapper
class SDSegSlicerParameterNode:
    """
    inputVolume - the volume to segment.
    lesionPoints - points clicked on the lesions (one lesion each).
    roi - without points, a box around the lesion; with points, the region they stay in.
    sliceStart, sliceEnd - axial slice range (inclusive); sliceEnd -1 means the last slice.
    stopAfterEmpty - a lesion's propagation stops after this many slices in a row without lesion.
    model - model name from the worker's list; empty means the worker's default model.
    samples - plausible segmentations drawn per slice.
    steps - sampling steps; 0 means the model's default.
    seed - random seed (same seed and inputs, same samples).
    device - "auto", "cuda" or "cpu".
    pythonExecutable - Python interpreter running the worker; empty means Slicer's Python.
    serverUrl - an `sdseg-slicer serve` server to use instead of a local worker (its token: Slicer's settings).
    varianceOpacity - opacity of the variance overlay.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    lesionPoints: vtkMRMLMarkupsFiducialNode
    roi: vtkMRMLMarkupsROINode
    sliceStart: Annotated[int, Minimum(0)] = 0
    sliceEnd: Annotated[int, Minimum(-1)] = -1
    stopAfterEmpty: Annotated[int, WithinRange(1, 50)] = DEFAULT_STOP_AFTER_EMPTY
    model: str = ""
    samples: Annotated[int, WithinRange(1, MAX_SAMPLES)] = DEFAULT_SAMPLES
    steps: Annotated[int, WithinRange(0, 1000)] = 0
    seed: Annotated[int, Minimum(0)] = 0
    device: Annotated[str, Choice(["auto", "cuda", "cpu"])] = "auto"
    pythonExecutable: str = ""
    serverUrl: str = ""
    varianceOpacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.5


#
# Widget
#


class SDSegSlicerWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._timer = None
        self._browser = None
        self._resultsShown = False
        self._shownOpacity = None
        self._installNeeded = False
        self._observedPoints = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SDSegSlicer.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = SDSegSlicerLogic()
        self._browser = result_view.SampleBrowser(self.logic)
        self._timer = qt.QTimer()
        self._timer.setInterval(TIMER_INTERVAL_MS)
        self._timer.connect("timeout()", self.onTimer)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        placeWidget = self.ui.lesionPlaceWidget
        placeWidget.buttonsVisible = False
        placeWidget.placeButton().show()
        placeWidget.placeButton().text = "Click lesion"
        placeWidget.placeMultipleMarkups = slicer.qSlicerMarkupsPlaceWidget.ForcePlaceMultipleMarkups
        self.ui.lesionPointsSelector.connect("currentNodeChanged(vtkMRMLNode*)", placeWidget.setCurrentNode)
        self._segmentShortcut = qt.QShortcut(qt.QKeySequence(qt.Qt.Key_Return), slicer.util.mainWindow())
        self._segmentShortcut.setEnabled(False)  # only while the module is shown
        self._segmentShortcut.connect("activated()", self.onSegmentShortcut)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelSelected)
        self.ui.pythonBrowseButton.connect("clicked()", self.onBrowsePython)
        # The fields' own texts: these handlers run before the parameter node has the new value.
        self.ui.pythonExecutableLineEdit.connect(
            "textChanged(QString)", lambda text: self.updateBackendStatus(text, self.ui.serverUrlLineEdit.text))
        self.ui.serverUrlLineEdit.connect(
            "textChanged(QString)", lambda url: self.updateBackendStatus(self.ui.pythonExecutableLineEdit.text, url))
        self.ui.serverTokenLineEdit.text = qt.QSettings().value(TOKEN_SETTING, "")
        self.ui.serverTokenLineEdit.connect("editingFinished()", self.onTokenEdited)
        self.ui.installBackendButton.connect("clicked()", self.onInstallBackend)
        self.ui.restartWorkerButton.connect("clicked()", self.onRestartWorker)
        self.ui.segmentButton.connect("clicked()", self.onSegmentOrCancel)
        self.ui.previousSampleButton.connect("clicked()", lambda: self.showSample(-1))
        self.ui.nextSampleButton.connect("clicked()", lambda: self.showSample(1))
        self.ui.showAllSamplesCheckBox.connect("toggled(bool)", lambda _: self.showSample())
        self.ui.acceptSampleButton.connect("clicked()", self.onAcceptSample)
        self.ui.showVarianceCheckBox.connect("toggled(bool)", self.onShowVariance)
        self.ui.exportSegNrrdButton.connect("clicked()", lambda: self.onExport("segmentation"))
        self.ui.exportNiftiButton.connect("clicked()", lambda: self.onExport("nifti"))
        self.ui.exportDicomSegButton.connect("clicked()", lambda: self.onExport("dicom"))
        self.ui.exportVarianceButton.connect("clicked()", lambda: self.onExport("variance"))
        self.ui.exportStatsButton.connect("clicked()", lambda: self.onExport("stats"))
        self.ui.exportDirectoryButton.directory = qt.QDir.homePath()

        self.initializeParameterNode()
        self.updateBackendStatus(self.ui.pythonExecutableLineEdit.text, self.ui.serverUrlLineEdit.text)

    def cleanup(self):
        self.removeObservers()
        self._segmentShortcut.setParent(None)
        if self._timer:
            self._timer.stop()
        if self.logic:
            self.logic.shutdown()

    def enter(self):
        self.initializeParameterNode()
        self._segmentShortcut.setEnabled(True)

    def exit(self):
        self._segmentShortcut.setEnabled(False)
        self.setParameterNode(None)

    def onSegmentShortcut(self):
        """Enter after clicking the lesion segments it (never cancels a run)."""
        if not self.logic.is_running() and self.ui.segmentButton.enabled:
            self.onSegmentOrCancel()

    def onSceneStartClose(self, caller, event):
        self._timer.stop()
        self.logic.abandon_run()
        self.ui.segmentButton.text = "Segment"
        self.setParameterNode(None)
        self.clearResults()

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    # --- parameter node and buttons --------------------------------------------------------------------------

    def initializeParameterNode(self):
        parameterNode = self.logic.getParameterNode()
        if not parameterNode.inputVolume:  # the first image volume (labelmaps are scalar volumes too)
            firstVolume = next((node for node in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
                                if not node.IsA("vtkMRMLLabelMapVolumeNode")), None)
            if firstVolume:
                parameterNode.inputVolume = firstVolume
        if not parameterNode.lesionPoints:  # "Click lesion" works at once
            parameterNode.lesionPoints = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode",
                                                                            "lesion points")
        self.setParameterNode(parameterNode)

    def setParameterNode(self, parameterNode):
        if not parameterNode:
            self.observePoints(None)
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
        self._parameterNode = parameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
            self.onParameterNodeModified()

    def onParameterNodeModified(self, caller=None, event=None):
        if not self._parameterNode:
            return
        self.observePoints(self._parameterNode.lesionPoints)
        self.updateButtons()
        self.selectModelInCombo(self._parameterNode.model)
        opacity = self._parameterNode.varianceOpacity
        if opacity != self._shownOpacity and self.logic.has_result():  # only an opacity change touches views
            variance_display.set_variance_opacity(self.logic.result_variance, opacity)
            self._shownOpacity = opacity

    def observePoints(self, pointsNode):
        """Keep the mode line up to date while the user clicks or deletes lesion points."""
        if pointsNode is self._observedPoints:
            return
        for event in POINT_EVENTS:
            if self._observedPoints is not None:
                self.removeObserver(self._observedPoints, event, self.onPointsModified)
            if pointsNode is not None:
                self.addObserver(pointsNode, event, self.onPointsModified)
        self._observedPoints = pointsNode

    def onPointsModified(self, caller=None, event=None):
        self.updateButtons()

    def updateButtons(self):
        """Enable what can be done now: nothing that would start a second action while one is in progress."""
        busy, running = self.logic.busy_reason is not None, self.logic.is_running()
        hasVolume = bool(self._parameterNode and self._parameterNode.inputVolume)
        self.ui.segmentButton.enabled = running or (hasVolume and not busy)
        self.ui.segmentButton.toolTip = (
            "Cancel the run; slices already done are kept." if running
            else f"Please wait: {self.logic.busy_reason}." if busy
            else "Segment the volume." if hasVolume else "Select an input volume first.")
        self.ui.restartWorkerButton.enabled = not busy and not running
        self.ui.installBackendButton.enabled = self._installNeeded and not busy and not running
        self.ui.modeLabel.text = self.describeMode()

    def describeMode(self):
        """What Segment will do with the current inputs."""
        if not self._parameterNode:
            return ""
        points = self._parameterNode.lesionPoints
        count = points.GetNumberOfControlPoints() if points else 0
        if count:
            return f"Segments {count} lesion(s), each from its point outward" + (
                " inside the box." if self._parameterNode.roi else ".")
        if self._parameterNode.roi:
            return "Segments the lesion in the box, from its middle slice outward."
        return WHOLE_VOLUME_WARNING

    # --- worker, models and backend --------------------------------------------------------------------------

    def setStatus(self, message, error=False):
        self.ui.statusLabel.text = message
        self.ui.statusLabel.setStyleSheet("color: #d03030;" if error else "")
        if error:
            logging.warning(f"SDSegSlicer: {message}")

    def onTokenEdited(self):
        qt.QSettings().setValue(TOKEN_SETTING, self.ui.serverTokenLineEdit.text)

    def ensureWorker(self):
        """Start the worker (or connect to the server) if needed; fill the model list and device from its hello.
        False on failure."""
        pythonExecutable = self._parameterNode.pythonExecutable.strip()
        serverUrl = self._parameterNode.serverUrl.strip()
        if self.logic.worker_ready(pythonExecutable, serverUrl):
            return True
        self.setStatus(f"Connecting to {serverUrl}..." if serverUrl
                       else "Starting the worker (loading PyTorch, may take a minute the first time)...")
        qt.QApplication.setOverrideCursor(qt.Qt.BusyCursor)
        try:
            # The GUI keeps processing events meanwhile; the logic is busy, so no second start, run or install.
            hello = self.logic.startWorker(pythonExecutable, onWait=self.whileWaiting, serverUrl=serverUrl,
                                           token=self.ui.serverTokenLineEdit.text or None)
        except (WorkerError, BusyError) as error:  # says what to do (install the backend, another Python, ...)
            self.setStatus(str(error), error=True)
            return False
        finally:
            qt.QApplication.restoreOverrideCursor()
            self.updateButtons()
        if not self._parameterNode:  # the user left the module or closed the scene while the worker started
            return False
        self.setStatus("")
        self.fillModelCombo(hello.get("models", []))
        self.ui.gpuLabel.text = result_view.describe_device(hello)
        return True

    def whileWaiting(self):
        self.updateButtons()
        slicer.app.processEvents()

    def fillModelCombo(self, models):
        combo = self.ui.modelComboBox
        wasBlocked = combo.blockSignals(True)
        combo.clear()
        for choice in result_view.model_choices(models):
            combo.addItem(choice["label"], choice["name"])
            combo.setItemData(combo.count - 1, choice["card"], qt.Qt.ToolTipRole)
        combo.blockSignals(wasBlocked)
        name = self._parameterNode.model
        if name and combo.findData(name) < 0:  # e.g. a scene saved with a model this worker does not have
            self._parameterNode.model = ""
            self.setStatus(f"Model '{name}' is not installed for this worker: the default model is selected.",
                           error=True)
        self.selectModelInCombo(self._parameterNode.model)

    def selectModelInCombo(self, name):
        combo = self.ui.modelComboBox
        index = combo.findData(name)
        if index >= 0 and index != combo.currentIndex:
            wasBlocked = combo.blockSignals(True)
            combo.currentIndex = index
            combo.blockSignals(wasBlocked)
        combo.toolTip = combo.itemData(combo.currentIndex, qt.Qt.ToolTipRole) or "Installed models."

    def onModelSelected(self, index):
        if self._parameterNode and index >= 0:
            self._parameterNode.model = self.ui.modelComboBox.itemData(index)

    def onBrowsePython(self):
        path = qt.QFileDialog.getOpenFileName(
            slicer.util.mainWindow(), "Python interpreter with the SDSeg backend", self._parameterNode.pythonExecutable)
        if path:
            self._parameterNode.pythonExecutable = path

    def updateBackendStatus(self, pythonExecutable, serverUrl=""):
        text, self._installNeeded = backend_install.status(pythonExecutable, serverUrl)
        self.ui.backendStatusLabel.text = text
        self.updateButtons()

    def onInstallBackend(self):
        self.setStatus("Installing the backend into Slicer's Python...")
        qt.QApplication.setOverrideCursor(qt.Qt.WaitCursor)
        try:
            installed = self.logic.installBackend(onStart=self.updateButtons)
        except BusyError as error:
            self.setStatus(str(error), error=True)
            return
        except Exception as error:
            if type(error).__name__ == "InstallationAbortedError":  # the user said no (Slicer 5.10+ installer)
                self.setStatus("Installation cancelled.")
                return
            logging.exception("SDSegSlicer: backend installation failed")
            self.setStatus(f"Installation failed: {error}", error=True)
            return
        finally:
            qt.QApplication.restoreOverrideCursor()
            self.updateBackendStatus(self.ui.pythonExecutableLineEdit.text, self.ui.serverUrlLineEdit.text)
        self.setStatus("Backend installed." if installed else "Installation cancelled.")

    def onRestartWorker(self):
        if self.logic.is_running() or self.logic.busy_reason is not None:
            self.setStatus("Wait for the current action (or cancel the run) before restarting the worker.",
                           error=True)
            return
        self.logic.stop_worker()
        self.ensureWorker()

    # --- run -------------------------------------------------------------------------------------------------

    def onSegmentOrCancel(self):
        if self.logic.is_running():
            self.logic.cancel_run()
            self.setStatus("Cancelling: slices already segmented are kept.")
            return
        try:  # the cheap checks first: an input error never costs a worker start or the result on screen
            job = self.logic.buildJob(self._parameterNode)
        except ValueError as error:  # bad ROI / slice range / volume: the message says what to do
            self.setStatus(str(error), error=True)
            return
        if not self.ensureWorker():
            return
        try:
            self.logic.start_run(job, self._parameterNode.inputVolume)
        except (ValueError, OSError, WorkerError, BusyError) as error:  # input not writable, worker gone, ...
            self.setStatus(f"The segmentation did not start: {error}", error=True)
            return
        self.clearResults()
        self.ui.segmentButton.text = "Cancel"
        self.ui.progressBar.value = 0
        self.ui.progressLabel.text = "Starting..."
        self.setStatus("")
        self.updateButtons()
        self._timer.start()

    def onTimer(self):
        state = self.logic.process_run()
        self.updateProgress(self.logic.run.progress)
        if self.logic.has_result() and not self._resultsShown:
            self.showResults()  # slices stream in while the run goes on
        if state != "running":
            self._timer.stop()
            self.onRunFinished(state)

    def updateProgress(self, progress):
        self.ui.progressBar.maximum = max(progress["total"], 1)
        self.ui.progressBar.value = progress["done"]
        self.ui.progressLabel.text = result_view.progress_text(progress)

    def onRunFinished(self, state):
        self.ui.segmentButton.text = "Segment"
        self.updateButtons()
        statistics = self.logic.statistics() if self.logic.has_result() else None
        self.ui.progressLabel.text, status, error = result_view.finished_texts(self.logic.run, statistics)
        self.setStatus(status, error=error)
        if self.logic.has_result():
            self.showResults()
            self.updateStats()
        self.logic.finish_run()

    # --- results ---------------------------------------------------------------------------------------------

    def clearResults(self):
        self._resultsShown = False
        self._browser.reset()
        self.ui.resultsCollapsibleButton.enabled = False
        self.ui.exportCollapsibleButton.enabled = False
        self.ui.statsTable.clear()
        self.ui.statsTable.setRowCount(0)
        self.ui.sampleLabel.text = "Sample -"

    def showResults(self):
        first = not self._resultsShown
        self._resultsShown = True
        self.ui.resultsCollapsibleButton.enabled = True
        self.ui.exportCollapsibleButton.enabled = True
        self.showSample()
        if first:  # once per run: from then on the layers are the user's
            self.logic.prepareVarianceOverlay(self._parameterNode.inputVolume if self._parameterNode else None)
            self.onShowVariance(self.ui.showVarianceCheckBox.checked)

    def showSample(self, step=0):
        showAll = self.ui.showAllSamplesCheckBox.checked
        self.ui.sampleLabel.text = self._browser.show(self._browser.index + step, "all" if showAll else "one")
        self.ui.previousSampleButton.enabled = self.ui.nextSampleButton.enabled = not showAll
        self.ui.acceptSampleButton.enabled = not showAll and not self.logic.is_running()

    def onAcceptSample(self):
        try:
            self.setStatus(self._browser.accept())
        except ValueError as error:
            self.setStatus(str(error), error=True)

    def onShowVariance(self, show):
        if not self.logic.has_result() or self.logic.result_variance.GetScene() is None or not self._parameterNode:
            return  # no result yet, or the variance volume was deleted: leave the slice views alone
        if show:
            variance_display.show_variance_overlay(self.logic.result_variance, self._parameterNode.varianceOpacity)
        else:
            variance_display.hide_variance_overlay(self.logic.result_variance)
        self._shownOpacity = self._parameterNode.varianceOpacity

    def updateStats(self):
        try:
            header, rows = result_view.statistics_text_table(self.logic.statistics())
        except ValueError as error:
            self.setStatus(str(error), error=True)
            return
        table = self.ui.statsTable
        table.clear()
        table.setColumnCount(len(header))
        table.setHorizontalHeaderLabels(header)
        table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            for c, text in enumerate(row):
                table.setItem(r, c, qt.QTableWidgetItem(text))
        table.resizeColumnsToContents()

    def onExport(self, what):
        folder = self.ui.exportDirectoryButton.directory
        try:
            path = self.logic.export_result(what, folder)
        except (OSError, ValueError) as error:  # unwritable folder, missing highdicom, not from DICOM, ...
            self.setStatus(f"Export failed: {error}", error=True)
            return
        except Exception as error:  # anything else: a status line for the user, the traceback in the log
            logging.exception(f"SDSegSlicer: {what} export failed")
            self.setStatus(f"Export failed ({type(error).__name__}: {error}); details in the Python console.",
                           error=True)
            return
        self.setStatus(f"Exported {path}")


#
# Logic
#


class SDSegSlicerLogic(ScriptedLoadableModuleLogic, SegmentationSession):
    """SDSegSlicerLib's SegmentationSession on Slicer's scene, plus the parameter node and the installers."""

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        SegmentationSession.__init__(self, slicer.mrmlScene)

    def getParameterNode(self):
        return SDSegSlicerParameterNode(super().getParameterNode())

    def buildJob(self, parameterNode):
        """The segment job of the parameters (ValueError says what to fix)."""
        return self.build_job(parameterNode.inputVolume, points_node=parameterNode.lesionPoints,
                              roi_node=parameterNode.roi, slice_start=parameterNode.sliceStart,
                              slice_end=parameterNode.sliceEnd, stop_after_empty=parameterNode.stopAfterEmpty,
                              model=parameterNode.model, samples=parameterNode.samples, steps=parameterNode.steps,
                              seed=parameterNode.seed, device=parameterNode.device)

    def startWorker(self, pythonExecutable="", onWait=None, serverUrl="", token=None):
        """(Re)start the worker, or connect to a server; an external interpreter runs in the environment Slicer
        was started with (not with Slicer's own library paths, which would break its packages)."""
        environment = slicer.util.startupEnvironment() if pythonExecutable else None
        return self.start_worker(pythonExecutable, on_wait=onWait, external_env=environment, server_url=serverUrl,
                                 token=token)

    def installBackend(self, onStart=None):
        """Install torch (through the PyTorch extension) and the backend packages into Slicer's Python, never
        replacing packages Slicer ships. Returns False if the user cancelled the PyTorch installation."""
        if self.is_running():
            raise BusyError("A segmentation is running: wait for it or cancel it first.")
        with self.busy("the backend is being installed"):
            if onStart is not None:
                onStart()
            self.stop_worker()  # it may hold the packages pip replaces
            if "torch" in backend_install.missing_modules():
                try:
                    import PyTorchUtils
                except ImportError:
                    raise ValueError("PyTorch is needed: install the 'PyTorch' extension from the Extensions "
                                     "Manager, restart Slicer, then click 'Install backend' again.") from None
                if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=True) is None:
                    return False
            constraintsDir = tempfile.mkdtemp(prefix="SDSegSlicer-pip-")
            try:
                slicer.util.pip_install(backend_install.pip_arguments(os.path.join(constraintsDir, "constraints.txt")))
            finally:
                shutil.rmtree(constraintsDir, ignore_errors=True)
            return True

    def prepareVarianceOverlay(self, inputVolume):
        """Perceptual colour map on the variance volume; the input volume as background where a view has none."""
        result_view.prepare_variance_overlay(slicer.mrmlScene, self.result_variance, inputVolume)


#
# Test
#


class SDSegSlicerTest(ScriptedLoadableModuleTest):
    """Self-test inside Slicer: a real worker on CPU with the bundled default model, on an oblique phantom under a
    rotated parent transform; the flows pytest checks outside Slicer (SDSegSlicerLib on slicer-core), here through
    the module's widget and logic."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_SegmentPhantomOnCpu()
        self.setUp()
        self.test_ClickLesion()
        self.setUp()
        self.test_WidgetKeepsResultsAndLayers()

    def makePhantom(self):
        """Oblique 64x64x6 volume under a rotated, translated parent transform: noisy background with a bright
        ellipse, like a lesion on a CT slice."""
        rng = np.random.default_rng(0)
        k, j, i = np.mgrid[0:6, 0:64, 0:64]
        lesion = ((i - 34) / 11.0) ** 2 + ((j - 30) / 8.0) ** 2 < 1.0
        voxels = (rng.normal(40.0, 10.0, size=lesion.shape) + 80.0 * lesion).astype(np.float32)
        angle = np.radians(20.0)
        rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
        ijkToRas = np.diag([0.8, 0.8, 2.5, 1.0])
        ijkToRas[:3, :3] = rotation @ ijkToRas[:3, :3]
        ijkToRas[:3, 3] = (-20.0, 10.0, 35.0)
        volume = slicer.util.addVolumeFromArray(voxels, ijkToRAS=ijkToRas, name="phantom")
        transform = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "moved")
        parentToWorld = np.eye(4)
        parentToWorld[:3, :3] = rotation.T
        parentToWorld[:3, 3] = (7.0, -4.0, 2.0)
        transform.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(parentToWorld))
        volume.SetAndObserveTransformNodeID(transform.GetID())
        return volume

    def segmentPhantom(self, logic, volume):
        parameterNode = logic.getParameterNode()
        parameterNode.inputVolume = volume
        parameterNode.samples = 2
        parameterNode.device = "cpu"
        parameterNode.sliceStart = 2
        parameterNode.sliceEnd = 3
        self.runToTheEnd(logic, logic.buildJob(parameterNode), volume)
        logic.finish_run()
        return parameterNode

    def runToTheEnd(self, logic, job, volume):
        run = logic.start_run(job, volume)
        with open(run.job["volume"], "rb") as header:  # the worker's copy is written uncompressed (fast)
            self.assertIn(b"encoding: raw", header.read(1000))
        deadline = time.monotonic() + 600
        while logic.process_run() == "running":
            self.assertLess(time.monotonic(), deadline, "the run did not finish in 10 minutes")
            slicer.app.processEvents()
            time.sleep(0.05)
        self.assertEqual(run.state, "done", run.error_message)
        return run

    def test_SegmentPhantomOnCpu(self):
        from SDSegSlicerLib.segmentation_writer import read_segment_arrays, segment_ids_by_name

        self.delayDisplay("Starting the worker")
        volume = self.makePhantom()
        logic = SDSegSlicerLogic()
        try:
            hello = logic.startWorker("")
            self.assertEqual(hello["protocol"], 2)
            self.assertTrue(hello["models"], "the worker lists no model: the bundled default model is missing")
            with self.assertRaises(BusyError):  # what the GUI could do while it processes events in a wait
                logic.startWorker("", onWait=lambda: logic.startWorker(""))
            hello = logic.startWorker("")

            self.delayDisplay("Segmenting slices 2..3 with 2 samples")
            self.segmentPhantom(logic, volume)
            segmentation = logic.result_segmentation
            self.assertEqual(segmentation.GetTransformNodeID(), volume.GetTransformNodeID())
            byName = segment_ids_by_name(segmentation)
            self.assertEqual(sorted(byName), ["consensus", "sample 1", "sample 2"])
            self.assertEqual(len(logic.sample_segment_ids()), 2)

            variance = logic.result_variance
            self.assertEqual(variance.GetImageData().GetDimensions(), volume.GetImageData().GetDimensions())
            np.testing.assert_allclose(self.ijkToRas(variance), self.ijkToRas(volume), atol=1e-5)
            values = slicer.util.arrayFromVolume(variance)
            self.assertTrue(np.all((values >= 0) & (values <= 0.25 + 1e-6)))
            self.assertEqual(float(values[[0, 1, 4, 5]].max()), 0.0)  # slices outside the range are untouched

            # Read back in the volume's frame (the parent transform applied once): statistics and accept.
            sample1 = read_segment_arrays(segmentation, [byName["sample 1"]])[0][0]
            sampleVoxels = {row["segment"]: row["voxels"] for row in logic.statistics()["segments"]}
            self.assertEqual(sampleVoxels["sample 1"], int(sample1.sum()))
            self.assertEqual(logic.accept_sample(byName["sample 1"]), "accepted")
            self.assertEqual(logic.accept_sample(byName["sample 2"]), "accepted 2")
            accepted = segment_ids_by_name(segmentation)["accepted"]
            np.testing.assert_array_equal(read_segment_arrays(segmentation, [accepted])[0][0], sample1)

            exportDir = tempfile.mkdtemp(prefix="SDSegSlicerTest-")
            try:
                for what in ("segmentation", "nifti", "variance", "stats"):
                    path = logic.export_result(what, exportDir)
                    self.assertGreater(os.path.getsize(path), 0, f"{what} export wrote nothing")
            finally:
                shutil.rmtree(exportDir, ignore_errors=True)
            self.delayDisplay("Test passed")
        finally:
            logic.shutdown()

    def test_ClickLesion(self):
        """A point on the phantom's lesion (under the rotated parent transform): the prompted slice comes first and
        holds a lesion; a point in the background finds none."""
        from SDSegSlicerLib.prompts import NO_LESION, lesion_lines

        volume = self.makePhantom()
        ijkToWorld = vtk.vtkGeneralTransform()
        slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(volume.GetParentTransformNode(), None, ijkToWorld)
        ijkToRas = self.ijkToRas(volume)
        points = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "lesion points")
        for ijk in ((34.0, 30.0, 3.0), (5.0, 60.0, 3.0)):  # the lesion's centre; background
            points.AddControlPointWorld(ijkToWorld.TransformPoint((ijkToRas @ [*ijk, 1.0])[:3]))
        logic = SDSegSlicerLogic()
        try:
            logic.startWorker("")
            parameterNode = logic.getParameterNode()
            parameterNode.inputVolume, parameterNode.lesionPoints = volume, points
            parameterNode.samples, parameterNode.device = 2, "cpu"
            job = logic.buildJob(parameterNode)
            np.testing.assert_allclose(job["prompt"]["lesions"][0]["point_ijk"], [34, 30, 3], atol=1e-3)
            run = self.runToTheEnd(logic, job, volume)
            lines = lesion_lines(logic.statistics(), run.accepted["prompt"])
            self.assertTrue(lines[0].startswith("lesion 1: ") and NO_LESION not in lines[0], lines)
            self.assertEqual(lines[1], f"lesion 2: {NO_LESION}")
        finally:
            logic.shutdown()

    @staticmethod
    def ijkToRas(volume):
        matrix = vtk.vtkMatrix4x4()
        volume.GetIJKToRASMatrix(matrix)
        return slicer.util.arrayFromVTKMatrix(matrix)

    def test_WidgetKeepsResultsAndLayers(self):
        """A bad slice range keeps the result on screen; parameter changes leave the user's slice layers alone;
        the backend status follows the interpreter field's text."""
        slicer.util.selectModule("SDSegSlicer")
        widget = slicer.modules.sdsegslicer.widgetRepresentation().self()
        volume = self.makePhantom()
        widget.logic.startWorker("")
        parameterNode = self.segmentPhantom(widget.logic, volume)
        widget.showResults()
        result = widget.logic.result_segmentation

        userLayer = slicer.util.addVolumeFromArray(np.zeros((2, 3, 4), np.float32), name="user layer")
        composite = slicer.util.getNodesByClass("vtkMRMLSliceCompositeNode")[0]
        composite.SetForegroundVolumeID(userLayer.GetID())
        composite.SetForegroundOpacity(0.3)
        parameterNode.seed = 7  # any parameter change
        parameterNode.varianceOpacity = 0.9  # an opacity change touches only the views showing the variance
        self.assertEqual(composite.GetForegroundVolumeID(), userLayer.GetID())
        self.assertAlmostEqual(composite.GetForegroundOpacity(), 0.3)

        parameterNode.sliceStart, parameterNode.sliceEnd = 5, 1
        widget.onSegmentOrCancel()
        self.assertIn("Slice range", widget.ui.statusLabel.text)
        self.assertIs(widget.logic.result_segmentation, result)
        self.assertTrue(widget.ui.resultsCollapsibleButton.enabled)

        widget.ui.pythonExecutableLineEdit.text = "/opt/other/python"
        self.assertEqual(widget.ui.backendStatusLabel.text, "The worker runs in the Python interpreter above.")
        widget.ui.pythonExecutableLineEdit.text = ""
        self.assertNotEqual(widget.ui.backendStatusLabel.text, "The worker runs in the Python interpreter above.")
        widget.logic.shutdown()
