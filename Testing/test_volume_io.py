"""sdseg.volume_io: geometry of oblique / anisotropic / flipped volumes read back from real files (checked against
ITK's own index-to-point mapping and independent readers: nibabel, pynrrd, pydicom), slice-axis choice, and a typed
message for every bad input."""

from __future__ import annotations

import time

import nibabel
import nrrd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from sdseg.volume_io import VolumeError, check_roi, choose_slice_axis, read_volume, roi_array, slice_of_roi

SPACING = (0.7, 1.3, 2.5)
ORIGIN = (12.0, -30.5, 41.0)
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def rotation(axis, degrees):
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    a = np.radians(degrees)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * k @ k


# Oblique (25 degrees about a skew axis) and flipped (J axis reversed: determinant -1), in LPS.
OBLIQUE_FLIPPED_LPS = rotation((1.0, 0.3, 0.5), 25.0) @ np.diag([1.0, -1.0, 1.0])
# Stored sagittally: I runs anterior (LPS -P), J runs inferior (LPS -S), K runs right (LPS -L); tilted 15 degrees.
SAGITTAL_LPS = rotation((0.0, 0.0, 1.0), 15.0) @ np.array([[0.0, 0.0, -1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


def make_image(array_kji, direction_lps, spacing=SPACING, origin=ORIGIN):
    image = sitk.GetImageFromArray(array_kji)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(np.asarray(direction_lps, float).ravel().tolist())
    return image


def distinct_values(shape_kji=(6, 7, 5)):
    return np.arange(np.prod(shape_kji), dtype=np.float32).reshape(shape_kji) - 40.0


def ras_of_index_by_itk(image, ijk):
    return LPS_TO_RAS @ np.array(image.TransformIndexToPhysicalPoint([int(v) for v in ijk]))


@pytest.mark.parametrize("suffix", [".nrrd", ".nii.gz", ".mha", ".nii"])
def test_oblique_flipped_anisotropic_volume_geometry(tmp_path, suffix):
    array = distinct_values()
    image = make_image(array, OBLIQUE_FLIPPED_LPS)
    path = tmp_path / f"volume{suffix}"
    sitk.WriteImage(image, str(path))

    volume = read_volume(path)

    np.testing.assert_array_equal(volume.array_kji, array)
    assert volume.ijk_to_ras.shape == (4, 4)
    np.testing.assert_allclose(volume.ijk_to_ras[3], [0, 0, 0, 1])
    for ijk in [(0, 0, 0), (4, 0, 0), (0, 6, 0), (0, 0, 5), (3, 2, 4)]:  # every axis and a generic voxel
        ras = volume.ijk_to_ras @ np.array([*ijk, 1.0])
        np.testing.assert_allclose(ras[:3], ras_of_index_by_itk(image, ijk), atol=1e-4)
    assert np.linalg.det(volume.ijk_to_ras[:3, :3]) < 0  # the flipped axis is kept (LPS->RAS has determinant +1)
    np.testing.assert_allclose(np.linalg.norm(volume.ijk_to_ras[:3, :3], axis=0), SPACING, rtol=1e-5)


def test_nifti_matrix_matches_nibabel(tmp_path):
    path = tmp_path / "volume.nii.gz"
    sitk.WriteImage(make_image(distinct_values(), OBLIQUE_FLIPPED_LPS), str(path))
    volume = read_volume(path)
    reference = nibabel.load(path)  # nibabel: voxel (i, j, k) -> RAS, data indexed [i, j, k]
    np.testing.assert_allclose(volume.ijk_to_ras, reference.affine, atol=1e-4)
    np.testing.assert_array_equal(volume.array_kji, np.asarray(reference.dataobj).transpose(2, 1, 0))


def test_nrrd_matrix_matches_pynrrd(tmp_path):
    path = tmp_path / "volume.nrrd"
    sitk.WriteImage(make_image(distinct_values(), OBLIQUE_FLIPPED_LPS), str(path))
    volume = read_volume(path)
    data, header = nrrd.read(str(path))  # pynrrd: data indexed [i, j, k]; space directions rows = axis vectors
    assert header["space"] == "left-posterior-superior"
    ijk_to_lps = np.eye(4)
    ijk_to_lps[:3, :3] = np.asarray(header["space directions"], float).T
    ijk_to_lps[:3, 3] = header["space origin"]
    np.testing.assert_allclose(volume.ijk_to_ras, np.diag([-1, -1, 1, 1]) @ ijk_to_lps, atol=1e-9)
    np.testing.assert_array_equal(volume.array_kji, data.transpose(2, 1, 0))


def write_dicom_series(folder, array_kji, direction_lps, spacing, origin):
    folder.mkdir()
    image = make_image(array_kji, direction_lps, spacing, origin)
    series_uid = f"1.2.826.0.1.3680043.2.1125.7.{int(time.time())}"
    d = image.GetDirection()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(image.GetDepth()):
        plane = image[:, :, k]
        tags = {"0008|0060": "CT", "0020|000e": series_uid, "0008|0018": f"{series_uid}.{k + 1}",
                "0020|0013": str(k + 1), "0018|0050": str(spacing[2]),
                "0020|0037": "\\".join(str(v) for v in (d[0], d[3], d[6], d[1], d[4], d[7])),
                "0020|0032": "\\".join(str(v) for v in image.TransformIndexToPhysicalPoint((0, 0, k)))}
        for tag, value in tags.items():
            plane.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(plane)


def test_dicom_series_folder_geometry_matches_pydicom(tmp_path):
    array = (np.arange(4 * 5 * 6).reshape(4, 5, 6) * 3 - 100).astype(np.int16)
    direction = rotation((0.2, 1.0, 0.1), 20.0)
    write_dicom_series(tmp_path / "series", array, direction, (0.8, 0.9, 2.5), (10.0, -20.0, 30.0))

    volume = read_volume(tmp_path / "series")

    np.testing.assert_array_equal(volume.array_kji, array)
    files = sorted((tmp_path / "series").glob("*.dcm"))
    first, last = pydicom.dcmread(files[0]), pydicom.dcmread(files[-1])
    orientation = np.asarray(first.ImageOrientationPatient, float)
    row_spacing, column_spacing = (float(v) for v in first.PixelSpacing)
    ijk_to_lps = np.eye(4)
    ijk_to_lps[:3, 0] = orientation[:3] * column_spacing
    ijk_to_lps[:3, 1] = orientation[3:] * row_spacing
    ijk_to_lps[:3, 2] = (np.asarray(last.ImagePositionPatient, float)
                         - np.asarray(first.ImagePositionPatient, float)) / (len(files) - 1)
    ijk_to_lps[:3, 3] = np.asarray(first.ImagePositionPatient, float)
    np.testing.assert_allclose(volume.ijk_to_ras, np.diag([-1, -1, 1, 1]) @ ijk_to_lps, atol=1e-4)


def ras_directions(direction_lps):
    matrix = np.eye(4)
    matrix[:3, :3] = LPS_TO_RAS @ np.asarray(direction_lps) @ np.diag(SPACING)
    return matrix


def test_slice_axis_follows_anatomy_not_array_order(tmp_path):
    path = tmp_path / "sagittal.nrrd"
    sitk.WriteImage(make_image(distinct_values(), SAGITTAL_LPS), str(path))
    volume = read_volume(path)
    assert choose_slice_axis(volume.ijk_to_ras) == 1  # J runs (tilted) inferior: axial slices are J planes
    assert choose_slice_axis(volume.ijk_to_ras, "coronal") == 0
    assert choose_slice_axis(volume.ijk_to_ras, "sagittal") == 2


@pytest.mark.parametrize("direction, expected", [
    (np.eye(3), {"axial": 2, "coronal": 1, "sagittal": 0}),
    (np.diag([1.0, 1.0, -1.0]), {"axial": 2, "coronal": 1, "sagittal": 0}),  # K runs inferior (flipped)
    (OBLIQUE_FLIPPED_LPS, None),
    (SAGITTAL_LPS, {"axial": 1, "coronal": 0, "sagittal": 2}),
])
def test_choose_slice_axis_picks_axis_closest_to_each_anatomical_normal(direction, expected):
    matrix = ras_directions(direction)
    unit = matrix[:3, :3] / np.linalg.norm(matrix[:3, :3], axis=0)
    for row, name in enumerate(("sagittal", "coronal", "axial")):
        chosen = choose_slice_axis(matrix, name)
        assert abs(unit[row, chosen]) == pytest.approx(np.abs(unit[row]).max())
        if expected is not None:
            assert chosen == expected[name]


def test_single_slice_volume_is_segmented_along_its_flat_axis():
    matrix = ras_directions(SAGITTAL_LPS)  # the flat axis K runs left-right, yet it is the only sensible one
    assert choose_slice_axis(matrix, "axial", shape_kji=(1, 64, 48)) == 2
    assert choose_slice_axis(matrix, "axial", shape_kji=(9, 64, 48)) == 1


def test_choose_slice_axis_rejects_unknown_orientation():
    with pytest.raises(ValueError, match="axial"):
        choose_slice_axis(np.eye(4), "transverse")


def test_roi_slices_follow_the_protocol_layout():
    array = distinct_values((6, 7, 5))
    roi = check_roi([1, 2, 3, 4, 6, 5], array.shape)
    cropped = roi_array(array, roi)
    assert cropped.shape == (2, 4, 3)
    np.testing.assert_array_equal(slice_of_roi(cropped, 2, 1), array[4, 2:6, 1:4])  # K slice -> (J, I)
    np.testing.assert_array_equal(slice_of_roi(cropped, 1, 0), array[3:5, 2, 1:4])  # J slice -> (K, I)
    np.testing.assert_array_equal(slice_of_roi(cropped, 0, 2), array[3:5, 2:6, 3])  # I slice -> (K, J)
    assert check_roi(None, array.shape) == [0, 0, 0, 5, 7, 6]


@pytest.mark.parametrize("roi", [[0, 0, 0, 6, 7, 6], [2, 0, 0, 2, 7, 6], [-1, 0, 0, 5, 7, 6]])
def test_roi_outside_the_volume_is_refused(roi):
    with pytest.raises(ValueError, match="does not fit the volume"):
        check_roi(roi, (6, 7, 5))


def write_bad(tmp_path, case):
    """Write one kind of bad input and return its path."""
    if case == "missing":
        return tmp_path / "absent.nrrd"
    path = tmp_path / {"empty": "e.nrrd", "garbage": "g.nii.gz", "unsupported": "photo.png", "no dicom": "folder",
                       "zero size": "z.mha"}.get(case, f"{case.replace(' ', '_')}.nrrd")
    if case == "empty":
        path.write_bytes(b"")
    elif case == "garbage":
        path.write_bytes(b"this is not a volume")
    elif case == "unsupported":
        sitk.WriteImage(sitk.Image(8, 8, sitk.sitkUInt8), str(path))
    elif case == "no dicom":
        path.mkdir()
        (path / "notes.txt").write_text("no images here")
    elif case == "zero size":
        path.write_bytes(b"ObjectType = Image\nNDims = 3\nDimSize = 0 4 4\nElementType = MET_FLOAT\n"
                         b"ElementDataFile = LOCAL\n")
    elif case == "2D":
        sitk.WriteImage(sitk.Image(8, 8, sitk.sitkFloat32), str(path))
    elif case == "4D":
        path = tmp_path / "t.nii.gz"
        sitk.WriteImage(sitk.Image([4, 4, 3, 2], sitk.sitkFloat32), str(path))
    elif case == "RGB":
        sitk.WriteImage(sitk.Image([4, 4, 3], sitk.sitkVectorUInt8, 3), str(path))
    elif case == "complex":
        sitk.WriteImage(sitk.Image([4, 4, 3], sitk.sitkComplexFloat32), str(path))
    elif case in ("NaN", "inf"):
        array = np.zeros((3, 4, 4), np.float32)
        array[1, 2, 3] = np.nan if case == "NaN" else -np.inf
        sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    elif case == "line":
        sitk.WriteImage(sitk.Image([9, 1, 1], sitk.sitkInt16), str(path))
    return path


@pytest.mark.parametrize("case, phrase", [
    ("missing", "no such file"), ("empty", "empty"), ("garbage", "could not be read"),
    ("unsupported", "unsupported file type"), ("no dicom", "no DICOM image series"), ("zero size", "zero size"),
    ("2D", "2D image"), ("4D", "4D image"), ("RGB", "3 components"), ("complex", "complex-valued"),
    ("NaN", "NaN or infinite"), ("inf", "NaN or infinite"), ("line", "single line"),
])
def test_bad_inputs_raise_volume_error_with_a_message(tmp_path, case, phrase):
    path = write_bad(tmp_path, case)
    with pytest.raises(VolumeError) as raised:
        read_volume(path)
    message = str(raised.value)
    assert phrase in message
    assert str(path) in message
    assert "Traceback" not in message and "sitk::ERROR" not in message


def spoil_series(folder, case):
    """Make one kind of irregular series out of a regular one of 3 mm slices (slice005 the one spoilt)."""
    victim = folder / "slice005.dcm"
    if case == "missing":
        victim.unlink()
    elif case == "corrupt":  # GDCM leaves an unreadable file out of the series: a gap, as a missing slice
        victim.write_bytes(victim.read_bytes()[:200])
    else:
        dataset = pydicom.dcmread(victim)
        if case == "duplicate":
            dataset.ImagePositionPatient = pydicom.dcmread(folder / "slice004.dcm").ImagePositionPatient
        elif case == "uneven":
            dataset.ImagePositionPatient = [*dataset.ImagePositionPatient[:2], dataset.ImagePositionPatient[2] + 1.2]
        elif case == "orientation":
            dataset.ImageOrientationPatient = [1, 0, 0, 0, 0.9, 0.43589]
        elif case == "size":
            dataset.Rows, dataset.Columns, dataset.PixelData = 4, 4, np.zeros((4, 4), np.int16).tobytes()
        dataset.save_as(victim)


@pytest.mark.parametrize("case, phrase", [
    ("missing", "slice004.dcm (12.00 mm) and slice006.dcm (18.00 mm) are 6.00 mm apart"),
    ("corrupt", "slice004.dcm (12.00 mm) and slice006.dcm (18.00 mm) are 6.00 mm apart"),
    ("duplicate", "at the same position (a duplicate slice)"),
    ("uneven", "slice004.dcm (12.00 mm) and slice005.dcm (16.20 mm) are 4.20 mm apart, the other slices 3.00 mm (uneven"),
    ("orientation", "slice slice005.dcm has another orientation"),
    ("size", "slice slice005.dcm is 4 x 4 voxels, the others 8 x 8"),
])
def test_an_irregular_dicom_series_is_refused_naming_the_slice(tmp_path, case, phrase):
    """ITK alone reads a series with a missing slice as 11 slices of 3.3 mm (every position shifted); the series is
    refused in one line naming the slice, or read with the warning when the user allows it."""
    write_dicom_series(tmp_path / "series", np.zeros((12, 8, 8), np.int16), np.eye(3), (1.0, 1.0, 3.0), (0, 0, 0))
    spoil_series(tmp_path / "series", case)
    with pytest.raises(VolumeError) as raised:
        read_volume(tmp_path / "series")
    message = str(raised.value)
    assert phrase in message and "--allow-irregular-slices" in message and "\n" not in message
    if case not in ("orientation", "size"):  # ITK cannot make one volume of mixed orientations or sizes anyway
        volume = read_volume(tmp_path / "series", allow_irregular_slices=True)
        assert len(volume.warnings) >= 1 and phrase in volume.warnings[0]


def test_a_regular_dicom_series_has_no_warning(tmp_path):
    write_dicom_series(tmp_path / "series", np.zeros((5, 8, 8), np.int16), OBLIQUE_FLIPPED_LPS, (0.7, 0.7, 1.25),
                       (3.0, -2.0, 7.5))
    assert read_volume(tmp_path / "series").warnings == ()


def test_decompressed_size_is_bounded_from_the_header_before_reading(tmp_path):
    """A gzip NRRD of a few KB may hold GBs of voxels: it is refused from its header (a header claiming 10^12 voxels
    over a 20-byte body is refused, not allocated); a DICOM series is bounded by the sum of its slices."""
    small = tmp_path / "zeros.nrrd"
    sitk.WriteImage(sitk.Image([64, 64, 64], sitk.sitkInt16), str(small), useCompression=True)
    assert small.stat().st_size < 64 * 64 * 64 * 2 / 50
    with pytest.raises(VolumeError, match=r"0\.5 MiB once decompressed .* over the 0\.4 MiB allowed"):
        read_volume(small, max_bytes=400 * 1024)
    assert read_volume(small, max_bytes=512 * 1024).array_kji.shape == (64, 64, 64)
    giant = tmp_path / "giant.nrrd"
    giant.write_bytes(b"NRRD0004\ntype: float\ndimension: 3\nsizes: 10000 10000 10000\nendian: little\n"
                      b"encoding: gzip\n\n\x1f\x8b" + bytes(18))
    with pytest.raises(VolumeError, match="3814697.3 MiB once decompressed"):
        read_volume(giant, max_bytes=2 ** 30)
    write_dicom_series(tmp_path / "series", np.zeros((5, 8, 8), np.int16), np.eye(3), (1.0, 1.0, 2.0), (0, 0, 0))
    with pytest.raises(VolumeError, match="0.0 MiB once decompressed"):
        read_volume(tmp_path / "series", max_bytes=5 * 8 * 8 * 2 - 1)
