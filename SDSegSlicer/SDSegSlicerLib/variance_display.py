"""The variance overlay: a perceptual colour map over [0, 0.25] with zero variance transparent, shown in the
foreground of the slice views without taking over the layers a user chose (pure MRML: slice composite nodes).
"""

from __future__ import annotations

import numpy as np
import slicer

from .segmentation_writer import VARIANCE_ROLE, VARIANCE_ROLE_ATTRIBUTE

# Perceptual colour maps Slicer ships (loaded from its colour files), most preferred first.
PERCEPTUAL_COLOUR_NODE_NAMES = ("Inferno", "Viridis", "Magma", "Plasma", "Cividis")
FALLBACK_COLOUR_NODE_NAME = "SDSeg Inferno"
# Inferno (matplotlib, CC0) sampled at 9 evenly spaced points: used only where Slicer's colour files are absent.
INFERNO_STOPS = (
    (0.001, 0.000, 0.014), (0.129, 0.047, 0.291), (0.342, 0.062, 0.429), (0.541, 0.135, 0.415),
    (0.736, 0.216, 0.330), (0.894, 0.353, 0.194), (0.978, 0.558, 0.035), (0.975, 0.798, 0.206),
    (0.988, 0.998, 0.645),
)
# Variance of binary samples lies in [0, 0.25] (p (1 - p)); zero variance is left transparent.
VARIANCE_DISPLAY_RANGE = (0.0, 0.25)
VARIANCE_TRANSPARENT_BELOW = 1e-6


def variance_colour_node(scene):
    """A perceptual colour node for the variance overlay: Slicer's Inferno (or Viridis, ...) when loaded,
    else one `SDSeg Inferno` procedural node created once per scene."""
    for name in PERCEPTUAL_COLOUR_NODE_NAMES + (FALLBACK_COLOUR_NODE_NAME,):
        nodes = scene.GetNodesByClassByName("vtkMRMLColorNode", name)
        if nodes.GetNumberOfItems():
            return nodes.GetItemAsObject(0)
    node = slicer.vtkMRMLProceduralColorNode()
    node.SetName(FALLBACK_COLOUR_NODE_NAME)
    node.SetAttribute("Category", "SDSegSlicer")
    transfer = node.GetColorTransferFunction()
    for index, rgb in enumerate(INFERNO_STOPS):
        transfer.AddRGBPoint(index / (len(INFERNO_STOPS) - 1), *rgb)
    scene.AddNode(node)
    return node


def configure_variance_display(variance_node, colour_node) -> None:
    """Show the variance volume with the colour map over its full range, zero variance transparent."""
    if variance_node.GetDisplayNode() is None:
        variance_node.CreateDefaultDisplayNodes()
    display = variance_node.GetDisplayNode()
    display.SetAndObserveColorNodeID(colour_node.GetID())
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(*VARIANCE_DISPLAY_RANGE)
    display.SetApplyThreshold(True)
    display.SetLowerThreshold(VARIANCE_TRANSPARENT_BELOW)
    display.SetUpperThreshold(np.finfo(np.float32).max)
    display.SetInterpolate(False)


def is_variance_volume(node) -> bool:
    return node is not None and node.GetAttribute(VARIANCE_ROLE_ATTRIBUTE) == VARIANCE_ROLE


def slice_composite_nodes(scene) -> list:
    """The layer settings of every slice view of the scene (one vtkMRMLSliceCompositeNode per view); none for a
    node that was removed from its scene (scene None)."""
    if scene is None:
        return []
    nodes = scene.GetNodesByClass("vtkMRMLSliceCompositeNode")
    return [nodes.GetItemAsObject(n) for n in range(nodes.GetNumberOfItems())]


def show_variance_overlay(variance_node, opacity: float) -> None:
    """Put the variance volume in the foreground of the views whose foreground is empty or another SDSegSlicer
    variance volume (an earlier run), at ``opacity``; a foreground layer the user chose stays."""
    scene = variance_node.GetScene()
    for composite in slice_composite_nodes(scene):
        foreground_id = composite.GetForegroundVolumeID()
        if not foreground_id or is_variance_volume(scene.GetNodeByID(foreground_id)):
            composite.SetForegroundVolumeID(variance_node.GetID())
            composite.SetForegroundOpacity(opacity)


def hide_variance_overlay(variance_node) -> None:
    """Empty the foreground of the views that show this variance volume; other views are left alone."""
    for composite in slice_composite_nodes(variance_node.GetScene()):
        if composite.GetForegroundVolumeID() == variance_node.GetID():
            composite.SetForegroundVolumeID(None)


def set_variance_opacity(variance_node, opacity: float) -> None:
    """Set the foreground opacity of the views that show this variance volume, and of no other view."""
    for composite in slice_composite_nodes(variance_node.GetScene()):
        if composite.GetForegroundVolumeID() == variance_node.GetID():
            composite.SetForegroundOpacity(opacity)


def show_as_background_where_empty(volume_node) -> None:
    """Show the segmented volume as background in the views that have none."""
    for composite in slice_composite_nodes(volume_node.GetScene()):
        if not composite.GetBackgroundVolumeID():
            composite.SetBackgroundVolumeID(volume_node.GetID())


def set_variance_threshold(variance_node, threshold: float) -> None:
    """Show only the voxels whose variance is at least ``threshold`` (0: every non-zero variance)."""
    display = variance_node.GetDisplayNode()
    if display is not None:
        display.SetLowerThreshold(max(float(threshold), VARIANCE_TRANSPARENT_BELOW))
