"""SDSegSlicer: diffusion-model lesion segmentation with uncertainty, as a 3D Slicer scripted module.

The module is thin: the GUI binds a parameter node, a QTimer drives SDSegSlicerLib's SegmentationRun (the model
runs in a separate worker process, so Slicer never freezes), and everything else lives in SDSegSlicerLib.
"""

import logging
import os
import re
import shutil
import tempfile
import time
from typing import Annotated

import numpy as np
import qt
import slicer
import vtk
from slicer import vtkMRMLMarkupsROINode, vtkMRMLScalarVolumeNode
from slicer.parameterNodeWrapper import Choice, Minimum, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from SDSegSlicerLib import export, module_logic, stats
from SDSegSlicerLib.run import SegmentationRun, format_duration
from SDSegSlicerLib.segmentation_writer import CONSENSUS_SEGMENT_NAME, segment_ids_by_name
from SDSegSlicerLib.worker_client import WorkerClient, WorkerError

WORKER_START_TIMEOUT_S = 180
TIMER_INTERVAL_MS = 100


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
    roi - optional box around the lesion; None segments the whole volume.
    sliceStart, sliceEnd - axial slice range (inclusive); sliceEnd -1 means the last slice.
    model - model name from the worker's list; empty means the worker's default model.
    samples - plausible segmentations drawn per slice.
    steps - sampling steps; 0 means the model's default.
    seed - random seed (same seed and inputs, same samples).
    device - "auto", "cuda" or "cpu".
    pythonExecutable - Python interpreter running the worker; empty means Slicer's Python.
    varianceOpacity - opacity of the variance overlay.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    roi: vtkMRMLMarkupsROINode
    sliceStart: Annotated[int, Minimum(0)] = 0
    sliceEnd: Annotated[int, Minimum(-1)] = -1
    model: str = ""
    samples: Annotated[int, WithinRange(1, 100)] = 8
    steps: Annotated[int, WithinRange(0, 1000)] = 0
    seed: Annotated[int, Minimum(0)] = 0
    device: Annotated[str, Choice(["auto", "cuda", "cpu"])] = "auto"
    pythonExecutable: str = ""
    varianceOpacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.5


def describeDevice(hello):
    """One line about the worker's compute device, from its hello message."""
    torchVersion = hello.get("torch") or "?"
    if hello.get("gpu_name"):
        free = hello.get("gpu_free_mb")
        memory = f", {free / 1024:.1f} GB free" if free is not None else ""
        return f"{hello['gpu_name']}{memory} (CUDA {hello.get('cuda')}, torch {torchVersion})"
    return f"no GPU found: CPU (torch {torchVersion})"


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
        self._sampleIndex = 0
        self._resultsShown = False
        self._startingWorker = False

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SDSegSlicer.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = SDSegSlicerLogic()
        self._timer = qt.QTimer()
        self._timer.setInterval(TIMER_INTERVAL_MS)
        self._timer.connect("timeout()", self.onTimer)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelSelected)
        self.ui.pythonBrowseButton.connect("clicked()", self.onBrowsePython)
        self.ui.pythonExecutableLineEdit.connect("textChanged(QString)", lambda _: self.updateBackendStatus())
        self.ui.installBackendButton.connect("clicked()", self.onInstallBackend)
        self.ui.restartWorkerButton.connect("clicked()", self.onRestartWorker)
        self.ui.segmentButton.connect("clicked()", self.onSegmentOrCancel)
        self.ui.previousSampleButton.connect("clicked()", lambda: self.showSample(self._sampleIndex - 1))
        self.ui.nextSampleButton.connect("clicked()", lambda: self.showSample(self._sampleIndex + 1))
        self.ui.showAllSamplesCheckBox.connect("toggled(bool)", lambda _: self.showSample(self._sampleIndex))
        self.ui.acceptSampleButton.connect("clicked()", self.onAcceptSample)
        self.ui.showVarianceCheckBox.connect("toggled(bool)", lambda _: self.updateVarianceOverlay())
        self.ui.exportSegNrrdButton.connect("clicked()", lambda: self.onExport("segmentation"))
        self.ui.exportNiftiButton.connect("clicked()", lambda: self.onExport("nifti"))
        self.ui.exportDicomSegButton.connect("clicked()", lambda: self.onExport("dicom"))
        self.ui.exportVarianceButton.connect("clicked()", lambda: self.onExport("variance"))
        self.ui.exportStatsButton.connect("clicked()", lambda: self.onExport("stats"))
        self.ui.exportDirectoryButton.directory = qt.QDir.homePath()

        self.initializeParameterNode()
        self.updateBackendStatus()

    def cleanup(self):
        self.removeObservers()
        if self._timer:
            self._timer.stop()
        if self.logic:
            self.logic.shutdown()

    def enter(self):
        self.initializeParameterNode()

    def exit(self):
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event):
        self._timer.stop()
        self.logic.abandonRun()
        self.ui.segmentButton.text = "Segment"
        self.setParameterNode(None)
        self.clearResults()

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    # --- parameter node --------------------------------------------------------------------------------------

    def initializeParameterNode(self):
        parameterNode = self.logic.getParameterNode()
        if not parameterNode.inputVolume:  # the first image volume (labelmaps are scalar volumes too)
            firstVolume = next((node for node in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
                                if not node.IsA("vtkMRMLLabelMapVolumeNode")), None)
            if firstVolume:
                parameterNode.inputVolume = firstVolume
        self.setParameterNode(parameterNode)

    def setParameterNode(self, parameterNode):
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
        running = self.logic.isRunning()
        canRun = running or bool(self._parameterNode.inputVolume)
        self.ui.segmentButton.enabled = canRun and not self._startingWorker
        self.ui.segmentButton.toolTip = (
            "Cancel the run; slices already done are kept." if running
            else "Segment the volume." if self._parameterNode.inputVolume
            else "Select an input volume first.")
        self.selectModelInCombo(self._parameterNode.model)
        self.updateVarianceOverlay()

    # --- worker, models and backend --------------------------------------------------------------------------

    def setStatus(self, message, error=False):
        self.ui.statusLabel.text = message
        self.ui.statusLabel.setStyleSheet("color: #d03030;" if error else "")
        if error:
            logging.warning(f"SDSegSlicer: {message}")

    def ensureWorker(self):
        """Start the worker if needed; fill the model list and device from its hello. False on failure."""
        pythonExecutable = self._parameterNode.pythonExecutable.strip()
        if self.logic.workerReady(pythonExecutable):
            return True
        self.setStatus("Starting the worker (loading PyTorch, may take a minute the first time)...")
        self._startingWorker = True  # the GUI keeps processing events meanwhile: no second start or run
        self.ui.segmentButton.enabled = False
        self.ui.restartWorkerButton.enabled = False
        qt.QApplication.setOverrideCursor(qt.Qt.BusyCursor)
        try:
            hello = self.logic.startWorker(pythonExecutable, onWait=slicer.app.processEvents)
        except WorkerError as error:  # says what to do (install the backend, choose another interpreter, ...)
            self.setStatus(str(error), error=True)
            self.updateBackendStatus()
            return False
        finally:
            qt.QApplication.restoreOverrideCursor()
            self._startingWorker = False
            self.ui.restartWorkerButton.enabled = True
            self.onParameterNodeModified()
        self.setStatus("")
        self.fillModelCombo(hello.get("models", []))
        self.ui.gpuLabel.text = describeDevice(hello)
        self.updateBackendStatus()
        return True

    def fillModelCombo(self, models):
        combo = self.ui.modelComboBox
        wasBlocked = combo.blockSignals(True)
        combo.clear()
        combo.addItem("default model", "")
        combo.setItemData(0, "The worker's default model.", qt.Qt.ToolTipRole)
        for model in models:
            combo.addItem(f"{model['name']} ({model['kind']})", model["name"])
            combo.setItemData(combo.count - 1, model["card"] or model["description"], qt.Qt.ToolTipRole)
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

    def updateBackendStatus(self):
        if self._parameterNode and self._parameterNode.pythonExecutable.strip():
            self.ui.backendStatusLabel.text = "The worker runs in the Python interpreter above."
            self.ui.installBackendButton.enabled = False
            return
        missing = module_logic.missing_backend_modules()
        self.ui.installBackendButton.enabled = bool(missing)
        self.ui.backendStatusLabel.text = (
            "Backend installed in Slicer's Python." if not missing
            else f"Missing in Slicer's Python: {', '.join(missing)}. Click 'Install backend', "
                 "or set a Python interpreter that has them.")

    def onInstallBackend(self):
        self.setStatus("Installing the backend into Slicer's Python...")
        qt.QApplication.setOverrideCursor(qt.Qt.WaitCursor)
        try:
            installed = self.logic.installBackend()
        except Exception as error:
            if type(error).__name__ == "InstallationAbortedError":  # the user said no (Slicer 5.10+ installer)
                self.setStatus("Installation cancelled.")
                return
            logging.exception("SDSegSlicer: backend installation failed")
            self.setStatus(f"Installation failed: {error}", error=True)
            return
        finally:
            qt.QApplication.restoreOverrideCursor()
            self.updateBackendStatus()
        self.setStatus("Backend installed." if installed else "Installation cancelled.")

    def onRestartWorker(self):
        if self._startingWorker:
            return
        if self.logic.isRunning():
            self.setStatus("Cancel the running segmentation before restarting the worker.", error=True)
            return
        self.logic.stopWorker()
        self.ensureWorker()

    # --- run -------------------------------------------------------------------------------------------------

    def onSegmentOrCancel(self):
        if self._startingWorker:
            return
        if self.logic.isRunning():
            self.logic.cancelRun()
            self.setStatus("Cancelling: slices already segmented are kept.")
            return
        if not self.ensureWorker():
            return
        self.clearResults()
        try:
            self.logic.startRun(self._parameterNode)
        except ValueError as error:  # bad ROI / slice range / volume: the message says what to do
            self.setStatus(str(error), error=True)
            return
        except Exception as error:  # e.g. the input volume cannot be written
            logging.exception("SDSegSlicer: the run did not start")
            self.setStatus(f"The segmentation did not start: {error}", error=True)
            return
        self.ui.segmentButton.text = "Cancel"
        self.ui.progressBar.value = 0
        self.ui.progressLabel.text = "Starting..."
        self.setStatus("")
        self.onParameterNodeModified()
        self._timer.start()

    def onTimer(self):
        state = self.logic.processRun()
        self.updateProgress(self.logic.run.progress)
        if self.logic.resultSegmentation is not None and not self._resultsShown:
            self.showResults()  # slices stream in while the run goes on
        if state != "running":
            self._timer.stop()
            self.onRunFinished(state)

    def updateProgress(self, progress):
        done, total, eta = progress["done"], progress["total"], progress["eta_s"]
        self.ui.progressBar.maximum = max(total, 1)
        self.ui.progressBar.value = done
        text = f"{progress['phase']}: {done} / {total} slices" if total else progress["phase"]
        if eta is not None and done < total:
            text += f", about {format_duration(eta)} left"
        self.ui.progressLabel.text = text

    def onRunFinished(self, state):
        run = self.logic.run
        self.ui.segmentButton.text = "Segment"
        self.onParameterNodeModified()
        if state == "done":
            self.ui.progressLabel.text = f"Done: {run.progress['done']} slices."
        elif state == "cancelled":
            self.ui.progressLabel.text = f"Cancelled after {run.progress['done']} slices."
        else:
            self.setStatus(run.error_message, error=True)
        if self.logic.resultSegmentation is not None:
            self.showResults()
            self.updateStats()
        self.logic.finishRun()

    # --- results ---------------------------------------------------------------------------------------------

    def clearResults(self):
        self._resultsShown = False
        self._sampleIndex = 0
        self.ui.resultsCollapsibleButton.enabled = False
        self.ui.exportCollapsibleButton.enabled = False
        self.ui.statsTable.clear()
        self.ui.statsTable.setRowCount(0)
        self.ui.sampleLabel.text = "Sample -"

    def showResults(self):
        self._resultsShown = True
        self.ui.resultsCollapsibleButton.enabled = True
        self.ui.exportCollapsibleButton.enabled = True
        self.showSample(self._sampleIndex)
        self.logic.prepareVarianceOverlay(self._parameterNode.inputVolume if self._parameterNode else None)
        self.updateVarianceOverlay()

    def showSample(self, index):
        segmentationNode = self.logic.resultSegmentation
        sampleIds = self.logic.sampleSegmentIds()
        if segmentationNode is None or not sampleIds:
            return
        self._sampleIndex = index % len(sampleIds)
        showAll = self.ui.showAllSamplesCheckBox.checked
        displayNode = segmentationNode.GetDisplayNode()
        for position, segmentId in enumerate(sampleIds):
            displayNode.SetSegmentVisibility(segmentId, showAll or position == self._sampleIndex)
        self.ui.sampleLabel.text = (
            f"All {len(sampleIds)} samples" if showAll else f"Sample {self._sampleIndex + 1} of {len(sampleIds)}")
        self.ui.previousSampleButton.enabled = self.ui.nextSampleButton.enabled = not showAll
        self.ui.acceptSampleButton.enabled = not showAll and not self.logic.isRunning()

    def onAcceptSample(self):
        sampleIds = self.logic.sampleSegmentIds()
        if not sampleIds:
            return
        try:
            name = self.logic.acceptSample(sampleIds[self._sampleIndex])
        except ValueError as error:
            self.setStatus(str(error), error=True)
            return
        self.setStatus(f"Sample {self._sampleIndex + 1} copied to segment '{name}': edit it in the Segment Editor.")

    def updateVarianceOverlay(self):
        variance = self.logic.resultVariance
        if variance is None or variance.GetScene() is None or not self._parameterNode:
            return  # no result yet, or the variance volume was deleted: leave the slice views alone
        slicer.util.setSliceViewerLayers(
            foreground=variance if self.ui.showVarianceCheckBox.checked else None,
            foregroundOpacity=self._parameterNode.varianceOpacity)

    def updateStats(self):
        try:
            header, rows = stats.statistics_table(self.logic.statistics())
        except ValueError as error:
            self.setStatus(str(error), error=True)
            return
        table = self.ui.statsTable
        table.clear()
        table.setColumnCount(len(header))
        table.setHorizontalHeaderLabels(header)
        table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            for c, value in enumerate(row):
                text = f"{value:.4g}" if isinstance(value, float) else "" if value is None else str(value)
                table.setItem(r, c, qt.QTableWidgetItem(text))
        table.resizeColumnsToContents()

    def onExport(self, what):
        folder = self.ui.exportDirectoryButton.directory
        try:
            path = self.logic.exportResult(what, folder)
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


class SDSegSlicerLogic(ScriptedLoadableModuleLogic):
    """Holds the worker client and the current run; the work itself is done by SDSegSlicerLib."""

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        self.client = None
        self.clientPython = None
        self.run = None
        self.resultSegmentation = None
        self.resultVariance = None
        self._inputDir = None

    def getParameterNode(self):
        return SDSegSlicerParameterNode(super().getParameterNode())

    # worker

    def workerReady(self, pythonExecutable=""):
        return self.client is not None and self.client.is_running() and self.clientPython == pythonExecutable

    def startWorker(self, pythonExecutable="", timeout=WORKER_START_TIMEOUT_S, onWait=None):
        """(Re)start the worker with the given interpreter (empty: Slicer's Python); returns its hello.
        ``onWait()`` is called repeatedly while the worker loads (the widget keeps the GUI responsive with it)."""
        self.stopWorker()
        client = WorkerClient(python_executable=pythonExecutable or None)
        hello = client.start(timeout, on_wait=onWait)
        self.client, self.clientPython = client, pythonExecutable
        return hello

    def stopWorker(self):
        if self.client is not None:
            self.client.stop()
        self.client, self.clientPython = None, None

    def installBackend(self):
        """Install torch (through the PyTorch extension) and the backend packages into Slicer's Python, never
        replacing packages Slicer ships. Returns False if the user cancelled the PyTorch installation."""
        if "torch" in module_logic.missing_backend_modules():
            try:
                import PyTorchUtils
            except ImportError:
                raise ValueError("PyTorch is needed: install the 'PyTorch' extension from the Extensions Manager, "
                                 "restart Slicer, then click 'Install backend' again.") from None
            if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=True) is None:
                return False
        constraintsDir = tempfile.mkdtemp(prefix="SDSegSlicer-pip-")
        try:
            slicer.util.pip_install(module_logic.backend_pip_arguments(os.path.join(constraintsDir, "constraints.txt")))
        finally:
            shutil.rmtree(constraintsDir, ignore_errors=True)
        return True

    # run

    def isRunning(self):
        return self.run is not None and self.run.state == "running"

    def buildJob(self, parameterNode):
        """The segment job of the parameters, without the volume file; ValueError says what to fix."""
        volume = parameterNode.inputVolume
        if volume is None:
            raise ValueError("Select an input volume first.")
        sliceAxis = module_logic.slice_axis_closest_to_superior(volume)
        return {
            "model": parameterNode.model or None,
            "samples": parameterNode.samples,
            "steps": parameterNode.steps or None,
            "seed": parameterNode.seed,
            "device": parameterNode.device,
            "batch_size": None,
            "roi_ijk": module_logic.job_roi_ijk(
                volume, parameterNode.roi, parameterNode.sliceStart, parameterNode.sliceEnd, sliceAxis),
            "slice_axis": sliceAxis,
        }

    def startRun(self, parameterNode):
        """Write the input volume for the worker and start a streamed segmentation run."""
        if self.client is None or not self.client.is_running():
            raise ValueError("The worker is not running: click 'Restart worker' in the Backend section.")
        job = self.buildJob(parameterNode)
        self.finishRun()
        self.forgetResults()
        self._inputDir = tempfile.mkdtemp(prefix="SDSegSlicer-input-")
        job["volume"] = os.path.join(self._inputDir, "input.nrrd")
        export.export_volume(parameterNode.inputVolume, job["volume"])
        self.run = SegmentationRun(slicer.mrmlScene, self.client, job, reference_volume_node=parameterNode.inputVolume)
        self.run.start()
        return self.run

    def processRun(self):
        """Handle the worker's messages; keep the result nodes as soon as they exist. Returns the run state."""
        state = self.run.process_messages()
        if self.resultSegmentation is None and self.run.segmentation_node is not None:
            self.resultSegmentation = self.run.segmentation_node
            self.resultVariance = self.run.variance_node
            # The input volume becomes the segmentation's source volume (Segment Editor, DICOM SEG export).
            role = self.resultSegmentation.GetReferenceImageGeometryReferenceRole()
            self.resultSegmentation.SetNodeReferenceID(role, self.run.reference_volume_node.GetID())
        return state

    def cancelRun(self):
        if self.isRunning():
            self.run.cancel()

    def abandonRun(self):
        """Cancel the run and forget it and its results (the scene that holds them is closing)."""
        if self.isRunning():
            self.run.cancel()
            self.run.abandon()
        self.run = None
        self.forgetResults()
        self.finishRun()

    def finishRun(self):
        """Delete the temporary input volume of a finished run."""
        if self._inputDir and not self.isRunning():
            shutil.rmtree(self._inputDir, ignore_errors=True)
            self._inputDir = None

    def shutdown(self):
        self.abandonRun()
        self.stopWorker()

    # results

    def sampleSegmentIds(self):
        """IDs of the result's `sample 1..N` segments, in order (none yet, or the node was deleted: [])."""
        if self.resultSegmentation is None or self.resultSegmentation.GetScene() is None:
            return []
        idsByName = segment_ids_by_name(self.resultSegmentation)
        return [idsByName[name] for name in stats.result_segment_names(self.resultSegmentation)
                if name != CONSENSUS_SEGMENT_NAME]

    def acceptSample(self, sampleSegmentId):
        """Copy a sample into a new editable `accepted` segment; returns the new segment's name."""
        self.requireResult()
        newId = module_logic.accept_sample(self.resultSegmentation, sampleSegmentId)
        return self.resultSegmentation.GetSegmentation().GetSegment(newId).GetName()

    def forgetResults(self):
        self.resultSegmentation = self.resultVariance = None

    def prepareVarianceOverlay(self, inputVolume):
        """Perceptual colour map on the variance volume, input volume as background of the slice views."""
        colourNode = module_logic.variance_colour_node(slicer.mrmlScene)
        module_logic.configure_variance_display(self.resultVariance, colourNode)
        if inputVolume is not None:
            slicer.util.setSliceViewerLayers(background=inputVolume)

    def requireResult(self):
        if self.resultSegmentation is None or self.resultSegmentation.GetScene() is None:
            raise ValueError("No result yet: run a segmentation first.")

    def statistics(self):
        """stats.segmentation_statistics() of the current result."""
        self.requireResult()
        return stats.segmentation_statistics(self.resultSegmentation, self.resultVariance)

    def exportResult(self, what, folder):
        """Write one export into folder, files named after the result; returns the (first) file path."""
        self.requireResult()
        base = os.path.join(folder, re.sub(r"[^\w.-]+", "_", self.resultSegmentation.GetName()))
        if what == "segmentation":
            return export.export_segmentation(self.resultSegmentation, base + ".seg.nrrd")
        if what == "nifti":  # a labelmap holds one label per voxel: the consensus only (samples overlap it)
            consensusId = self.resultSegmentation.GetSegmentation().GetSegmentIdBySegmentName(CONSENSUS_SEGMENT_NAME)
            export.export_nifti_labelmap(self.resultSegmentation, base + "_consensus.nii.gz", [consensusId])
            return base + "_consensus.nii.gz"
        if what == "dicom":
            return export.export_dicom_seg(self.resultSegmentation, base + "_seg.dcm")
        if what == "variance":
            return export.export_volume(self.resultVariance, base + "_variance.nrrd")
        if what == "stats":
            stats.write_statistics(self.statistics(), base + "_summary.json", base + "_summary.csv")
            return base + "_summary.csv"
        raise ValueError(f"Unknown export '{what}'.")


#
# Test
#


class SDSegSlicerTest(ScriptedLoadableModuleTest):
    """Self-test inside Slicer: a real worker on CPU with the bundled default model, on an oblique phantom."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_SegmentPhantomOnCpu()

    def makePhantom(self):
        """Oblique 64x64x6 volume: noisy background with a bright ellipse, like a lesion on a CT slice."""
        rng = np.random.default_rng(0)
        k, j, i = np.mgrid[0:6, 0:64, 0:64]
        lesion = ((i - 34) / 11.0) ** 2 + ((j - 30) / 8.0) ** 2 < 1.0
        voxels = (rng.normal(40.0, 10.0, size=lesion.shape) + 80.0 * lesion).astype(np.float32)
        angle = np.radians(20.0)
        ijkToRas = np.diag([0.8, 0.8, 2.5, 1.0])
        rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
        ijkToRas[:3, :3] = rotation @ ijkToRas[:3, :3]
        ijkToRas[:3, 3] = (-20.0, 10.0, 35.0)
        return slicer.util.addVolumeFromArray(voxels, ijkToRAS=ijkToRas, name="phantom")

    def test_SegmentPhantomOnCpu(self):
        self.delayDisplay("Starting the worker")
        volume = self.makePhantom()
        logic = SDSegSlicerLogic()
        try:
            hello = logic.startWorker("")
            self.assertEqual(hello["protocol"], 1)
            self.assertTrue(hello["models"], "the worker lists no model: the bundled default model is missing")
            parameterNode = logic.getParameterNode()
            parameterNode.inputVolume = volume
            parameterNode.samples = 2
            parameterNode.device = "cpu"
            parameterNode.sliceStart = 2
            parameterNode.sliceEnd = 3

            self.delayDisplay("Segmenting slices 2..3 with 2 samples")
            logic.startRun(parameterNode)
            deadline = time.monotonic() + 600
            while logic.processRun() == "running":
                self.assertLess(time.monotonic(), deadline, "the run did not finish in 10 minutes")
                slicer.app.processEvents()
                time.sleep(0.05)
            self.assertEqual(logic.run.state, "done", logic.run.error_message)
            self.assertEqual(logic.run.progress["done"], 2)

            segmentation = logic.resultSegmentation.GetSegmentation()
            for name in ("consensus", "sample 1", "sample 2"):
                self.assertTrue(segmentation.GetSegmentIdBySegmentName(name), f"segment '{name}' is missing")
            self.assertEqual(len(logic.sampleSegmentIds()), 2)

            variance = logic.resultVariance
            self.assertEqual(variance.GetImageData().GetDimensions(), volume.GetImageData().GetDimensions())
            expected, actual = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
            volume.GetIJKToRASMatrix(expected)
            variance.GetIJKToRASMatrix(actual)
            for r in range(4):
                for c in range(4):
                    self.assertAlmostEqual(actual.GetElement(r, c), expected.GetElement(r, c), places=5)
            values = slicer.util.arrayFromVolume(variance)
            self.assertTrue(np.all((values >= 0) & (values <= 0.25 + 1e-6)))
            self.assertEqual(float(values[[0, 1, 4, 5]].max()), 0.0)  # slices outside the range are untouched

            firstName = logic.acceptSample(logic.sampleSegmentIds()[0])
            secondName = logic.acceptSample(logic.sampleSegmentIds()[1])
            self.assertEqual((firstName, secondName), ("accepted", "accepted 2"))

            exportDir = tempfile.mkdtemp(prefix="SDSegSlicerTest-")
            try:
                for what in ("segmentation", "nifti", "variance", "stats"):
                    path = logic.exportResult(what, exportDir)
                    self.assertGreater(os.path.getsize(path), 0, f"{what} export wrote nothing")
            finally:
                shutil.rmtree(exportDir, ignore_errors=True)
            self.delayDisplay("Test passed")
        finally:
            logic.shutdown()
