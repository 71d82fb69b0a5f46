"""What the views show besides the images: orientation aids (a small cube lettered with the patient's directions,
L R A P S I, in every view; a ruler in the slice views) and a 3D view of the result's surfaces alone (no volume
rendering: grainy in software rendering, it hid the segmentation; no slice planes: they hide the surfaces behind
them)."""

from __future__ import annotations

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


def show_result_surfaces(segmentation_node) -> None:
    """The result's segments as closed surfaces in the 3D view (the visible ones: the consensus, the accepted
    segment, the samples the page shows)."""
    segmentation_node.CreateClosedSurfaceRepresentation()
    display = segmentation_node.GetDisplayNode()
    if display is not None:
        display.SetVisibility3D(True)
        display.SetPreferredDisplayRepresentationName3D("Closed surface")
