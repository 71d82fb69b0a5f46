"""SDSegSlicerLogic: SDSegSlicerLib's SegmentationSession on Slicer's scene, plus the parameter node and the
installers (which need the Slicer application)."""

import os
import shutil
import tempfile

import slicer
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleLogic

from SDSegSlicerLib import backend_install, result_view
from SDSegSlicerLib.session import BusyError, SegmentationSession

from .parameters import SDSegSlicerParameterNode


class SDSegSlicerLogic(SegmentationSession, ScriptedLoadableModuleLogic):
    """SDSegSlicerLib's SegmentationSession on Slicer's scene, plus the parameter node and the installers.

    SegmentationSession comes first: Slicer's ScriptedLoadableModuleLogic.__init__ calls ``super().__init__()``
    without arguments, which must land on ``object``, not on SegmentationSession.__init__(scene)."""

    def __init__(self):
        SegmentationSession.__init__(self, slicer.mrmlScene)
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return SDSegSlicerParameterNode(super().getParameterNode())

    def buildJob(self, parameterNode):
        """The segment job of the parameters (ValueError says what to fix)."""
        return self.build_job(parameterNode.inputVolume, points_node=parameterNode.lesionPoints,
                              roi_node=parameterNode.roi, slice_start=parameterNode.sliceStart,
                              slice_end=parameterNode.sliceEnd, stop_after_empty=parameterNode.stopAfterEmpty,
                              model=parameterNode.model, samples=parameterNode.samples, steps=parameterNode.steps,
                              seed=parameterNode.seed, device=parameterNode.device)

    def startWorker(self, pythonExecutable="", onWait=None, serverUrl="", token=None, restart=True):
        """(Re)start the worker (without ``restart``: wait for the one starting already), or connect to a server;
        an external interpreter runs in the environment Slicer was started with (not with Slicer's own library
        paths, which would break its packages)."""
        return self.start_worker(pythonExecutable, on_wait=onWait, external_env=self.workerEnvironment(
            pythonExecutable), server_url=serverUrl, token=token, restart=restart)

    def warmUpWorker(self, pythonExecutable=""):
        """Launch the worker without waiting for it (see SegmentationSession.warm_up_worker)."""
        return self.warm_up_worker(pythonExecutable, self.workerEnvironment(pythonExecutable))

    @staticmethod
    def workerEnvironment(pythonExecutable):
        """The environment of a worker run by ``pythonExecutable`` (None: this Python's own)."""
        return slicer.util.startupEnvironment() if pythonExecutable else None

    def installBackend(self, onStart=None, onWait=None):
        """Install torch (through the PyTorch extension) and the backend packages into Slicer's Python, never
        replacing packages Slicer ships. Returns False if the user cancelled the PyTorch installation. ``onWait()``
        is called while the worker exits."""
        if self.is_running():
            raise BusyError("A segmentation is running: wait for it or cancel it first.")
        with self.busy("the backend is being installed"):
            if onStart is not None:
                onStart()
            self.stop_worker(onWait)  # it may hold the packages pip replaces
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
