"""SDSegSlicer: diffusion-model lesion segmentation with uncertainty, as a 3D Slicer scripted module.

The module file is the glue Slicer looks for: the Module class here, and the Widget, Logic, parameter node and
Test classes from SDSegSlicerGui (Qt, Slicer-only). The model runs in a separate worker process (the GUI never
freezes); everything Qt-free lives in SDSegSlicerLib, shared with the web app and the headless command.
"""

from slicer.ScriptedLoadableModule import ScriptedLoadableModule

from SDSegSlicerGui.logic import SDSegSlicerLogic
from SDSegSlicerGui.parameters import SDSegSlicerParameterNode
from SDSegSlicerGui.self_test import SDSegSlicerTest
from SDSegSlicerGui.widget import SDSegSlicerWidget

# Slicer finds the module's classes by name in this file.
__all__ = ["SDSegSlicer", "SDSegSlicerLogic", "SDSegSlicerParameterNode", "SDSegSlicerTest", "SDSegSlicerWidget"]


class SDSegSlicer(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "SDSeg Slicer"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = ["Markups", "Segmentations"]  # loaded first: the place widget, segmentations
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
