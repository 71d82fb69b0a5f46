"""The variance overlay: a blue-to-magenta colour map over [0, 0.25] with zero variance transparent, shown in the
foreground of the slice views without taking over the layers a user chose (pure MRML: slice composite nodes).

Blue to magenta, brighter with the variance, keeps the overlay apart from the consensus (yellow) and the samples
(hues around the wheel, drawn as outlines when all are shown): Inferno's yellow-orange top, used before, read as
consensus.
"""

from __future__ import annotations

import numpy as np
import slicer

from .segmentation_writer import VARIANCE_ROLE, VARIANCE_ROLE_ATTRIBUTE

VARIANCE_COLOUR_NODE_NAME = "SDSeg variance blue-magenta"
# (position in the range 0..1, RGB): luminance rises from 0.07 to 0.53, blue always above green (never yellow).
VARIANCE_COLOUR_STOPS = (
    (0.0, (0.05, 0.05, 0.35)), (0.35, (0.15, 0.35, 1.0)), (0.7, (0.6, 0.3, 1.0)), (1.0, (1.0, 0.35, 0.95)),
)
# Variance of binary samples lies in [0, 0.25] (p (1 - p)); zero variance is left transparent.
VARIANCE_DISPLAY_RANGE = (0.0, 0.25)
VARIANCE_TRANSPARENT_BELOW = 1e-6


def variance_colour_node(scene):
    """The variance overlay's colour node (VARIANCE_COLOUR_STOPS), created once per scene."""
    nodes = scene.GetNodesByClassByName("vtkMRMLColorNode", VARIANCE_COLOUR_NODE_NAME)
    if nodes.GetNumberOfItems():
        return nodes.GetItemAsObject(0)
    node = slicer.vtkMRMLProceduralColorNode()
    node.SetName(VARIANCE_COLOUR_NODE_NAME)
    node.SetAttribute("Category", "SDSegSlicer")
    transfer = node.GetColorTransferFunction()
    for position, rgb in VARIANCE_COLOUR_STOPS:
        transfer.AddRGBPoint(position, *rgb)
    scene.AddNode(node)
    return node


def css_gradient() -> str:
    """The colour map as a CSS linear-gradient (a legend's colour bar), low variance on the left."""
    stops = ", ".join(f"rgb({', '.join(str(round(255 * c)) for c in rgb)}) {100 * position:g}%"
                      for position, rgb in VARIANCE_COLOUR_STOPS)
    return f"linear-gradient(to right, {stops})"


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
