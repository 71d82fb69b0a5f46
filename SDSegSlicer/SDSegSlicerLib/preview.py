"""A PNG preview of a result: the clicked slice (else the consensus' largest slice) and the slices next to it, each
shown as the image with the contours of all samples (thin, distinct colours), the consensus (thick yellow on a
black edge) and the clicks (white crosses), and as the variance over the image, with one colour bar and a title;
in radiological orientation, as Slicer and the web page show it (axial: patient right on the left, anterior up;
coronal: right on the left, superior up; sagittal: anterior on the left, superior up)."""

from __future__ import annotations

import itertools
import textwrap

import numpy as np

from .atomic import atomic_output
from .segmentation_writer import (CONSENSUS_COLOUR, image_array_kji, read_segment_arrays, sample_colours,
                                  segment_ids_by_name)
from .stats import is_consensus, result_segment_names, union_extent
from .variance_display import VARIANCE_COLOUR_STOPS, VARIANCE_DISPLAY_RANGE

CLICK_COLOUR = (1.0, 1.0, 1.0)  # white, on a black edge: no sample colour (saturation 0.85) and not the consensus'
MIN_MARGIN_VOXELS = 8
MARGIN_FRACTION = 0.25
PANEL_INCHES = 3.2
TITLE_CHARACTERS = 100  # of the title, on one line above the panels (more: shortened, "...")


def crop_box(extent, dims_kji) -> tuple[slice, slice, slice]:
    """(K, J, I) slices around an IJK extent [i0, i1, j0, j1, k0, k1] (inclusive), with a margin, inside the
    volume; the whole volume if the extent is empty."""
    box = []
    for kji_axis, size in enumerate(dims_kji):
        low, high = extent[2 * (2 - kji_axis)], extent[2 * (2 - kji_axis) + 1]
        if any(extent[2 * a + 1] < extent[2 * a] for a in range(3)):
            box.append(slice(0, size))
            continue
        margin = max(MIN_MARGIN_VOXELS, int(MARGIN_FRACTION * (high - low + 1)))
        box.append(slice(max(low - margin, 0), min(high + 1 + margin, size)))
    return tuple(box)


def preview_slices(union: np.ndarray, axis: int, count: int, largest: np.ndarray | None = None,
                   centre: int | None = None) -> list[int]:
    """Up to ``count`` consecutive slice positions along ``axis`` (a slice without any sample in between is shown,
    not skipped): around ``centre`` (the clicked slice) if given, else the slice where ``largest`` (default
    ``union``: e.g. the consensus) has the most voxels, kept within the slices where ``union`` (any sample) has
    voxels and the centre (all slices if none has)."""
    def areas(mask):
        return np.moveaxis(mask, axis, 0).reshape(mask.shape[axis], -1).sum(axis=1)

    area = areas(union)
    candidates = np.flatnonzero(area) if area.any() else np.arange(union.shape[axis])
    if centre is None:
        centre_area = areas(largest) if largest is not None and largest.any() else area
        centre = int(np.argmax(centre_area)) if centre_area.any() else int(candidates[len(candidates) // 2])
    low, high = min(int(candidates[0]), centre), max(int(candidates[-1]), centre)
    length = min(count, high - low + 1)
    start = min(max(centre - length // 2, low), high - length + 1)
    return list(range(start, start + length))


def clicks_in_box(points_ijk, box) -> list[tuple[int, int, int]]:
    """The clicked points (I, J, K, in voxels) that lie in the (K, J, I) slices ``box``, as rounded (K, J, I)
    positions within it."""
    inside = []
    for point in points_ijk:
        kji = [int(round(value)) - part.start for value, part in zip(point[::-1], box)]
        if all(0 <= value < part.stop - part.start for value, part in zip(kji, box)):
            inside.append(tuple(kji))
    return inside


# Screen directions (RAS) of a radiological view by the patient axis closest to the slice normal (0: R, 1: A, 2: S):
# (to the right on the screen, down on the screen).
SCREEN_DIRECTIONS_RAS = {2: ((-1, 0, 0), (0, -1, 0)), 1: ((-1, 0, 0), (0, 0, -1)), 0: ((0, -1, 0), (0, 0, -1))}


def radiological_order(plane_axes_kji: tuple[int, int], ijk_to_ras) -> tuple[bool, bool, bool]:
    """(transpose, flip rows, flip columns) that put a slice, whose rows and columns run along the volume's K/J/I axes
    ``plane_axes_kji``, in radiological orientation when drawn with row 0 at the top (SCREEN_DIRECTIONS_RAS)."""
    directions = np.asarray(ijk_to_ras, dtype=float)[:3, :3]
    row_direction, column_direction = (directions[:, 2 - axis] for axis in plane_axes_kji)  # K,J,I -> I,J,K column
    normal_axis = int(np.argmax(np.abs(np.cross(row_direction, column_direction))))
    right, down = (np.asarray(v, dtype=float) for v in SCREEN_DIRECTIONS_RAS[normal_axis])
    transpose = abs(column_direction @ right) < abs(row_direction @ right)  # rows run across the screen
    if transpose:
        row_direction, column_direction = column_direction, row_direction
    return transpose, bool(row_direction @ down < 0), bool(column_direction @ right < 0)


def in_order(plane: np.ndarray, order: tuple[bool, bool, bool]) -> np.ndarray:
    """A slice transposed and flipped as radiological_order() says."""
    transpose, flip_rows, flip_columns = order
    plane = plane.T if transpose else plane
    return plane[::-1 if flip_rows else 1, ::-1 if flip_columns else 1]


def position_in_order(row: int, column: int, shape: tuple[int, int], order: tuple[bool, bool, bool]):
    """(row, column) of a slice's pixel once the slice (of ``shape``) is drawn in_order()."""
    transpose, flip_rows, flip_columns = order
    if transpose:
        row, column, shape = column, row, shape[::-1]
    return (shape[0] - 1 - row if flip_rows else row), (shape[1] - 1 - column if flip_columns else column)


def drawing_modules():
    """matplotlib's (patheffects, FigureCanvasAgg, LinearSegmentedColormap, Figure, Line2D), imported on the first
    call: only when a preview is drawn, since 3D Slicer's Python does not ship matplotlib (the module never draws
    one); the command line calls it while the worker starts."""
    from matplotlib import patheffects
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import LinearSegmentedColormap
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    return patheffects, FigureCanvasAgg, LinearSegmentedColormap, Figure, Line2D


def write_preview(path, segmentation_node, variance_node, slice_axis: int, image_kji=None, max_slices: int = 4,
                  points_ijk=(), title: str | None = None):
    """Write the preview PNG. image_kji: the input voxels (K, J, I) for the background (None: black); points_ijk:
    the clicks (I, J, K in voxels), marked and kept in view, the first one's slice shown (the first whose slice has
    samples, if any has); title: above the slices.
    Zero variance is left transparent so the image shows through."""
    names = result_segment_names(segmentation_node)
    by_name = segment_ids_by_name(segmentation_node)
    masks, extent, ijk_to_ras = read_segment_arrays(
        segmentation_node, [by_name[name] for name in names], full_extent=False)
    variance = image_array_kji(variance_node.GetImageData())
    view = extent  # what the view holds: the masks' extent and, where something was found, every click
    if masks.any():  # (with nothing found: the whole slices, crop_box)
        view = union_extent([extent, *([i, i, j, j, k, k] for k, j, i in
                                       clicks_in_box(points_ijk, tuple(slice(0, n) for n in variance.shape)))])
    box = crop_box(view, variance.shape)
    clicked = clicks_in_box(points_ijk, box)
    cropped = np.zeros((len(names), *(s.stop - s.start for s in box)), dtype=bool)
    if masks[0].size:
        offset = [extent[4 - 2 * kji_axis] - box[kji_axis].start for kji_axis in range(3)]
        cropped[(slice(None), *(slice(o, o + n) for o, n in zip(offset, masks.shape[1:])))] = masks
    masks, variance = cropped, variance[box]
    image = np.zeros(variance.shape) if image_kji is None else np.asarray(image_kji, dtype=float)[box]
    axis = 2 - slice_axis
    plane_axes = tuple(a for a in range(3) if a != axis)
    plane_shape = tuple(variance.shape[a] for a in plane_axes)  # of a slice before in_order()
    sample_rows = [n for n, name in enumerate(names) if not is_consensus(name)]
    consensus_rows = [n for n in range(len(names)) if n not in sample_rows]
    colours = dict(zip(sample_rows, sample_colours(len(sample_rows))))
    colours.update({n: CONSENSUS_COLOUR for n in consensus_rows})
    union = masks[sample_rows].any(axis=0) if sample_rows else masks.any(axis=0)
    found = [click for click in clicked if np.take(union, click[axis], axis=axis).any()]  # its slice has samples
    slices = preview_slices(union, axis, max_slices, masks[consensus_rows].any(axis=0) if consensus_rows else None,
                            (found or clicked)[0][axis] if clicked else None)
    spacing_kji = np.linalg.norm(np.asarray(ijk_to_ras, dtype=float)[:3, :3], axis=0)[::-1]

    order = radiological_order(plane_axes, ijk_to_ras)

    def plane_of(volume, position):
        return in_order(np.take(volume, position, axis=axis), order)

    row_axis, column_axis = plane_axes[::-1] if order[0] else plane_axes
    aspect = spacing_kji[row_axis] / spacing_kji[column_axis]  # physical proportions of the drawn pixels
    low, high = np.percentile(image, [1, 99]) if image.size else (0.0, 1.0)

    patheffects, FigureCanvasAgg, LinearSegmentedColormap, Figure, Line2D = drawing_modules()
    variance_map = LinearSegmentedColormap.from_list("sdseg_variance", list(VARIANCE_COLOUR_STOPS))
    black_edge = [patheffects.withStroke(linewidth=4.5, foreground="black")]  # of the consensus and the clicks
    title_inches = 0.4 if title else 0.0
    figure = Figure(figsize=(2 * PANEL_INCHES + 0.6, PANEL_INCHES * len(slices) + title_inches))
    FigureCanvasAgg(figure)
    grid = figure.add_gridspec(len(slices), 3, width_ratios=(1, 1, 0.06))
    axes = np.array([[figure.add_subplot(grid[row, column]) for column in range(2)] for row in range(len(slices))])
    heat = None
    for row, position in enumerate(slices):
        plane_image = plane_of(image, position)
        for column in range(2):
            axes[row, column].imshow(plane_image, cmap="gray", vmin=low, vmax=max(high, low + 1e-6),
                                     aspect=aspect, interpolation="nearest")
            axes[row, column].set_axis_off()
        planes = {n: plane_of(masks[n], position) for n in sample_rows + consensus_rows}
        drawn = [n for n, plane in planes.items() if plane.any()]
        for n in drawn:  # the consensus last, on top
            consensus = n in consensus_rows
            axes[row, 0].contour(planes[n].astype(float), levels=[0.5], colors=[colours[n]],
                                 linewidths=2.5 if consensus else 1.0, alpha=1.0 if consensus else 0.85,
                                 path_effects=black_edge if consensus else None)
        plane_variance = plane_of(variance, position)
        heat = axes[row, 1].imshow(np.ma.masked_where(plane_variance <= 0, plane_variance), cmap=variance_map,
                                   vmin=VARIANCE_DISPLAY_RANGE[0], vmax=VARIANCE_DISPLAY_RANGE[1], alpha=0.85,
                                   aspect=aspect, interpolation="nearest")
        here = [position_in_order(click[plane_axes[0]], click[plane_axes[1]], plane_shape, order)
                for click in clicked if click[axis] == position]
        for column, (y, x) in itertools.product(range(2), here):
            axes[row, column].plot(x, y, marker="+", markersize=14, markeredgewidth=2.5, color=CLICK_COLOUR,
                                   path_effects=black_edge)
        index = position + box[axis].start
        what = "samples" if drawn else "no sample"
        axes[row, 0].set_title(f"slice {index}{' (clicked)' if here else ''}: {what}", fontsize=9)
        axes[row, 1].set_title(f"slice {index}: variance", fontsize=9)
    colour_bar = figure.colorbar(heat, cax=figure.add_subplot(grid[:, 2]), label="sample variance")
    colour_bar.solids.set_alpha(1.0)  # the map itself, not blended with white as the overlay's alpha would
    handles = [Line2D([], [], color=colours[n], linewidth=2.5 if n in consensus_rows else 1.0,
                      path_effects=black_edge if n in consensus_rows else None) for n in range(len(names))]
    labels = list(names)
    if clicked:
        handles.append(Line2D([], [], linestyle="", marker="+", markersize=10, markeredgewidth=2, color=CLICK_COLOUR,
                              path_effects=black_edge))
        labels.append("click")
    figure.legend(handles, labels, loc="lower center", ncol=min(len(labels), 5), fontsize=8, frameon=False)
    if title:
        figure.suptitle(textwrap.shorten(title, TITLE_CHARACTERS, placeholder=" ..."), fontsize=10)
    figure.tight_layout(rect=(0, 0.06, 1, 1))
    with atomic_output(path) as temporary:
        figure.savefig(temporary, dpi=100, format="png")
    return str(path)
