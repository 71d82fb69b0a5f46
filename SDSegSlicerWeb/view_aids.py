"""What the views show besides the images: orientation aids (a small cube lettered with the patient's directions,
L R A P S I, in every view; a ruler in the slice views) and a 3D view of the result's surfaces alone (no volume
rendering: grainy in software rendering, it hid the segmentation; no slice planes: they hide the surfaces behind
them)."""

from __future__ import annotations

import slicer
from slicer import vtkMRMLAbstractViewNode


def add_orientation_aids(view_manager) -> None:
    """A lettered orientation cube in every view, a thin ruler in the slice views."""
    for view in view_manager.get_views():
        view.set_orientation_marker(vtkMRMLAbstractViewNode.OrientationMarkerTypeCube,
                                    vtkMRMLAbstractViewNode.OrientationMarkerSizeSmall)
    for view in view_manager.get_slice_views():
        view.set_ruler(vtkMRMLAbstractViewNode.RulerTypeThin)


def hide_volume_rendering(volume_rendering, volume_node) -> None:
    """No volume rendering of ``volume_node`` in the 3D view."""
    display = volume_rendering.get_vr_display_node(volume_node)
    if display is not None:
        display.SetVisibility(False)


def closed_surfaces(segmentation):
    """``segmentation`` (a vtkSegmentation copied from the result's node, attached to no node or view) with closed
    surfaces made for its segments: VTK filters only (marching cubes, smoothing, decimation), so this runs in a
    thread while the page answers; show_result_surfaces() puts them in the result."""
    segmentation.CreateRepresentation(slicer.vtkSegmentationConverter.GetSegmentationClosedSurfaceRepresentationName())
    return segmentation


def show_result_surfaces(segmentation_node, surfaces) -> None:
    """The result's segments as closed surfaces in the 3D view (the visible ones: the consensus, the accepted
    segment, the samples the page shows), taken from ``surfaces`` (closed_surfaces() of a copy) where it has them;
    any other segment (e.g. accepted meanwhile) is converted here."""
    name = slicer.vtkSegmentationConverter.GetSegmentationClosedSurfaceRepresentationName()
    segmentation = segmentation_node.GetSegmentation()
    for segment_id in segmentation.GetSegmentIDs():
        made = surfaces.GetSegment(segment_id)
        if made is not None and made.GetRepresentation(name) is not None:
            segmentation.GetSegment(segment_id).AddRepresentation(name, made.GetRepresentation(name))
    segmentation_node.CreateClosedSurfaceRepresentation()  # the segments without one
    display = segmentation_node.GetDisplayNode()
    if display is not None:
        display.SetVisibility3D(True)
        display.SetPreferredDisplayRepresentationName3D("Closed surface")
