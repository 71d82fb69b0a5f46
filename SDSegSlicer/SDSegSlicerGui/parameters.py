"""The module's parameter node (parameterNodeWrapper): what the panel's widgets are bound to."""

from typing import Annotated

from slicer import vtkMRMLMarkupsFiducialNode, vtkMRMLMarkupsROINode, vtkMRMLScalarVolumeNode
from slicer.parameterNodeWrapper import Choice, Minimum, WithinRange, parameterNodeWrapper

from SDSegSlicerLib.prompts import DEFAULT_STOP_AFTER_EMPTY
from SDSegSlicerLib.run import DEFAULT_SAMPLES, DEVICES, MAX_SAMPLES


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
    device: Annotated[str, Choice(list(DEVICES))] = "auto"
    pythonExecutable: str = ""
    serverUrl: str = ""
    varianceOpacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.5


#
# Widget
