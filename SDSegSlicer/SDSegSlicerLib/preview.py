"""A PNG preview of a result: a few slices through the lesion, each shown as the image with the contours of all
samples (distinct colours) and the consensus, and as the variance heat map over the image."""

from __future__ import annotations

import numpy as np

from .atomic import atomic_output
from .segmentation_writer import (CONSENSUS_COLOUR, image_array_kji, read_segment_arrays, sample_colours,
                                  segment_ids_by_name)
from .stats import is_consensus, result_segment_names

VARIANCE_RANGE = (0.0, 0.25)  # variance of binary samples, p (1 - p)
MIN_MARGIN_VOXELS = 8
MARGIN_FRACTION = 0.25
PANEL_INCHES = 3.2


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


def preview_slices(union: np.ndarray, axis: int, count: int) -> list[int]:
    """Up to `count` slice positions along `axis`, evenly spread over the slices where any sample has voxels
    (over all slices if none has)."""
    area = np.moveaxis(union, axis, 0).reshape(union.shape[axis], -1).sum(axis=1)
    candidates = np.flatnonzero(area) if area.any() else np.arange(union.shape[axis])
    picks = np.linspace(0, len(candidates) - 1, min(count, len(candidates))).round().astype(int)
    return sorted({int(candidates[p]) for p in picks})


def write_preview(path, segmentation_node, variance_node, slice_axis: int, image_kji=None, max_slices: int = 4):
    """Write the preview PNG. image_kji: the input voxels (K, J, I) for the background (None: black).
    Zero variance is left transparent so the image shows through."""
    names = result_segment_names(segmentation_node)
    by_name = segment_ids_by_name(segmentation_node)
    masks, extent, ijk_to_ras = read_segment_arrays(
        segmentation_node, [by_name[name] for name in names], full_extent=False)
    variance = image_array_kji(variance_node.GetImageData())
    box = crop_box(extent, variance.shape)
    cropped = np.zeros((len(names), *(s.stop - s.start for s in box)), dtype=bool)
    if masks[0].size:
        offset = [extent[4 - 2 * kji_axis] - box[kji_axis].start for kji_axis in range(3)]
        cropped[(slice(None), *(slice(o, o + n) for o, n in zip(offset, masks.shape[1:])))] = masks
    masks, variance = cropped, variance[box]
    image = np.zeros(variance.shape) if image_kji is None else np.asarray(image_kji, dtype=float)[box]
    axis = 2 - slice_axis
    sample_rows = [n for n, name in enumerate(names) if not is_consensus(name)]
    colours = dict(zip(sample_rows, sample_colours(len(sample_rows))))
    colours.update({n: CONSENSUS_COLOUR for n, name in enumerate(names) if is_consensus(name)})
    slices = preview_slices(masks[sample_rows].any(axis=0) if sample_rows else masks.any(axis=0), axis, max_slices)
    spacing_kji = np.linalg.norm(np.asarray(ijk_to_ras, dtype=float)[:3, :3], axis=0)[::-1]
    plane_spacing = np.delete(spacing_kji, axis)
    aspect = plane_spacing[0] / plane_spacing[1]  # physical proportions of the (rows, columns) pixels
    low, high = np.percentile(image, [1, 99]) if image.size else (0.0, 1.0)

    # matplotlib only when a preview is drawn: 3D Slicer's Python does not ship it (the module never draws one).
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    figure = Figure(figsize=(2 * PANEL_INCHES, PANEL_INCHES * len(slices)))
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(slices), 2, squeeze=False)
    for row, position in enumerate(slices):
        plane_image = np.take(image, position, axis=axis)
        for column in range(2):
            axes[row, column].imshow(plane_image, cmap="gray", vmin=low, vmax=max(high, low + 1e-6),
                                     aspect=aspect, interpolation="nearest")
            axes[row, column].set_axis_off()
        for n in range(len(names)):
            plane_mask = np.take(masks[n], position, axis=axis)
            if plane_mask.any():
                axes[row, 0].contour(plane_mask.astype(float), levels=[0.5], colors=[colours[n]],
                                     linewidths=2.0 if n not in sample_rows else 1.0,
                                     linestyles="dashed" if n not in sample_rows else "solid")
        plane_variance = np.take(variance, position, axis=axis)
        heat = axes[row, 1].imshow(np.ma.masked_where(plane_variance <= 0, plane_variance), cmap="inferno",
                                   vmin=VARIANCE_RANGE[0], vmax=VARIANCE_RANGE[1], alpha=0.75, aspect=aspect,
                                   interpolation="nearest")
        index = position + box[axis].start
        axes[row, 0].set_title(f"slice {index}: samples", fontsize=9)
        axes[row, 1].set_title(f"slice {index}: variance", fontsize=9)
        figure.colorbar(heat, ax=axes[row, 1], fraction=0.046, pad=0.04)
    handles = [Line2D([], [], color=colours[n], linestyle="solid" if n in sample_rows else "dashed")
               for n in range(len(names))]
    figure.legend(handles, names, loc="lower center", ncol=min(len(names), 5), fontsize=8, frameon=False)
    figure.tight_layout(rect=(0, 0.06, 1, 1))
    with atomic_output(path) as temporary:
        figure.savefig(temporary, dpi=100, format="png")
    return str(path)
