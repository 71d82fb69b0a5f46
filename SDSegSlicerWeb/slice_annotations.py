"""Text over each slice view, as Slicer's slice views have: the view's name (Axial, Sagittal, Coronal, and Slicer's
Red, Yellow, Green, in its colour), the patient direction at each edge (R L A P S I: the slices as Slicer shows them,
radiological, the patient's right on the left of an axial view) and the slice shown, as an index of the input file
(the page's IJK) and a position in mm.

The letters and the slice come from the slice node's SliceToRAS matrix (columns: the view's right, its up, the slice
normal, the slice centre, in RAS) and the volume's RASToIJK matrix, so a rotated or flipped volume is lettered by what
the view really shows. They are page state (``sdseg_view_<name>``), drawn as HTML over the view image, updated
whenever the view changes (a slice moved, a volume loaded).
"""

from __future__ import annotations

import math

import numpy as np
from trame.widgets import html
from trame_slicer.app.ui import create_vertical_slice_view_gutter_ui
from vtkmodules.vtkCommonMath import vtkMatrix4x4

from .slice_sliders import keep_slider_on_the_page_value

POSITIVE_LETTERS, NEGATIVE_LETTERS = "RAS", "LPI"  # the patient's direction of +x, +y, +z in RAS, and of -x, -y, -z
OVERLAY_STYLE = ("position:absolute;inset:0;pointer-events:none;color:white;font-size:13px;"
                 "text-shadow:0 0 3px black,0 0 2px black;")
EDGE_STYLES = {  # where each edge's letter sits: mid-edge (the bottom one above the slice slider; the title and the
    # slice at the top right, clear of the view's buttons, top left, and its orientation cube, bottom right)
    "top": "top:4px;left:50%;transform:translateX(-50%)",
    "bottom": "bottom:44px;left:50%;transform:translateX(-50%)",
    "left": "left:6px;top:50%;transform:translateY(-50%)",
    "right": "right:6px;top:50%;transform:translateY(-50%)",
}


def voxel_of(point_ijk) -> list[int]:
    """The voxel (I, J, K indices of the input file) that a point lies in: voxel n spans n - 0.5 to n + 0.5. The page
    shows and segments a clicked point's voxel, so that `segment --point-ijk I,J,K` gives the page's result."""
    return [int(math.floor(value + 0.5)) for value in point_ijk]


def direction_letter(vector) -> str:
    """The patient direction (R L A P S I) closest to a RAS ``vector``."""
    axis = int(np.argmax(np.abs(vector)))
    return (POSITIVE_LETTERS if vector[axis] > 0 else NEGATIVE_LETTERS)[axis]


def edge_letters(slice_to_ras: np.ndarray) -> dict[str, str]:
    """The patient direction at each edge of a slice view whose SliceToRAS matrix is ``slice_to_ras`` (4 x 4)."""
    right, up = slice_to_ras[:3, 0], slice_to_ras[:3, 1]
    return {"left": direction_letter(-right), "right": direction_letter(right), "top": direction_letter(up),
            "bottom": direction_letter(-up)}


def slice_text(slice_to_ras: np.ndarray, ras_to_ijk: np.ndarray, dimensions) -> str:
    """'slice K 16 of 0-24 · S 26.0 mm': the file's index axis across the slice (the IJK axis closest to its
    normal), the index of the slice centre's voxel on it (voxel_of), its range, and the centre's RAS coordinate
    along the normal's axis."""
    centre, normal = slice_to_ras[:, 3], slice_to_ras[:3, 2]
    axis = int(np.argmax(np.abs(ras_to_ijk[:3, :3] @ normal)))
    index = voxel_of(ras_to_ijk @ centre)[axis]
    shown = str(index) if 0 <= index < dimensions[axis] else "outside"
    ras_axis = int(np.argmax(np.abs(normal)))
    return (f"slice {'IJK'[axis]} {shown} of 0-{dimensions[axis] - 1} · "
            f"{POSITIVE_LETTERS[ras_axis]} {centre[ras_axis]:.1f} mm")


def array_of(matrix: vtkMatrix4x4) -> np.ndarray:
    return np.array([[matrix.GetElement(row, column) for column in range(4)] for row in range(4)])


def view_annotations(slice_node, volume_node) -> dict:
    """The page state of one slice view: its title and colour, its edge letters, the slice shown (no volume: '')."""
    slice_to_ras = array_of(slice_node.GetSliceToRAS())
    colour = "rgb({})".format(", ".join(str(round(255 * c)) for c in slice_node.GetLayoutColor()))
    texts = {"title": f"{slice_node.GetOrientation()} · {slice_node.GetLayoutName()}", "colour": colour,
             **edge_letters(slice_to_ras), "slice": ""}
    if volume_node is not None and volume_node.GetImageData() is not None:
        ras_to_ijk = vtkMatrix4x4()
        volume_node.GetRASToIJKMatrix(ras_to_ijk)
        texts["slice"] = slice_text(slice_to_ras, array_of(ras_to_ijk), volume_node.GetImageData().GetDimensions())
    return texts


def state_name(view) -> str:
    return f"sdseg_view_{view.get_view_node().GetLayoutName()}"


def update_annotations(server, view) -> None:
    """Put the texts of slice view ``view`` (a trame-slicer SliceView) in the page state, if they changed."""
    slice_node = view.get_view_node()
    volume_id = view.get_background_volume_id()
    volume = slice_node.GetScene().GetNodeByID(volume_id) if volume_id and slice_node.GetScene() else None
    texts, name = view_annotations(slice_node, volume), state_name(view)
    if server.state[name] != texts:
        with server.state:
            server.state[name] = texts


def slice_view_ui(server, view_id: str, view) -> None:
    """trame-slicer's slice view controls (Reset Camera, the slice slider, kept on the page's value:
    slice_sliders) and the texts over the view, kept up to date (register_rca_factories' ``slice_view_ui_f``)."""
    create_vertical_slice_view_gutter_ui(server, view_id, view)
    keep_slider_on_the_page_value(server, view)
    name = state_name(view)
    server.state.setdefault(name, None)
    with html.Div(v_if=(name,), style=OVERLAY_STYLE, classes="sdseg-view-annotations", id=name.replace("_", "-")):
        html.Div(f"{{{{ {name}.title }}}}", style=(f"'position:absolute;top:4px;right:8px;font-weight:bold;color:' + "
                                                  f"{name}.colour",), classes="sdseg-view-title")
        for edge, style in EDGE_STYLES.items():
            html.Div(f"{{{{ {name}.{edge} }}}}", style=f"position:absolute;font-weight:bold;{style}",
                     classes=f"sdseg-edge-{edge}")
        html.Div(f"{{{{ {name}.slice }}}}", style="position:absolute;top:22px;right:8px", classes="sdseg-slice")
    view.modified.connect(lambda *_: update_annotations(server, view))
    update_annotations(server, view)
