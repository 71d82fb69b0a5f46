"""SDSegSlicer Web in a REAL browser: `sdseg-slicer web` (trame-slicer: Slicer's MRML and slice views) as a real
process with its real worker and the bundled sdseg-small model, driven by Playwright in the system Chromium
(headless). The views fit their slice (a new page, a resized window, Reset Camera) and keep it; a click on the tumour
in the axial view, Segment, the result read back from the page and from its .seg.nrrd download (slicerio), a sample
accepted and painted on in the segment editor; the page's exports on the input's grid and its result the command
line's, voxel by voxel; Cancel in the middle of a run (the page answers at once, the slices that arrived are
kept), a double click on Segment (one run) and bad numbers refused before anything starts; the token and the upload
limit refused; a second run replaces the first one's result, and another volume drops the result of the one
before. Under CI=true a missing browser fails the run. Every wait is for a state the page shows (never a fixed
time that a loaded machine may exceed)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from slicerlib_testing import (CLI_TIMEOUT_S, lib_python_path, process_alive, read_seg_nrrd_with_slicerio,
                               worker_pids)

from SDSegSlicerLib.run import MAX_SAMPLES
from SDSegSlicerLib.stats import dice

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if os.environ.get("CI") != "true":
    pytest.importorskip("trame_slicer")
    pytest.importorskip("playwright")
    if CHROMIUM is None:
        pytest.skip("no chromium (apt-get install chromium)", allow_module_level=True)
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError  # noqa: E402
from playwright.sync_api import sync_playwright  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "Resources" / "SampleData" / "sample.nrrd"
SAMPLE_LABEL = REPO / "Resources" / "SampleData" / "sample_label.nrrd"
README_SCREENSHOT = Path(__file__).resolve().parent / "Data" / "web" / "segmented.png"
VIEWPORT = {"width": 1400, "height": 850}
MODEL = "sdseg-small"
SHOWN_SLICE = 12  # the axial views open at the middle slice of the sample's 25
RUN_TIMEOUT_MS = 600_000  # a whole run on a loaded machine
STATE_TIMEOUT_MS = 120_000  # for a text or an image the page shows after a click: generous, for a loaded machine
TOKEN = "web-s3cret"
HEALTHY_IJK = (30.0, 60.0)  # normal brain on the shown slice, away from the tumour: no lesion there


class WebProcess:
    """`sdseg-slicer web` on a free loopback port, its log collected."""

    def __init__(self, *options):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=lib_python_path())
        self.process = subprocess.Popen(
            [sys.executable, "-m", "SDSegSlicerLib.headless", "web", *options, "--port", str(self.port)],
            env=env, stderr=subprocess.PIPE, text=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        self.lines = []
        for line in self.process.stderr:
            self.lines.append(line)
            if "SDSegSlicer Web on" in line:
                threading.Thread(target=self.lines.extend, args=(self.process.stderr,), daemon=True).start()
                self.url = f"http://127.0.0.1:{self.port}/"
                return
        raise AssertionError("the web app did not start: " + "".join(self.lines))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        self.process.wait(CLI_TIMEOUT_S)


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def app():
    web = WebProcess(str(SAMPLE))
    yield web
    web.stop()
    assert not app_errors(web.lines), "".join(web.lines)


# wslink's log when a page closes while its views are still streaming images: the browser went away, not an error
CLOSED_PAGE = "Cannot write to closing transport"


def app_errors(lines) -> list[str]:
    """The exception lines of the tracebacks in the app's log, but those of a page closed mid-frame (CLOSED_PAGE)."""
    errors = []
    for block in "".join(lines).split("Traceback (most recent call last):")[1:]:
        exception = next((line for line in block.splitlines()[1:] if line and not line.startswith(" ")), block)
        if CLOSED_PAGE not in exception:
            errors.append(exception)
    return errors


def open_page(browser, url):
    page = browser.new_page(viewport=VIEWPORT, accept_downloads=True)
    page.goto(url)
    page.wait_for_selector("#sdseg-segment", timeout=60_000)
    page.wait_for_function("!document.querySelector('#sdseg-device-line').innerText.startsWith('worker')",
                           timeout=CLI_TIMEOUT_S * 1000)
    wait_for_fitted_slice(page)
    return page


def axial_view_box(page) -> dict | None:
    """The bounding box of the axial view's image on the page (None while it has none)."""
    images = page.query_selector_all("img")
    return images[0].bounding_box() if images else None


def slice_on_screen(page) -> tuple[float, float, float, float]:
    """(left, top, width, height) in pixels of the image of the shown slice in the axial view: the longest runs of rows
    and of columns of a screenshot of the view where most pixels are not black (the sample's slices have tissue up
    to their edges; the space around a slice is black; the view's letters are sparse, its slider a line apart)."""
    from PIL import Image

    view = axial_view_box(page)
    if view is None:
        return 0.0, 0.0, 0.0, 0.0
    shot = np.asarray(Image.open(BytesIO(page.screenshot(clip=view))).convert("L"), dtype=int) > 8
    scale = view["width"] / shot.shape[1]  # screenshot pixels per CSS pixel
    (top, height), (left, width) = (longest_run(shot.mean(axis=axis) > 0.3) for axis in (1, 0))
    return left / scale, top / scale, width / scale, height / scale


def longest_run(flags: np.ndarray) -> tuple[int, int]:
    """(start, length) of the longest run of True in a 1-D array ((0, 0) for none)."""
    edges = np.diff(np.concatenate([[0], flags.astype(int), [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    if not len(starts):
        return 0, 0
    longest = int(np.argmax(ends - starts))
    return int(starts[longest]), int(ends[longest] - starts[longest])


def slice_fits_view(page) -> bool:
    """The axial view shows its (square) slice as large as the view allows, centred: not zoomed in (cut to the whole
    view), not zoomed out (small). Judged on the longer side of what slice_on_screen() finds, as a slice may have
    dark voxels along one edge."""
    view = axial_view_box(page)
    if view is None:
        return False
    left, top, width, height = slice_on_screen(page)
    side, tolerance = min(view["width"], view["height"]), 0.02 * min(view["width"], view["height"])
    start, length, view_length = (left, width, view["width"]) if width >= height else (top, height, view["height"])
    return abs(length - side) < tolerance and abs(start + length / 2 - view_length / 2) < tolerance


def wait_for_fitted_slice(page, timeout_s: float = 120) -> None:
    """Wait until the axial view shows its slice fitted to the view (slice_fits_view), the views streamed."""
    deadline = time.monotonic() + timeout_s
    while not slice_fits_view(page):
        assert time.monotonic() < deadline, f"the axial view does not fit its slice: {slice_on_screen(page)}"
        page.wait_for_timeout(500)


def axial_screen_position(page, i: float, j: float) -> tuple[float, float]:
    """Where voxel (i, j) of the shown axial slice is on the screen: the sample (96 x 96 voxels, square pixels) is
    fitted to the axial view, patient left to the right (i), anterior up (j)."""
    view = page.query_selector_all("img")[0].bounding_box()
    scale = min(view["width"], view["height"]) / 96
    return (view["x"] + view["width"] / 2 + (i + 0.5 - 48) * scale,
            view["y"] + view["height"] / 2 - (j + 0.5 - 48) * scale)


def tumour_click_ijk() -> tuple[float, float]:
    """The most interior voxel (i, j) of the tumour label on the shown slice: where a user clicks."""
    from sdseg.masks import interior_point

    label = sitk.GetArrayFromImage(sitk.ReadImage(str(SAMPLE_LABEL))) > 0
    j, i = interior_point(label[SHOWN_SLICE])
    return i, j


def click_point(page, i: float, j: float) -> None:
    """Click lesion, then a click on voxel (i, j) of the shown slice in the axial view."""
    page.click("#sdseg-place-point")
    x, y = axial_screen_position(page, i, j)
    page.mouse.move(x, y)
    page.mouse.click(x, y)
    page.wait_for_selector(".sdseg-point", timeout=STATE_TIMEOUT_MS)


def click_tumour(page) -> tuple[float, float]:
    """Click lesion, then a click on the tumour in the axial view; returns the voxel (i, j) aimed at."""
    i, j = tumour_click_ijk()
    click_point(page, i, j)
    return i, j


def close_quietly(page) -> None:
    """Close the page once its views have streamed their last images (a page closed in the middle of a frame leaves
    a CLOSED_PAGE traceback in the app's log)."""
    page.wait_for_timeout(3000)
    page.close()


def colour_around(page, i: float, j: float, half: int = 8) -> float:
    """The fraction of the axial view's pixels within ``half`` voxels of voxel (i, j) that are drawn in colour (a
    segment, the variance overlay, a point): the MR image itself is grey."""
    from PIL import Image

    view = page.query_selector_all("img")[0].bounding_box()
    size = 2 * half * min(view["width"], view["height"]) / 96
    x, y = axial_screen_position(page, i, j)
    shot = page.screenshot(clip={"x": x - size / 2, "y": y - size / 2, "width": size, "height": size})
    rgb = np.asarray(Image.open(BytesIO(shot)).convert("RGB"), dtype=int)
    return float((rgb.max(axis=2) - rgb.min(axis=2) > 60).mean())


def view_pixels(page, index: int) -> np.ndarray:
    """The RGB pixels (rows, columns, 3) of view ``index`` (0: axial, 1: 3D, 2: coronal, 3: sagittal)."""
    from PIL import Image

    box = page.query_selector_all("img")[index].bounding_box()
    return np.asarray(Image.open(BytesIO(page.screenshot(clip=box))).convert("RGB"), dtype=int)


def yellow_fraction(rgb: np.ndarray) -> float:
    """The fraction of pixels in the consensus' yellow (CONSENSUS_COLOUR, shaded): red and green high, blue low."""
    return float(((rgb[..., 0] > 120) & (rgb[..., 1] > 100) & (rgb[..., 2] < 0.5 * rgb[..., 1])).mean())


def wait_for_colour(page, i: float, j: float, coloured: bool, timeout_s: float = STATE_TIMEOUT_MS / 1000) -> float:
    """Wait until the axial view around voxel (i, j) is drawn in colour (``coloured``: more than a fifth of it) or
    grey (less than 1 %), the views streamed; returns the last colour_around()."""
    deadline = time.monotonic() + timeout_s
    while True:
        fraction = colour_around(page, i, j)
        if (fraction > 0.2 if coloured else fraction < 0.01) or time.monotonic() > deadline:
            return fraction
        page.wait_for_timeout(1000)


def draw_box(page, corner: tuple[float, float], opposite: tuple[float, float]) -> None:
    """Draw box, then its two opposite corners (voxels i, j of the shown slice) in the axial view."""
    page.click("#sdseg-place-box")
    for i, j in (corner, opposite):
        x, y = axial_screen_position(page, i, j)
        page.mouse.move(x, y)
        page.mouse.click(x, y)
    page.wait_for_function("document.querySelector('#sdseg-status').innerText.startsWith('Box drawn')",
                           timeout=STATE_TIMEOUT_MS)


def choose_model(page, model: str) -> None:
    page.locator(".v-select").filter(has=page.locator("#sdseg-model")).click()
    page.click(f".v-list-item:has-text('{model}')")


def segment_with(page, model: str) -> None:
    """Choose ``model``, press Segment and wait for the end of the run it starts (not the 'Done' a run before left:
    every text of the progress line is recorded, RECORD_PROGRESS)."""
    choose_model(page, model)
    page.evaluate(RECORD_PROGRESS)
    page.click("#sdseg-segment")
    page.wait_for_function("() => { const texts = window.sdsegProgress, start = texts.lastIndexOf('Starting...');"
                           " return start >= 0 && texts.slice(start).some((text) => text.startsWith('Done')); }",
                           timeout=RUN_TIMEOUT_MS)


def save_readme_screenshot(page) -> None:
    """With SDSEG_UPDATE_WEB_SCREENSHOT=1, write the page as the README's screenshot (README_SCREENSHOT)."""
    if os.environ.get("SDSEG_UPDATE_WEB_SCREENSHOT") == "1":
        page.screenshot(path=str(README_SCREENSHOT))


def on_label_lattice(masks: dict, ijk_to_lps: np.ndarray, label_image) -> dict:
    """Masks read from a .seg.nrrd (their own voxel lattice: Slicer may order the slices the other way round)
    resampled (nearest voxel) onto the lattice of ``label_image`` (SimpleITK), as (K, J, I) arrays."""
    size = label_image.GetSize()
    k, j, i = np.meshgrid(*(np.arange(n) for n in size[::-1]), indexing="ij")
    index = np.stack([i.ravel(), j.ravel(), k.ravel()])
    direction = np.asarray(label_image.GetDirection()).reshape(3, 3) * np.asarray(label_image.GetSpacing())
    lps = direction @ index + np.asarray(label_image.GetOrigin())[:, None]
    seg_index = np.rint(np.linalg.inv(ijk_to_lps) @ np.vstack([lps, np.ones(lps.shape[1])]))[:3].astype(int)
    resampled = {}
    for name, mask in masks.items():
        inside = np.all((seg_index >= 0) & (seg_index < np.asarray(mask.shape[::-1])[:, None]), axis=0)
        values = np.zeros(index.shape[1], dtype=bool)
        values[inside] = mask[seg_index[2, inside], seg_index[1, inside], seg_index[0, inside]]
        resampled[name] = values.reshape(size[::-1])
    return resampled


def read_result(path: Path) -> dict:
    """The segments of a downloaded .seg.nrrd, read by slicerio, on the sample's voxel lattice."""
    masks, ijk_to_lps = read_seg_nrrd_with_slicerio(path)
    return on_label_lattice(masks, ijk_to_lps, sitk.ReadImage(str(SAMPLE_LABEL)))


FITS = "(element) => element.scrollWidth <= element.clientWidth"  # nothing cut or scrolled sideways


def table(page) -> dict:
    """The statistics table: {segment name: {column: text}}."""
    headers = [cell.inner_text() for cell in page.query_selector_all("#sdseg-stats th")]
    rows = [[cell.inner_text() for cell in row.query_selector_all("td")]
            for row in page.query_selector_all("#sdseg-stats tbody tr")]
    return {row[0]: dict(zip(headers, row)) for row in rows}


def download(page, what: str, out_dir: Path) -> Path:
    with page.expect_download(timeout=60_000) as event:
        page.click(f"#sdseg-export-{what}")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / event.value.suggested_filename
    event.value.save_as(str(path))
    return path


def test_click_segment_review_accept_edit_export(app, browser, tmp_path):
    page = open_page(browser, app.url)
    assert page.inner_text("#sdseg-volume-name") == "sample" and slice_fits_view(page)
    assert any(line.startswith("SDSegSlicer Web on") and line.rstrip().endswith("(Ctrl-C to stop)")
               for line in app.lines)  # no --timeout: no idle stop

    # One click on the tumour in the axial view.
    i, j = click_tumour(page)
    point = re.fullmatch(r"lesion 1: IJK (\d+), (\d+), (\d+)", page.inner_text(".sdseg-point"))
    clicked = [int(v) for v in point.groups()]
    assert abs(clicked[0] - i) <= 1 and abs(clicked[1] - j) <= 1 and clicked[2] == SHOWN_SLICE
    segment_with(page, MODEL)
    assert re.search(r"lesion 1: \d+\.\d\d ml on \d+ slice", page.inner_text("#sdseg-status"))
    assert page.get_attribute("#sdseg-progress-bar", "aria-valuenow") == "100"  # though the run stopped before 25
    assert wait_for_colour(page, i, j, coloured=True) > 0.2  # the result drawn on the tumour
    legend = page.inner_text("#sdseg-legend")
    assert "consensus" in legend and "variance 0" in legend and "0.25" in legend
    assert "linear-gradient" in page.get_attribute("#sdseg-variance-colour-bar", "style")
    deadline = time.monotonic() + STATE_TIMEOUT_MS / 1000  # the consensus as a surface in the 3D view
    while yellow_fraction(view_pixels(page, 1)) < 0.002:
        assert time.monotonic() < deadline, "no consensus surface in the 3D view"
        page.wait_for_timeout(500)
    assert slice_fits_view(page)  # still the whole slice
    save_readme_screenshot(page)

    # The page's numbers are the file's: the .seg.nrrd download read back by slicerio. Its five columns fit.
    rows = table(page)
    assert list(next(iter(rows.values()))) == ["segment", "ml", "voxels", "mean var.", "Dice"]
    assert page.evaluate(FITS, page.query_selector("#sdseg-stats .v-table__wrapper"))
    assert page.evaluate(FITS, page.query_selector("#sdseg-steps").evaluate_handle("e => e.closest('.v-field')"
                                                                              ".querySelector('label')"))
    masks = read_result(download(page, "segmentation", tmp_path))
    assert set(rows) == set(masks) and len(masks) == 1 + 8
    for name, mask in masks.items():
        assert int(rows[name]["voxels"]) == int(mask.sum())
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(SAMPLE_LABEL))) > 0
    consensus = masks["consensus"]
    assert consensus[SHOWN_SLICE, int(round(j)), int(round(i))]  # the clicked voxel is in the lesion found
    # the clicked slice segmented (the click is on the tumour's smaller part: the propagation stops where the
    # consensus jumps onto the larger one, sdseg.lesion_jumps), and nothing on the slices without tumour
    assert dice(consensus[SHOWN_SLICE], label[SHOWN_SLICE]) > 0.5
    assert not consensus[~label.any(axis=(1, 2))].any()
    variance = sitk.GetArrayFromImage(sitk.ReadImage(str(download(page, "variance", tmp_path))))
    assert variance.shape == label.shape and 0 < variance.max() <= 0.25
    assert page.is_disabled("#sdseg-export-dicom") and "DICOM" in page.inner_text("#sdseg-dicom-only")  # a .nrrd

    # Before Accept the segment editor says what to do.
    page.click("#sdseg-tool-editor")
    wait_for_text(page, "#sdseg-editor-hint", "^Nothing to edit yet: segment, show One sample, press Accept")
    page.click("#sdseg-tool-panel")

    # Review: one sample, the next one, accept it; the variance overlay off and on.
    page.click("#sdseg-mode-one")
    page.wait_for_function("document.querySelector('#sdseg-sample-label').innerText === 'Sample 1 of 8'")
    page.click("#sdseg-next")
    page.wait_for_function("document.querySelector('#sdseg-sample-label').innerText === 'Sample 2 of 8'")
    page.click("#sdseg-accept")
    page.wait_for_function("document.querySelector('#sdseg-status').innerText.includes(\"'accepted'\")")

    # Edit the accepted segment: paint a stroke away from the lesion in the axial view.
    page.click("#sdseg-tool-editor")
    assert page.query_selector("#sdseg-editor-hint") is None
    page.click(".v-navigation-drawer button:has(.mdi-brush)")
    page.wait_for_timeout(500)
    start, end = axial_screen_position(page, 20, 80), axial_screen_position(page, 30, 80)
    page.mouse.move(*start)
    page.mouse.down()
    for step in range(1, 11):
        page.mouse.move(start[0] + (end[0] - start[0]) * step / 10, start[1])
        page.wait_for_timeout(50)
    page.mouse.up()
    page.wait_for_timeout(1000)
    page.click("#sdseg-tool-panel")
    edited = read_result(download(page, "segmentation", tmp_path))
    assert np.all(edited["accepted"] >= masks["sample 2"])  # the accepted sample, plus the stroke
    painted = edited["accepted"] & ~masks["sample 2"]
    assert painted[SHOWN_SLICE, 75:86, 15:36].sum() > 10 and painted.sum() == painted[SHOWN_SLICE].sum()
    assert np.array_equal(edited["sample 2"], masks["sample 2"])  # the sample itself stays as it was
    page.close()


def move_axial_slice(page, slice_k: int) -> None:
    """Show slice ``slice_k`` of the sample in the axial view: its slider's thumb moved with the arrow keys (one slice a
    press), then wait until the view shows it fitted."""
    thumb = page.locator(".slice-slider .v-slider-thumb").first
    low, step = float(thumb.get_attribute("aria-valuemin")), 6.5  # the sample's slices: 6.5 mm apart
    assert low == pytest.approx(-78)  # the axial view's slider: S from -78 (file slice 0) to +78 (slice 24)
    target = low + slice_k * step
    thumb.focus()
    while abs((now := float(thumb.get_attribute("aria-valuenow"))) - target) > 0.01:
        page.keyboard.press("ArrowRight" if now < target else "ArrowLeft")
        page.wait_for_function("([thumb, now]) => Number(thumb.getAttribute('aria-valuenow')) !== now",
                               arg=[thumb.element_handle(), now], timeout=60_000)
    wait_for_fitted_slice(page)


def axial_slice_offset(page) -> float:
    return float(page.locator(".slice-slider .v-slider-thumb").first.get_attribute("aria-valuenow"))


def test_views_fit_their_slice_when_resized_and_reset_keeping_the_slice(app, browser):
    """The axial view fits its whole slice on a new page, after the browser window changes size (as when a page lays
    itself out after its first image) and after Reset Camera, on the slice the user chose (not the middle one)."""
    page = open_page(browser, app.url)  # fitted (open_page waits for it)
    move_axial_slice(page, 16)
    for size in ({"width": 1100, "height": 950}, {"width": 1600, "height": 700}, VIEWPORT):
        page.set_viewport_size(size)
        wait_for_fitted_slice(page)
        assert axial_slice_offset(page) == pytest.approx(-78 + 16 * 6.5)
    page.mouse.move(*axial_screen_position(page, 48, 48))
    start, deadline = axial_slice_offset(page), time.monotonic() + STATE_TIMEOUT_MS / 1000
    page.mouse.wheel(0, -120)  # one notch: as in Slicer, the next slice (a frame caught mid-update is no zoom)
    while axial_slice_offset(page) == start:  # until it shows, however late
        assert time.monotonic() < deadline, "the mouse wheel did not move the slice"
        page.wait_for_timeout(200)
    chosen = axial_slice_offset(page)
    assert abs(chosen - start) == pytest.approx(6.5)
    page.locator(".view-gutter button").first.click()
    wait_for_fitted_slice(page)
    assert axial_slice_offset(page) == pytest.approx(chosen)  # Reset Camera keeps the slice the user is on
    close_quietly(page)


def test_the_slider_shows_the_slice_after_fast_arrow_presses(app, browser):
    """Arrow presses faster than the app answers them: once the view shows the last one's slice, its slider shows that
    slice too (an answer to an earlier press, arriving late, must not move the thumb back)."""
    page = open_page(browser, app.url)
    move_axial_slice(page, SHOWN_SLICE)  # the app's views keep the slice an earlier page left
    thumb = page.locator(".slice-slider .v-slider-thumb").first
    for presses, key, slice_k in ((4, "ArrowRight", SHOWN_SLICE + 4), (7, "ArrowLeft", SHOWN_SLICE - 3)):
        thumb.focus()
        for _ in range(presses):
            page.keyboard.press(key)
        wait_for_text(page, "#sdseg-view-Red .sdseg-slice", f"^slice K {slice_k} of 0-24 ")
        wait_for_fitted_slice(page)
        assert axial_slice_offset(page) == pytest.approx(-78 + slice_k * 6.5)
    close_quietly(page)


def annotation_boxes(page, view: str) -> dict:
    """The boxes on the page of the texts over slice view ``view`` (Red, Green, Yellow): title, slice, edges."""
    selectors = {"title": ".sdseg-view-title", "slice": ".sdseg-slice",
                 **{edge: f".sdseg-edge-{edge}" for edge in ("left", "right", "top", "bottom")}}
    return {key: page.locator(f"#sdseg-view-{view} {selector}").bounding_box() for key, selector in selectors.items()}


def test_slice_views_show_their_name_edge_letters_and_slice_number(app, browser):
    """Each slice view shows its name, the patient direction at its edges (radiological: R on the left of the axial
    view, as the image is drawn: the click helpers put the patient's left on the right) and the slice shown in the
    file's indices, following the slider; the texts lie on their view."""
    page = open_page(browser, app.url)
    red = "#sdseg-view-Red"
    assert page.inner_text(f"{red} .sdseg-view-title") == "Axial · Red"
    assert page.inner_text("#sdseg-view-Green .sdseg-view-title") == "Coronal · Green"
    assert page.inner_text("#sdseg-view-Yellow .sdseg-view-title") == "Sagittal · Yellow"
    letters = {edge: page.inner_text(f"{red} .sdseg-edge-{edge}") for edge in ("left", "right", "top", "bottom")}
    assert letters == {"left": "R", "right": "L", "top": "A", "bottom": "P"}
    view, boxes = axial_view_box(page), annotation_boxes(page, "Red")
    for key, box in boxes.items():  # on the view image
        assert view["x"] <= box["x"] and box["x"] + box["width"] <= view["x"] + view["width"], key
        assert view["y"] <= box["y"] and box["y"] + box["height"] <= view["y"] + view["height"], key
    centre_x, centre_y = view["x"] + view["width"] / 2, view["y"] + view["height"] / 2
    assert boxes["left"]["x"] < centre_x < boxes["right"]["x"] and boxes["top"]["y"] < centre_y < boxes["bottom"]["y"]
    move_axial_slice(page, 16)
    wait_for_text(page, f"{red} .sdseg-slice", "^slice K 16 of 0-24 · S 26\\.0 mm$")
    move_axial_slice(page, 15)
    wait_for_text(page, f"{red} .sdseg-slice", "^slice K 15 of 0-24 · S 19\\.5 mm$")
    close_quietly(page)


README_POINT = (45, 31, 16)  # the README's `segment --point-ijk 45,31,16`: the tumour on slice 16 of the sample's 25


def test_the_page_keeps_the_input_grid_and_gives_the_command_lines_result(app, browser, tmp_path):
    """A click on file slice 16 is IJK 45, 31, 16 on the page (not slice 24 - 16 = 8); the page's exports keep the
    input's grid exactly (index order, origin, directions); the page's result is `segment --point-ijk 45,31,16`'s,
    voxel by voxel."""
    page = open_page(browser, app.url)
    page.click("#sdseg-clear-prompts")
    wait_for_text(page, "#sdseg-status", "^Cleared: click the lesion")
    move_axial_slice(page, README_POINT[2])
    click_point(page, *README_POINT[:2])
    assert page.inner_text(".sdseg-point") == "lesion 1: IJK 45, 31, 16"
    page.fill("#sdseg-samples", "2")
    segment_with(page, MODEL)
    web_masks, web_ijk_to_lps = read_seg_nrrd_with_slicerio(download(page, "segmentation", tmp_path / "web"))
    web_variance = sitk.ReadImage(str(download(page, "variance", tmp_path / "web")))
    web_nifti = sitk.ReadImage(str(download(page, "nifti", tmp_path / "web")))
    page.fill("#sdseg-samples", "8")
    close_quietly(page)

    cli = tmp_path / "cli" / "sample.seg.nrrd"
    subprocess.run([sys.executable, "-m", "SDSegSlicerLib.headless", "segment", str(SAMPLE), "--point-ijk",
                    ",".join(map(str, README_POINT)), "--model", MODEL, "--samples", "2", "-o", str(cli)],
                   check=True, capture_output=True, timeout=CLI_TIMEOUT_S,
                   env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=lib_python_path()))
    cli_masks, cli_ijk_to_lps = read_seg_nrrd_with_slicerio(cli)
    sample = sitk.ReadImage(str(SAMPLE))
    sample_ijk_to_lps = np.eye(4)
    sample_ijk_to_lps[:3, :3] = np.asarray(sample.GetDirection()).reshape(3, 3) * np.asarray(sample.GetSpacing())
    sample_ijk_to_lps[:3, 3] = sample.GetOrigin()
    assert np.allclose(web_ijk_to_lps, sample_ijk_to_lps, atol=1e-4), web_ijk_to_lps  # z step +6.5, origin -78
    assert np.allclose(cli_ijk_to_lps, sample_ijk_to_lps, atol=1e-4)
    assert web_masks["consensus"][README_POINT[::-1]]  # the clicked voxel, at the file's indices
    assert set(web_masks) == set(cli_masks) == {"consensus", "sample 1", "sample 2"}
    for name, mask in web_masks.items():
        assert np.array_equal(mask, cli_masks[name]), f"{name}: {mask.sum()} vs {cli_masks[name].sum()} voxels"
    cli_variance = sitk.ReadImage(str(cli.with_name("sample_variance.nrrd")))
    for image in (web_variance, web_nifti):
        assert image.GetSize() == sample.GetSize()
        assert np.allclose(image.GetOrigin(), sample.GetOrigin(), atol=1e-4)
        assert np.allclose(image.GetDirection(), sample.GetDirection(), atol=1e-6)
        assert np.allclose(image.GetSpacing(), sample.GetSpacing(), atol=1e-6)
    assert np.allclose(sitk.GetArrayFromImage(web_variance), sitk.GetArrayFromImage(cli_variance), atol=1e-6)
    assert np.array_equal(sitk.GetArrayFromImage(web_nifti) == 1, web_masks["consensus"])


# Records each text #sdseg-progress shows, in order (window.sdsegProgress).
RECORD_PROGRESS = """window.sdsegProgress = [];
new MutationObserver(() => {
  const text = document.querySelector('#sdseg-progress').innerText;
  if (text !== window.sdsegProgress[window.sdsegProgress.length - 1]) window.sdsegProgress.push(text);
}).observe(document.body, {subtree: true, childList: true, characterData: true});"""


RECORDED_RUN_DONE = """() => {  // a "Done" recorded after this page's "Starting..."
  const start = window.sdsegProgress.indexOf('Starting...');
  return start >= 0 && window.sdsegProgress.slice(start).some(text => text.startsWith('Done'));
}"""


def wait_for_text(page, selector: str, pattern: str, timeout: int = STATE_TIMEOUT_MS) -> str:
    """Wait until the text of ``selector`` matches the regular expression ``pattern``; returns the text. A timeout
    fails with the texts the page shows then (the selector's, the status and the progress line) and, where the page
    records them (RECORD_PROGRESS), the progress lines it showed."""
    try:
        page.wait_for_function("([selector, pattern]) => new RegExp(pattern).test("
                               "document.querySelector(selector)?.innerText ?? '')", arg=[selector, pattern],
                               timeout=timeout)
    except PlaywrightTimeoutError:
        shown = {name: page.evaluate("s => document.querySelector(s)?.innerText", name)
                 for name in (selector, "#sdseg-status", "#sdseg-progress")}
        shown["progress so far"] = page.evaluate("window.sdsegProgress")
        raise AssertionError(f"no text matching {pattern!r} in {selector} after {timeout} ms; the page shows {shown}")
    return page.inner_text(selector)


def test_double_click_is_one_run_and_cancel_keeps_the_slices(app, browser):
    page = open_page(browser, app.url)
    page.click("#sdseg-clear-prompts")
    wait_for_text(page, "#sdseg-status", "^Cleared: click the lesion")
    click_tumour(page)
    choose_model(page, MODEL)
    page.fill("#sdseg-samples", "2")
    page.evaluate(RECORD_PROGRESS)

    # A double click on Segment: one run, to its end (neither cancelled by the second click nor run again).
    page.dblclick("#sdseg-segment")
    page.wait_for_function(RECORDED_RUN_DONE, timeout=RUN_TIMEOUT_MS)  # not the "Done" of an earlier test's run
    page.wait_for_timeout(3000)
    progress = page.evaluate("window.sdsegProgress")
    assert progress.count("Starting...") == 1 and progress[-1].startswith("Done"), progress
    assert len(table(page)) == 1 + 2

    # A long run (the whole volume, 25 slices, at all of the model's 1,000 sampling steps: minutes, so that it is still
    # running when Cancel arrives, however loaded the machine; a cancel is honoured at the next step), the Steps typed
    # just before the click (the click sends the page's fields): the page answers its clicks while it runs, and
    # Cancel stops it at once, keeping the slices that arrived, the Segment button back.
    page.click("#sdseg-clear-prompts")
    page.fill("#sdseg-samples", "8")
    page.fill("#sdseg-steps", "1000")
    page.click("#sdseg-segment")
    wait_for_text(page, "#sdseg-progress", "^segmenting: [1-9]", RUN_TIMEOUT_MS)
    page.click("#sdseg-mode-all")
    wait_for_text(page, "#sdseg-sample-label", "^All ")
    page.click("#sdseg-segment")
    wait_for_text(page, "#sdseg-status", "^Cancel", RUN_TIMEOUT_MS)  # "Cancelling: ...", or already "Cancelled: ..."
    kept = int(re.search(r"^Cancelled after (\d+) slices", wait_for_text(
        page, "#sdseg-progress", "^Cancelled after", RUN_TIMEOUT_MS)).group(1))
    assert page.inner_text("#sdseg-status") == "Cancelled: the slices already segmented are kept."
    assert page.inner_text("#sdseg-segment").lower() == "segment" and not page.is_disabled("#sdseg-export-segmentation")
    rows = table(page)
    assert len(rows) == 1 + 8 and "consensus" in rows and 1 <= kept < 25
    page.wait_for_timeout(3000)
    assert page.inner_text("#sdseg-progress").startswith("Cancelled")  # the Cancel click started no run
    assert page.evaluate("window.sdsegProgress").count("Starting...") == 2
    page.fill("#sdseg-steps", "0")
    page.close()


def test_a_bad_number_or_an_unfinished_box_is_refused_in_one_line_and_the_result_stays(app, browser):
    page = open_page(browser, app.url)
    if page.query_selector("#sdseg-results") is None:  # run alone: a result first
        click_tumour(page)
        page.fill("#sdseg-samples", "2")
        segment_with(page, MODEL)
    results, progress = table(page), page.inner_text("#sdseg-progress")
    page.evaluate(RECORD_PROGRESS)
    for field, value in (("samples", ""), ("samples", "0"), ("samples", "-1"), ("samples", "2.5"),
                         ("samples", str(MAX_SAMPLES + 1)), ("steps", "-3"), ("seed", ""), ("seed", "-1")):
        page.fill("#sdseg-samples", "2")
        page.fill("#sdseg-steps", "0")
        page.fill("#sdseg-seed", "0")
        page.fill(f"#sdseg-{field}", value)
        page.click("#sdseg-segment")
        said = "the field is empty" if value == "" else f"not {re.escape(value)}"
        status = wait_for_text(page, "#sdseg-status", f"^{field.title()} must be a whole number .*: {said}\\.$")
        assert "\n" not in status.strip() and "int()" not in status
        page.wait_for_timeout(1000)  # nothing starts
        assert page.inner_text("#sdseg-segment").lower() == "segment"
        assert page.inner_text("#sdseg-progress") == progress and table(page) == results
    # Segment with the box's first corner only clicked: refused, not the whole volume instead of the box.
    page.fill("#sdseg-samples", "8")
    page.fill("#sdseg-seed", "0")
    page.click("#sdseg-place-box")
    page.mouse.click(*axial_screen_position(page, 40, 40))
    page.click("#sdseg-segment")
    wait_for_text(page, "#sdseg-status", "^Not started: the box is not finished: click its second corner")
    page.wait_for_timeout(1000)  # nothing starts
    assert page.inner_text("#sdseg-segment").lower() == "segment" and table(page) == results
    page.click("#sdseg-clear-prompts")
    wait_for_text(page, "#sdseg-status", "^Cleared: click the lesion")
    assert set(page.evaluate("window.sdsegProgress")) <= {progress}  # no run started
    page.close()


def test_a_second_run_replaces_the_first_result(app, browser, tmp_path):
    page = open_page(browser, app.url)
    workers = worker_pids(app.process.pid)
    assert len(workers) == 1, workers
    page.click("#sdseg-clear-prompts")
    wait_for_text(page, "#sdseg-status", "^Cleared: click the lesion")
    i, j = tumour_click_ijk()
    click_tumour(page)
    page.fill("#sdseg-samples", "2")
    segment_with(page, MODEL)
    first = download(page, "segmentation", tmp_path / "first")
    tumour = read_result(first)["consensus"]
    assert tumour[SHOWN_SLICE, int(round(j)), int(round(i))]
    assert wait_for_colour(page, i, j, coloured=True) > 0.2  # the tumour drawn
    page.click("#sdseg-mode-one")  # a sample accepted: the status says when the next run removes it
    wait_for_text(page, "#sdseg-sample-label", "^Sample 1 of 2$")
    page.click("#sdseg-accept")
    wait_for_text(page, "#sdseg-status", "'accepted'")

    # A click on normal brain, Segment: the tumour's result goes from the views and the scene.
    page.click("#sdseg-clear-prompts")
    wait_for_text(page, "#sdseg-status", "^Cleared: click the lesion")
    click_point(page, *HEALTHY_IJK)
    segment_with(page, MODEL)
    status = page.inner_text("#sdseg-status")
    assert "The previous result, with your accepted segment 'accepted', was removed" in status, status
    assert wait_for_colour(page, i, j, coloured=False) < 0.01  # no segment nor variance of the first run drawn
    second = download(page, "segmentation", tmp_path / "second")
    # One result node at a time: the new node has the name of the one it replaced, not 'sample sdseg-small 2'.
    assert second.name == first.name == f"sample_{MODEL}.seg.nrrd"
    masks = read_result(second)
    rows = table(page)
    assert set(masks) == set(rows) == {"consensus", "sample 1", "sample 2"}  # no 'accepted': not this run's
    for name, mask in masks.items():
        assert int(rows[name]["voxels"]) == int(mask.sum()) and not (mask & tumour).any(), name
    assert worker_pids(app.process.pid) == workers, "a run started another worker"
    page.fill("#sdseg-samples", "8")
    close_quietly(page)


def test_another_volume_drops_the_result_of_the_one_before(app, browser, tmp_path):
    """The last test on the module's app: it loads another volume there."""
    page = open_page(browser, app.url)
    i, j = tumour_click_ijk()
    page.fill("#sdseg-samples", "2")
    if page.query_selector("#sdseg-results") is None:  # run alone: a result first
        click_tumour(page)
        segment_with(page, MODEL)
    assert page.query_selector("#sdseg-export-segmentation") is not None

    # Another patient: the sample mirrored left to right (the tumour on the other side).
    image = sitk.ReadImage(str(SAMPLE))
    mirrored = sitk.GetImageFromArray(np.ascontiguousarray(sitk.GetArrayFromImage(image)[:, :, ::-1]))
    mirrored.CopyInformation(image)
    other = tmp_path / "other_patient.nrrd"
    sitk.WriteImage(mirrored, str(other))
    # The page asks first: Keep the result leaves volume and result as they were.
    page.set_input_files("#sdseg-upload", str(other))
    question = wait_for_text(page, "#sdseg-replace-question", "^Load other_patient.nrrd\\? The current result")
    assert "export it first" in question and page.inner_text("#sdseg-volume-name") == "sample"
    page.click("#sdseg-replace-keep")
    wait_for_text(page, "#sdseg-status", "^Kept the result; other_patient.nrrd was not loaded")
    assert page.inner_text("#sdseg-volume-name") == "sample" and page.query_selector("#sdseg-results") is not None
    assert page.query_selector("#sdseg-replace") is None
    page.set_input_files("#sdseg-upload", str(other))  # again, and load it
    wait_for_text(page, "#sdseg-replace-question", "^Load other_patient.nrrd")
    page.click("#sdseg-replace-load")
    wait_for_text(page, "#sdseg-volume-name", "^other_patient$")
    wait_for_text(page, "#sdseg-status", "^Loaded other_patient: click the lesion")
    wait_for_fitted_slice(page)
    assert page.query_selector("#sdseg-results") is None  # no samples, statistics or Export
    assert page.query_selector("[id^=sdseg-export-]") is None
    assert page.inner_text("#sdseg-progress") == "" and page.query_selector(".sdseg-point") is None
    assert wait_for_colour(page, i, j, coloured=False) < 0.01  # the old contour is not drawn over the new anatomy

    # A run on the new volume offers Export again, of its own result.
    click_point(page, 95 - i, j)
    segment_with(page, MODEL)
    path = download(page, "segmentation", tmp_path)
    assert path.name == f"other_patient_{MODEL}.seg.nrrd"
    masks = read_result(path)
    assert set(masks) == {"consensus", "sample 1", "sample 2"}
    assert masks["consensus"][SHOWN_SLICE, int(round(j)), 95 - int(round(i))]
    page.fill("#sdseg-samples", "8")
    close_quietly(page)


def test_token_is_required_on_every_page(browser, tmp_path):
    import requests

    web = WebProcess(str(SAMPLE), "--token", TOKEN)
    try:
        assert requests.get(web.url, timeout=30).status_code == 401
        assert requests.get(web.url + "?token=wrong", timeout=30).status_code == 401
        assert "token" in requests.get(web.url, timeout=30).text
        page = open_page(browser, web.url + f"?token={TOKEN}")  # the page, its files and its websocket
        assert page.inner_text("#sdseg-volume-name") == "sample"
        page.close()
    finally:
        web.stop()
    assert TOKEN not in "".join(web.lines)


def test_without_a_token_only_loopback_host_names_are_answered():
    """A DNS-rebinding page reaches 127.0.0.1 under its own host name: refused (403); the loopback names work."""
    import requests

    web = WebProcess(str(SAMPLE))
    try:
        port = web.url.rsplit(":", 1)[1].split("/")[0]
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"):
            assert requests.get(web.url, headers={"Host": host}, timeout=30).status_code == 200, host
        for host in ("evil.example", f"evil.example:{port}", "[bad"):
            answer = requests.get(web.url, headers={"Host": host}, timeout=30)
            assert answer.status_code == 403 and "loopback" in answer.text, host
    finally:
        web.stop()


def test_the_server_says_it_starts_at_once_and_stops_only_when_asked(browser):
    """"starting" is the first line, before the libraries load; the server stops without a page only when --timeout
    asks for it (trame's own 300 s idle stop is off otherwise), which its address line says."""
    web = WebProcess(str(SAMPLE), "--timeout", "5")
    try:
        assert web.lines[0].startswith("SDSegSlicer Web: starting")
        assert web.lines[-1].rstrip().endswith("(stops after 5 s without an open page)")
        page = open_page(browser, web.url)
        workers = worker_pids(web.process.pid)  # warm before any Segment: the user waits on no start-up
        assert len(workers) == 1, workers
        three_d = view_pixels(page, 1)  # no volume rendering (grainy, colourful): a plain background
        assert float((three_d.max(axis=2) - three_d.min(axis=2) > 60).mean()) < 0.01
        page.close()
        assert web.process.wait(CLI_TIMEOUT_S) == 0  # by itself, 5 s after the page closed
        assert not process_alive(workers[0]), "the web app ended before its worker"  # it stopped it, not orphaned
    finally:
        web.stop()
    assert "SDSegSlicer Web stopped." in "".join(web.lines)


def test_public_address_without_token_is_refused():
    result = subprocess.run([sys.executable, "-m", "SDSegSlicerLib.headless", "web", "--host", "0.0.0.0"],
                            capture_output=True, text=True, timeout=CLI_TIMEOUT_S,
                            env=dict(os.environ, PYTHONPATH=lib_python_path(), SDSEG_TOKEN=""))
    assert result.returncode == 2
    assert "--token" in result.stderr and "Traceback" not in result.stderr


def test_a_port_in_use_is_one_line_that_suggests_another():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "SDSegSlicerLib.headless", "web", "--port", str(port)],
                                capture_output=True, text=True, timeout=CLI_TIMEOUT_S,
                                env=dict(os.environ, PYTHONPATH=lib_python_path()))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (f"sdseg-slicer: error: port {port} on 127.0.0.1 is in use "
                                                      "(another server?): choose another with --port")


def test_upload_too_large_or_unreadable_keeps_the_volume(browser, tmp_path):
    web = WebProcess(str(SAMPLE), "--max-upload-mb", "1")
    try:
        page = open_page(browser, web.url)
        big = tmp_path / "big.nrrd"
        big.write_bytes(b"\0" * (2 * 1024 * 1024))
        page.set_input_files("#sdseg-upload", str(big))
        page.wait_for_function("document.querySelector('#sdseg-status').innerText.includes('more than')")
        page.evaluate("Object.defineProperty(File.prototype, 'size', {get() { return 1; }})")  # a lying page
        shutil.copy(big, tmp_path / "big2.nrrd")
        page.set_input_files("#sdseg-upload", str(tmp_path / "big2.nrrd"))
        page.wait_for_function("document.querySelector('#sdseg-status').innerText.includes('big2.nrrd is 2 MB, "
                               "more than')")  # the bytes received are counted
        page.set_input_files("#sdseg-upload", {"name": "..", "mimeType": "application/octet-stream",
                                               "buffer": SAMPLE.read_bytes()})
        page.wait_for_function("document.querySelector('#sdseg-status').innerText.includes('is not a file name')")
        text = tmp_path / "notes.nrrd"
        text.write_text("not a volume")
        page.set_input_files("#sdseg-upload", str(text))
        page.wait_for_function("document.querySelector('#sdseg-status').innerText.includes('notes')")
        assert page.inner_text("#sdseg-volume-name") == "sample"  # the loaded volume stays
        assert "DICOM" not in page.inner_text("#sdseg-status")  # an upload takes no DICOM folder: not offered
        page.wait_for_function("document.querySelector('#sdseg-upload').files.length === 0")  # no refused file shown
        field = page.locator(".v-file-input").filter(has=page.locator("#sdseg-upload"))
        assert "notes.nrrd" not in field.inner_text()
        assert ".nii.gz" in page.get_attribute("#sdseg-upload", "accept")  # the file picker offers volumes only
        good = tmp_path / "again.nrrd"
        shutil.copy(SAMPLE, good)
        page.set_input_files("#sdseg-upload", str(good))
        page.wait_for_function("document.querySelector('#sdseg-volume-name').innerText === 'again'")
        page.close()
    finally:
        web.stop()


def test_a_box_drawn_on_the_worker_of_a_remote_server(browser, tmp_path):
    from test_remote import TOKEN as SERVER_TOKEN
    from test_remote import ServerProcess

    server = ServerProcess(dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=lib_python_path()),
                           "--token", SERVER_TOKEN)
    web = WebProcess(str(SAMPLE), "--server", server.url, "--worker-token", SERVER_TOKEN)
    try:
        page = open_page(browser, web.url)
        i, j = tumour_click_ijk()
        draw_box(page, (i - 13, j + 13), (i + 13, j - 13))  # a box around the tumour instead of a click
        segment_with(page, MODEL)
        assert re.search(r"lesion 1: \d+\.\d\d ml on \d+ slice", page.inner_text("#sdseg-status"))
        masks = read_result(download(page, "segmentation", tmp_path))
        assert masks["consensus"][SHOWN_SLICE].any() and len(masks) == 1 + 8
        box = np.zeros_like(masks["consensus"][SHOWN_SLICE])
        box[int(j) - 14:int(j) + 15, int(i) - 14:int(i) + 15] = True
        assert not (masks["consensus"][SHOWN_SLICE] & ~box).any()  # the drawn box bounds the prompted slice
        page.close()
    finally:
        web.stop()
        server.stop()
    assert any("POST /jobs" in line for line in server.lines)  # the job ran on the server


def test_a_dicom_folder_in_and_dicom_seg_out(browser, tmp_path):
    import pydicom
    from slicerlib_testing import write_ct_series

    image = sitk.ReadImage(str(SAMPLE))
    ijk_to_lps = np.eye(4)
    ijk_to_lps[:3, :3] = np.asarray(image.GetDirection()).reshape(3, 3) * np.asarray(image.GetSpacing())
    ijk_to_lps[:3, 3] = image.GetOrigin()
    series = write_ct_series(tmp_path / "brain_series", sitk.GetArrayFromImage(image), ijk_to_lps)
    web = WebProcess(str(series))
    try:
        page = open_page(browser, web.url)
        assert page.inner_text("#sdseg-volume-name") == "brain_series"
        click_tumour(page)
        segment_with(page, MODEL)
        seg = pydicom.dcmread(download(page, "dicom", tmp_path))
        page.close()
    finally:
        web.stop()
    assert seg.Modality == "SEG"
    assert [item.SegmentLabel for item in seg.SegmentSequence][:2] == ["consensus", "sample 1"]
    source_series = pydicom.dcmread(next(series.iterdir())).SeriesInstanceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source_series


def test_a_worker_that_cannot_start_is_one_line_and_the_page_stays(browser, tmp_path):
    web = WebProcess(str(SAMPLE), "--python", shutil.which("false"))
    try:
        page = browser.new_page(viewport=VIEWPORT)
        page.goto(web.url)
        page.wait_for_function("document.querySelector('#sdseg-status')?.innerText.includes('worker')",
                               timeout=CLI_TIMEOUT_S * 1000)
        status = page.inner_text("#sdseg-status")
        assert "\n" not in status.strip() and "Traceback" not in status
        page.click("#sdseg-segment")  # tries again, says so again; the volume stays loaded
        page.wait_for_timeout(2000)
        assert "worker" in page.inner_text("#sdseg-status")
        assert page.inner_text("#sdseg-volume-name") == "sample"
        page.close()
    finally:
        web.stop()
    assert not app_errors(web.lines), "".join(web.lines)
