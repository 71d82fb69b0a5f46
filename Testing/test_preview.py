"""The preview PNG read back (matplotlib's reader) for a synthetic volume whose anatomy is known: a lesion at low I
and J, a bright marker at high I and J. The slices are drawn in radiological orientation, as Slicer and the web page
show them: on the sample's grid (I to the patient's left, J to anterior) the marker is up and on the right of the
panel, on a grid whose J runs to posterior it is down and on the right. The consensus' thick contour and the
variance's colour bar are there; the image and variance panels of a row are the same size."""

from __future__ import annotations

import matplotlib.image
import numpy as np
import pytest
import slicer
from slicerlib_testing import accepted_message, write_slice_messages

from SDSegSlicerLib import preview
from SDSegSlicerLib.segmentation_writer import CONSENSUS_COLOUR, StreamedSegmentationWriter
from SDSegSlicerLib.variance_display import VARIANCE_COLOUR_STOPS

SHAPE_KJI = (9, 40, 40)
MARKER = (slice(19, 25), slice(19, 25))  # J, I: inside the preview's crop around the lesion, away from it
LESION_CENTRE_JI = (10, 10)


def synthetic_result(scene, folder, ijk_to_ras):
    k, j, i = np.mgrid[:SHAPE_KJI[0], :SHAPE_KJI[1], :SHAPE_KJI[2]]
    radius = np.array([0, 0, 3, 4, 6, 4, 3, 0, 0])[k]  # largest on slice 4
    samples = np.stack([(j - LESION_CENTRE_JI[0]) ** 2 + (i - LESION_CENTRE_JI[1]) ** 2 < (radius + grow) ** 2
                        for grow in (-1, 0, 1)]) & (radius > 0)
    p = samples.mean(axis=0)
    roi = [0, 0, 0, SHAPE_KJI[2], SHAPE_KJI[1], SHAPE_KJI[0]]
    writer = StreamedSegmentationWriter(scene, accepted_message(SHAPE_KJI, ijk_to_ras, 2, roi), "synthetic", 3)
    for message in write_slice_messages(folder, (samples, p >= 0.5, (p * (1 - p)).astype(np.float32)), roi, 2):
        writer.add_slice(message)
    writer.flush()
    image = np.zeros(SHAPE_KJI)
    image[:, MARKER[0], MARKER[1]] = 1000.0
    return writer, image


def longest_run(flags: np.ndarray) -> tuple[int, int]:
    """(start, length) of the longest run of True."""
    edges = np.diff(np.concatenate([[0], flags.astype(int), [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    longest = int(np.argmax(ends - starts))
    return int(starts[longest]), int(ends[longest] - starts[longest])


def panel(pixels: np.ndarray, columns: slice) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the first row's panel (the top quarter: four rows of panels) within ``columns``
    of the PNG: the longest runs of rows and columns where much is the black image background."""
    dark = pixels.max(axis=-1)[: pixels.shape[0] // 4, columns] < 0.15
    top, height = longest_run(dark.mean(axis=1) > 0.3)
    left, width = longest_run(dark[top:top + height].mean(axis=0) > 0.3)
    return top, left + (columns.start or 0), height, width


@pytest.mark.parametrize("j_to_anterior", [True, False], ids=["sample grid", "mirrored front to back"])
def test_preview_is_radiological_with_consensus_and_colour_bar(tmp_path, j_to_anterior):
    ijk_to_ras = np.diag([-1.0, 1.0 if j_to_anterior else -1.0, 3.0, 1.0])  # I to the patient's left
    scene = slicer.vtkMRMLScene()
    writer, image = synthetic_result(scene, tmp_path, ijk_to_ras)
    path = preview.write_preview(tmp_path / "p.png", writer.segmentation_node, writer.variance_node, 2, image)
    pixels = matplotlib.image.imread(path)[..., :3]
    width = pixels.shape[1]
    top, left, height, panel_width = panel(pixels, slice(0, int(0.44 * width)))  # the gap between the panels
    assert height > 100 and abs(height - panel_width) <= 3  # a square slice, drawn square
    _, _, right_height, right_width = panel(pixels, slice(int(0.44 * width), int(0.85 * width)))  # colour bar apart
    assert (right_height, right_width) == (height, panel_width)  # the variance panel: same size, same row
    shown = pixels[top:top + height, left:left + panel_width]
    white = np.argwhere(shown.min(axis=-1) > 0.9)
    assert len(white) > 50
    row, column = white.mean(axis=0) / [height, panel_width]
    assert column > 0.5 and (row < 0.5) == j_to_anterior, (row, column)  # anterior up, patient left on the right
    consensus = np.linalg.norm(pixels - np.array(CONSENSUS_COLOUR), axis=-1) < 0.1
    assert consensus.sum() > 40  # the thick consensus contour
    colour_bar = pixels[:, int(0.85 * width):]
    for _, rgb in VARIANCE_COLOUR_STOPS[1:]:
        assert np.linalg.norm(colour_bar - np.array(rgb), axis=-1).min() < 0.08, rgb


@pytest.mark.parametrize("j_to_anterior", [True, False], ids=["sample grid", "mirrored front to back"])
def test_the_clicked_slice_is_shown_first_with_the_click_marked_where_it_is(tmp_path, j_to_anterior):
    """A click on slice 2 (the lesion's first; its largest is 4), right of and behind the lesion: the clicked slice
    is shown (here the first row: the window of 4 slices cannot start before the lesion), the white cross is there in
    radiological orientation (patient left on the right, anterior up), and in no later row; a title is drawn above
    the panels."""
    writer, image = synthetic_result(slicer.vtkMRMLScene(), tmp_path, np.diag([-1.0, 1.0 if j_to_anterior else -1.0,
                                                                                3.0, 1.0]))
    path = preview.write_preview(tmp_path / "p.png", writer.segmentation_node, writer.variance_node, 2,
                                 np.zeros_like(image), points_ijk=[[20.0, 6.0, 2.0]], title="sample.nrrd: a title")
    pixels = matplotlib.image.imread(path)[..., :3]
    width = pixels.shape[1]
    top, left, height, panel_width = panel(pixels, slice(0, int(0.44 * width)))
    shown = pixels[top:top + height, left:left + panel_width]
    white = np.argwhere(np.linalg.norm(shown - np.array(preview.CLICK_COLOUR), axis=-1) < 0.1)
    assert len(white) > 20  # the cross, on the first row: the clicked slice
    row, column = white.mean(axis=0) / [height, panel_width]
    assert column > 0.6 and (row > 0.5) == j_to_anterior, (row, column)  # I 20 of 0..28: right; J 6: posterior
    below = pixels[top + height:, left:left + panel_width]
    in_panels = (below.max(axis=-1) < 0.15).mean(axis=1) > 0.3  # the later rows' (black) panels, not the page
    assert in_panels.sum() > 2 * height
    assert (np.linalg.norm(below[in_panels] - np.array(preview.CLICK_COLOUR), axis=-1) < 0.1).sum() == 0
    assert (pixels[:top, int(0.43 * width):int(0.55 * width)].max(axis=-1) < 0.5).any()  # the title's letters
    untitled = preview.write_preview(tmp_path / "q.png", writer.segmentation_node, writer.variance_node, 2,
                                     np.zeros_like(image))
    pixels = matplotlib.image.imread(untitled)[..., :3]
    top, *_ = panel(pixels, slice(0, int(0.44 * width)))
    assert not (pixels[:top, int(0.43 * width):int(0.55 * width)].max(axis=-1) < 0.5).any()


def test_the_preview_slices_are_consecutive_around_the_click():
    """A slice no sample reaches, between two that some do, is shown (titled "no sample"), not skipped; the window
    centres on the click, kept within the slices that have samples and the clicked one."""
    union = np.zeros((9, 2, 2), dtype=bool)
    union[[2, 3, 5, 6]] = True  # slice 4: no sample
    assert preview.preview_slices(union, 0, 4) == [2, 3, 4, 5]
    assert preview.preview_slices(union, 0, 3, centre=6) == [4, 5, 6]
    assert preview.preview_slices(union, 0, 4, centre=8) == [5, 6, 7, 8]  # a click past the lesion: shown
    assert preview.preview_slices(union, 0, 4, centre=2) == [2, 3, 4, 5]
    assert preview.preview_slices(np.zeros((5, 2, 2), bool), 0, 3, centre=0) == [0, 1, 2]
    box = (slice(1, 5), slice(0, 10), slice(2, 8))
    assert preview.clicks_in_box([[2.4, 3.0, 1.0], [9.0, 3.0, 2.0], [5.0, 5.0, 4.6]], box) == [(0, 3, 0)]


def test_the_contours_stay_on_the_variance_when_a_click_widens_the_view(tmp_path):
    """A click left of the lesion (lower I) widens the view: the samples' and the consensus' contours must move with
    it, so the consensus contour (left panels) stays centred on the variance ring (right panels) of the same rows."""
    writer, image = synthetic_result(slicer.vtkMRMLScene(), tmp_path, np.diag([-1.0, 1.0, 3.0, 1.0]))
    path = preview.write_preview(tmp_path / "p.png", writer.segmentation_node, writer.variance_node, 2,
                                 np.zeros_like(image), points_ijk=[[1.0, float(LESION_CENTRE_JI[0]), 4.0]])
    pixels = matplotlib.image.imread(path)[..., :3]
    width = pixels.shape[1]
    centres = []
    for columns in (slice(0, int(0.44 * width)), slice(int(0.44 * width), int(0.85 * width))):
        _, left, _, panel_width = panel(pixels, columns)
        region = pixels[:, left:left + panel_width]
        in_panels = (region.max(axis=-1) < 0.15).mean(axis=1) > 0.3
        colour = np.zeros(region.shape[:2], dtype=bool)
        colour[in_panels] = (region[in_panels].max(axis=-1) > 0.3) & (region[in_panels].min(axis=-1) < 0.8)
        if not centres:  # the samples' panels: the consensus contour only
            colour &= np.linalg.norm(region - np.array(CONSENSUS_COLOUR), axis=-1) < 0.1
        assert colour.sum() > 40
        centres.append(np.argwhere(colour).mean(axis=0))
    assert abs(centres[0][1] - centres[1][1]) <= 4  # columns (the I axis the click widened) within 4 pixels

