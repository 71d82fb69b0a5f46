"""The `liver-mr` source (sdseg.data.liver_mr): pydicom-data's real abdominal MR slice whose DICOM overlay outlines
one liver lesion, read from the wheel that scripts/fetch_pypi_data.sh fetches; checked against an independent
read of the file by pydicom, and made into an external test set by `sdseg preprocess --external-test`."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pydicom
import pytest
from PIL import Image, ImageDraw

from sdseg.data.liver_mr import LIVER_MR_MEMBER, load_liver_mr, outlined_lesions, overlay_on_image
from test_data_sources import CACHE, require_real_file, run_preprocess

PYDICOM_DATA_WHEEL = CACHE / "pydicom_data-1.0.0-py3-none-any.whl"


def independent_read():
    """(dataset, overlay (rows, columns) bool) read by pydicom straight from the wheel."""
    with zipfile.ZipFile(PYDICOM_DATA_WHEEL) as archive:
        dataset = pydicom.dcmread(io.BytesIO(archive.read(LIVER_MR_MEMBER)))
    return dataset, dataset.overlay_array(0x6000) > 0


def test_outline_is_filled_and_marks_are_dropped():
    image = np.zeros((120, 120), dtype=np.float32)
    image[10:110, 10:70] = 100.0  # the body
    overlay = Image.new("1", (120, 120))
    draw = ImageDraw.Draw(overlay)
    draw.ellipse([20, 30, 50, 60], outline=1)  # the lesion outline, inside the body
    draw.rectangle([85, 85, 105, 105], outline=1)  # a box drawn in the air (as around the "F")
    draw.line([(80, 20), (95, 20)], fill=1)  # a text stroke
    draw.line([(30, 90), (50, 95)], fill=1)  # a stroke inside the body that encloses nothing
    overlay = np.array(overlay, dtype=np.uint8)
    mask = outlined_lesions(overlay, image)
    ellipse = Image.new("1", (120, 120))
    ImageDraw.Draw(ellipse).ellipse([20, 30, 50, 60], outline=1, fill=1)
    np.testing.assert_array_equal(mask, np.array(ellipse, dtype=np.uint8))


def test_wheel_gives_the_outlined_liver_lesion_with_the_slice_geometry():
    require_real_file(PYDICOM_DATA_WHEEL, "fetch_pypi_data.sh")
    [ref] = load_liver_mr(PYDICOM_DATA_WHEEL)
    case = ref.read()
    dataset, overlay = independent_read()
    assert case.image.shape == (1, 484, 484) and case.masks.shape == (1, 1, 484, 484)
    np.testing.assert_array_equal(case.image[0], dataset.pixel_array)
    mask = case.masks[0, 0] > 0
    # The lesion's outline (the one closed curve inside the body) lies on the mask; the text and box marks, all in
    # the image's right part, do not.
    _, columns = np.nonzero(overlay & ~mask)
    assert columns.min() > 380 and (overlay & mask).sum() > 100
    # The mask is the outline filled: its border pixels are the reader's outline.
    inner = mask & np.roll(mask, 1, 0) & np.roll(mask, -1, 0) & np.roll(mask, 1, 1) & np.roll(mask, -1, 1)
    border = mask & ~inner
    assert border.sum() > 50 and overlay[border].all()
    spacing = [float(v) for v in dataset.PixelSpacing]
    area_mm2 = mask.sum() * spacing[0] * spacing[1]
    assert 400 < area_mm2 < 560  # a lesion of about 25 mm
    assert dataset.pixel_array[mask].mean() > 3 * dataset.pixel_array.mean()  # enhancing tissue, not air
    # IJK to RAS from the DICOM geometry: LPS position and directions, flipped to RAS.
    origin_lps = np.array([float(v) for v in dataset.ImagePositionPatient])
    row_lps, column_lps = (np.array([float(v) for v in dataset.ImageOrientationPatient[i:i + 3]]) for i in (0, 3))
    to_ras = np.diag([-1.0, -1.0, 1.0])
    np.testing.assert_allclose(case.ijk_to_ras[:3, 3], to_ras @ origin_lps, atol=1e-3)
    np.testing.assert_allclose(case.ijk_to_ras[:3, 0], to_ras @ row_lps * spacing[1], atol=1e-6)
    np.testing.assert_allclose(case.ijk_to_ras[:3, 1], to_ras @ column_lps * spacing[0], atol=1e-6)
    normal = np.cross(row_lps, column_lps)  # one slice: its thickness is the spacing along the normal
    np.testing.assert_allclose(case.ijk_to_ras[:3, 2], to_ras @ normal * float(dataset.SliceThickness), atol=1e-6)


def test_overlay_is_placed_at_its_origin():
    dataset = pydicom.Dataset()
    plane = np.zeros((4, 6), dtype=np.uint8)
    plane[0, 0] = plane[3, 5] = 1
    for element, vr, value in ((0x0010, "US", 4), (0x0011, "US", 6), (0x0050, "SS", [3, 2]), (0x0100, "US", 1),
                               (0x0102, "US", 0), (0x0040, "CS", "G"),
                               (0x3000, "OW", np.packbits(plane.ravel(), bitorder="little").tobytes() + b"\x00")):
        dataset.add_new((0x6000, element), vr, value)
    overlay = overlay_on_image(dataset, (8, 8))
    assert overlay.sum() == 2 and overlay[2, 1] == 1 and overlay[5, 6] == 1  # origin (3, 2) is 1-based
    assert overlay_on_image(dataset, (4, 4)).sum() == 1  # the part past the image's edge is cut


def test_preprocess_makes_an_external_test_set_of_lesion_crops(tmp_path):
    require_real_file(PYDICOM_DATA_WHEEL, "fetch_pypi_data.sh")
    out = tmp_path / "liver"
    result = run_preprocess("--source", "liver-mr", "--input", PYDICOM_DATA_WHEEL, "--external-test", "--out", out)
    assert result.returncode == 0, result.stderr
    info = json.loads((out / "dataset.json").read_text())
    assert info["splits"] == {"test": ["pydicom-liver-mr"], "val": [], "train": []} and info["external_test"]
    assert info["counts"] == {"train": 0, "val": 0, "test": 4} and info["licence"].startswith("MIT")
    mask_pixels = load_liver_mr(PYDICOM_DATA_WHEEL)[0].read().masks.sum()
    for path in sorted((out / "test").glob("*.npz")):
        crop = np.load(path)
        assert crop["image"].shape == (1, 64, 64) and crop["masks"].shape == (1, 64, 64)
        # a 96-pixel ROI resized to 64: the lesion keeps its area times (64 / 96)^2
        assert crop["masks"].sum() == pytest.approx(mask_pixels * (64 / 96) ** 2, rel=0.05)
    # Lesion-free or texture crops could show the slice's second lesion, which nobody outlined: refused in one line.
    for extra in (["--negatives", 0.3], ["--multirater", 2], ["--add-synthetic", 3]):
        result = run_preprocess("--source", "liver-mr", "--input", PYDICOM_DATA_WHEEL, *extra, "--out", tmp_path / "x")
        assert result.returncode == 2 and "not outlined" in result.stderr and result.stderr.count("\n") == 1
    result = run_preprocess("--source", "pyradiomics", "--input", tmp_path, "--negatives", 0.3, "--add-train",
                            f"liver-mr={PYDICOM_DATA_WHEEL}", "--out", tmp_path / "add")
    assert result.returncode == 2 and "not outlined" in result.stderr and result.stderr.count("\n") == 1
    for extra in (["--multirater", 2], ["--add-train", f"liver-mr={PYDICOM_DATA_WHEEL}"]):
        result = run_preprocess("--source", "pyradiomics", "--input", tmp_path, "--external-test", *extra,
                                "--out", tmp_path / "ext")
        assert result.returncode == 2 and "--external-test" in result.stderr and result.stderr.count("\n") == 1
    result = run_preprocess("--source", "liver-mr", "--input", tmp_path, "--out", tmp_path / "bad")
    assert result.returncode == 2 and "fetch_pypi_data.sh" in result.stderr and "Traceback" not in result.stderr
