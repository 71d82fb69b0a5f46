"""SDSegSlicerWidget: the module panel (Qt). It binds the .ui to the parameter node and drives the logic from a
QTimer; what it shows comes from SDSegSlicerLib.result_view, as in the web app."""

import logging
import sys

import qt
import slicer
import vtk
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleWidget
from slicer.util import VTKObservationMixin

from SDSegSlicerLib import backend_install, result_view, variance_display
from SDSegSlicerLib.prompts import WHOLE_VOLUME_WARNING
from SDSegSlicerLib.session import BusyError
from SDSegSlicerLib.worker_client import WorkerError

from .logic import SDSegSlicerLogic

TIMER_INTERVAL_MS = 100
WARM_WORKER_POLL_MS = 200  # how often the panel looks for the hello of a worker started ahead of Segment
TOKEN_SETTING = "SDSegSlicer/ServerToken"
# The module's own packages: Slicer's reload re-executes only SDSegSlicer.py, which imports them anew once forgotten.
MODULE_PACKAGES = ("SDSegSlicerGui", "SDSegSlicerLib")


def pointEvents():
    """The markups events that change the number of defined lesion points (the Markups module's classes are in
    `slicer` once it is loaded: a module dependency, see SDSegSlicer.py)."""
    markups = slicer.vtkMRMLMarkupsNode
    return (markups.PointPositionDefinedEvent, markups.PointPositionUndefinedEvent, markups.PointRemovedEvent)


def forgetModulePackages():
    """Drop SDSegSlicerGui and SDSegSlicerLib from the imported modules, so that re-executing SDSegSlicer.py
    (Reload) runs their current code."""
    for name in [n for n in sys.modules if n.split(".")[0] in MODULE_PACKAGES]:
        del sys.modules[name]


class SDSegSlicerWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._timer = None
        self._warmTimer = None
        self._warmingWith = None  # the interpreter of the worker started ahead of Segment
        self._warmUpFailedWith = None  # the interpreter whose warm start failed: not tried again on every change
        self._browser = None
        self._resultsShown = False
        self._runNotes = result_view.RunNotes()
        self._shownOpacity = None
        self._installNeeded = False
        self._observedPoints = None
        self._segmentShortcuts = []
        self._statistics = None  # the end-of-run statistics being computed (stats.BackgroundStatistics)

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
        self._warmTimer = qt.QTimer()
        self._warmTimer.setInterval(WARM_WORKER_POLL_MS)
        self._warmTimer.connect("timeout()", self.onWarmTimer)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        placeWidget = self.ui.lesionPlaceWidget
        placeWidget.buttonsVisible = False
        placeWidget.placeButton().show()
        placeWidget.placeButton().text = "Click lesion"
        placeWidget.placeMultipleMarkups = slicer.qSlicerMarkupsPlaceWidget.ForcePlaceMultipleMarkups
        self.ui.lesionPointsSelector.connect("currentNodeChanged(vtkMRMLNode*)", placeWidget.setCurrentNode)
        self.addSegmentShortcuts()
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

        # The backend's status first: a panel opened on a volume starts the worker only when the backend is there.
        self.updateBackendStatus(self.ui.pythonExecutableLineEdit.text, self.ui.serverUrlLineEdit.text)
        self.initializeParameterNode()

    def addSegmentShortcuts(self):
        """Enter in a slice view segments (after clicking the lesion there): one shortcut per slice view, active
        only while that view has the focus, so that Enter in a text or number field stays that field's."""
        layoutManager = slicer.app.layoutManager()
        for viewName in layoutManager.sliceViewNames():
            shortcut = qt.QShortcut(qt.QKeySequence(qt.Qt.Key_Return), layoutManager.sliceWidget(viewName).sliceView())
            shortcut.setContext(qt.Qt.WidgetWithChildrenShortcut)
            shortcut.setEnabled(False)  # only while the module is shown
            shortcut.connect("activated()", self.onSegmentShortcut)
            self._segmentShortcuts.append(shortcut)

    def cleanup(self):
        self.removeObservers()
        for shortcut in self._segmentShortcuts:
            shortcut.setParent(None)
        self._segmentShortcuts = []
        for timer in (self._timer, self._warmTimer):
            if timer:
                timer.stop()
        if self.logic:
            self.logic.shutdown(on_wait=slicer.app.processEvents)  # the application stays responsive meanwhile

    def onReload(self):
        forgetModulePackages()
        ScriptedLoadableModuleWidget.onReload(self)

    def enter(self):
        self.initializeParameterNode()
        for shortcut in self._segmentShortcuts:
            shortcut.setEnabled(True)

    def exit(self):
        for shortcut in self._segmentShortcuts:
            shortcut.setEnabled(False)
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
        if self._parameterNode.inputVolume:
            self.warmUpWorker()
        self.selectModelInCombo(self._parameterNode.model)
        opacity = self._parameterNode.varianceOpacity
        if opacity != self._shownOpacity and self.logic.has_result():  # only an opacity change touches views
            variance_display.set_variance_opacity(self.logic.result_variance, opacity)
            self._shownOpacity = opacity

    def observePoints(self, pointsNode):
        """Keep the mode line up to date while the user clicks or deletes lesion points."""
        if pointsNode is self._observedPoints:
            return
        for event in pointEvents():
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
        count = points.GetNumberOfDefinedControlPoints() if points else 0  # not the place mode's preview point
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

    def warmUpWorker(self):
        """With a volume to segment, start the local worker ahead of Segment (it loads PyTorch meanwhile) and keep
        it for every run; the timer shows its models and device when it is ready. Not when the backend is missing
        (the status line says to install it), a server is used, or it failed with this interpreter already (Segment
        and Restart worker still try)."""
        pythonExecutable = self._parameterNode.pythonExecutable.strip()
        if self._installNeeded or self._parameterNode.serverUrl.strip() or pythonExecutable == self._warmUpFailedWith:
            return
        try:
            launched = self.logic.warmUpWorker(pythonExecutable)
        except WorkerError as error:
            self.warmUpFailed(error, pythonExecutable)
            return
        if launched:
            self._warmingWith = pythonExecutable
            self._warmTimer.start()

    def warmUpFailed(self, error, pythonExecutable):
        """The status line says why the worker could not start; no other warm start with ``pythonExecutable``."""
        self._warmTimer.stop()
        self._warmUpFailedWith = pythonExecutable
        self.setStatus(str(error), error=True)

    def onWarmTimer(self):
        try:
            hello = self.logic.poll_warm_worker()
        except WorkerError as error:  # it ended on start: the same line Segment would show
            self.warmUpFailed(error, self._warmingWith)
            return
        if hello is not None or self.logic.client is None:  # ready, or stopped meanwhile (Restart worker, cleanup)
            self._warmTimer.stop()
        if hello is not None and self._parameterNode:
            self.showWorker(hello)

    def ensureWorker(self, restart=False):
        """Start the worker (or connect to the server) if needed, or ``restart`` it; fill the model list and device
        from its hello. False on failure."""
        pythonExecutable = self._parameterNode.pythonExecutable.strip()
        serverUrl = self._parameterNode.serverUrl.strip()
        if not restart and self.logic.worker_ready(pythonExecutable, serverUrl):
            return True
        self.setStatus(f"Connecting to {serverUrl}..." if serverUrl
                       else "Starting the worker (loading PyTorch, may take a minute the first time)...")
        qt.QApplication.setOverrideCursor(qt.Qt.BusyCursor)
        try:
            # The GUI keeps processing events meanwhile; the logic is busy, so no second start, run or install.
            hello = self.logic.startWorker(pythonExecutable, onWait=self.whileWaiting, serverUrl=serverUrl,
                                           token=self.ui.serverTokenLineEdit.text or None, restart=restart)
        except (WorkerError, BusyError) as error:  # says what to do (install the backend, another Python, ...)
            self.setStatus(str(error), error=True)
            return False
        finally:
            qt.QApplication.restoreOverrideCursor()
            self.updateButtons()
        if not self._parameterNode:  # the user left the module or closed the scene while the worker started
            return False
        self.setStatus("")
        self.showWorker(hello)
        return True

    def showWorker(self, hello):
        """The models and the device of the worker's hello."""
        self.fillModelCombo(hello.get("models", []))
        self.ui.gpuLabel.text = result_view.describe_device(hello)

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
            installed = self.logic.installBackend(onStart=self.updateButtons, onWait=self.whileWaiting)
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
        self.ensureWorker(restart=True)  # the old worker is stopped while the panel stays responsive

    # --- run -------------------------------------------------------------------------------------------------

    def onSegmentOrCancel(self):
        if self.logic.is_running():
            self.logic.cancel_run()
            self.setStatus("Cancelling: slices already segmented are kept.")
            return
        self.ui.lesionPlaceWidget.setPlaceModeEnabled(False)  # the clicking is over: no preview point in the views
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
        if self._statistics is not None:
            self.advanceStatistics()
            return
        state = self.logic.process_run()
        self.updateProgress(self.logic.run.progress)
        status = self._runNotes.status(self.logic.run, self.ui.statusLabel.text)  # said at once, not at the end
        if status is not None:
            self.setStatus(status)
        if self.logic.has_result() and not self._resultsShown:
            self.showResults()  # slices stream in while the run goes on
        if state != "running":
            self.onRunFinished()

    def updateProgress(self, progress):
        self.ui.progressBar.maximum = max(progress["total"], 1)
        self.ui.progressBar.value = progress["done"]
        self.ui.progressLabel.text = result_view.progress_text(progress)

    def onRunFinished(self):
        """The run ended: the result on screen, its statistics computed in a thread (the timer follows them)."""
        self.ui.segmentButton.text = "Segment"
        self.updateButtons()
        if not self.logic.has_result():
            self._timer.stop()
            self.showRunEnd(None)
            return
        self.showResults()
        try:
            self._statistics = self.logic.statistics_in_background()
        except ValueError as error:  # e.g. the user deleted the result's segments
            self._timer.stop()
            self.setStatus(str(error), error=True)
            self.showRunEnd(None)
            return
        self.ui.progressLabel.text = "Computing the statistics..."

    def advanceStatistics(self):
        try:
            if not self._statistics.step():
                return
            statistics = self._statistics.result()
        except ValueError as error:  # the result was edited meanwhile into something without samples
            self.setStatus(str(error), error=True)
            statistics = None
        self._statistics = None
        self._timer.stop()
        self.showRunEnd(statistics)

    def showRunEnd(self, statistics):
        """What the finished run gave: progress and status lines, the statistics table."""
        self.ui.progressLabel.text, status, error = result_view.finished_texts(self.logic.run, statistics)
        self.setStatus(status, error=error)
        if statistics is not None:
            self.updateStats(statistics)
        self.logic.finish_run()

    # --- results ---------------------------------------------------------------------------------------------

    def clearResults(self):
        self._statistics = None  # a computation still going ends unseen
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

    def updateStats(self, statistics):
        header, rows = result_view.statistics_text_table(statistics)
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
