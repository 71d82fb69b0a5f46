"""Helpers shared by the SDSegSlicerLib tests: an oblique, anisotropic, flipped-axis geometry, synthetic worker
results written as the protocol says (`slice` messages + npz files), independent readers of .seg.nrrd files, test
volume files and the PYTHONPATH of subprocesses. (The fixtures of the end-to-end tests are in conftest.py.)"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import slicerio
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
import vtk
from vtk.util import numpy_support

import SDSegSlicerLib
from SDSegSlicerLib.segmentation_writer import vtk_matrix

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
SPACING = (0.7, 1.1, 2.3)
MODEL_NAME = "tiny-ambiguous"
BRIGHT_MODEL_NAME = "bright-voxels"  # the threshold model: mask = intensity above the middle of its window
BRIGHT_3D_MODEL_NAME = "bright-voxels-3d"  # the same, taking the prompt channels point, box and previous
BRIGHT_CT_MODEL_NAME = "bright-voxels-ct"  # bright-voxels trained "on CT only" (config modalities): a volume with no
# negative value gets the worker's CT-only warning
BRIGHT_MODEL_SIZE = 16  # its input size and its crops' in-plane size: masks are exactly the bright voxels
BRIGHT_WINDOW = (0.0, 200.0)  # its intensity window: voxels above 100 are "lesion", whatever else is around
CLI_TIMEOUT_S = 900  # a guard against a hung subprocess, not a timed assertion: generous for a loaded machine


def rotation(axis, degrees) -> np.ndarray:
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    angle = np.radians(degrees)
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * cross @ cross


def oblique_ijk_to_ras(flip_axis: int = 1, superior_axis: int = 2) -> np.ndarray:
    """Rotated 25 degrees about a skew axis, anisotropic spacing, IJK axis ``flip_axis`` flipped so that the
    frame is mirrored (det < 0); IJK axis ``superior_axis`` is the one closest to the RAS S axis (its direction
    swapped with K's, which mirrors the frame too, undone by flipping I)."""
    flip = np.ones(3)
    flip[flip_axis] = -1.0
    order = [0, 1, 2]
    order[superior_axis], order[2] = 2, superior_axis
    directions = rotation((1.0, 0.3, 0.2), 25.0)[:, order]
    if superior_axis != 2:
        directions[:, 0] *= -1.0
    matrix = np.eye(4)
    matrix[:3, :3] = directions @ np.diag(np.array(SPACING) * flip)
    matrix[:3, 3] = (12.5, -30.0, 41.0)
    return matrix


def accepted_message(shape_kji, ijk_to_ras, slice_axis, roi_ijk, job_id="job-1", model="tiny") -> dict:
    total = roi_ijk[slice_axis + 3] - roi_ijk[slice_axis]
    return {"type": "accepted", "job_id": job_id, "model": model, "device": "cpu", "total": total,
            "volume": {"shape_kji": list(shape_kji), "ijk_to_ras": np.asarray(ijk_to_ras).tolist(),
                       "slice_axis": slice_axis, "roi_ijk": list(roi_ijk)}}


def synthetic_result(shape_kji, roi_ijk, num_samples, seed=0):
    """Whole-volume truth: samples (N, K, J, I) bool inside the ROI only, the majority consensus, the variance."""
    rng = np.random.default_rng(seed)
    i0, j0, k0, i1, j1, k1 = roi_ijk
    samples = np.zeros((num_samples, *shape_kji), dtype=bool)
    samples[:, k0:k1, j0:j1, i0:i1] = rng.random((num_samples, k1 - k0, j1 - j0, i1 - i0)) < 0.4
    p = samples.mean(axis=0)
    return samples, p >= 0.5, (p * (1 - p)).astype(np.float32)


def write_slice_messages(folder, truth, roi_ijk, slice_axis, job_id="job-1") -> list[dict]:
    """The `slice` messages (and their npz files) of a job, built literally from the protocol:
    numpy.take(volume_kji, index, axis=2 - slice_axis), cropped to the ROI on the two remaining axes."""
    samples, consensus, variance = truth
    kept_axes = [a for a in (2, 1, 0) if a != slice_axis]  # IJK axes of the remaining K, J, I order
    crop = tuple(slice(roi_ijk[a], roi_ijk[a + 3]) for a in kept_axes)
    first, end = roi_ijk[slice_axis], roi_ijk[slice_axis + 3]
    messages = []
    for done, index in enumerate(range(first, end), start=1):
        path = folder / f"slice_{index:05d}.npz"
        np.savez_compressed(
            path,
            samples=np.take(samples, index, axis=3 - slice_axis)[(slice(None), *crop)].astype(np.uint8),
            consensus=np.take(consensus, index, axis=2 - slice_axis)[crop].astype(np.uint8),
            variance=np.take(variance, index, axis=2 - slice_axis)[crop])
        messages.append({"type": "slice", "job_id": job_id, "index": index, "file": str(path), "done": done,
                         "total": end - first, "eta_s": None})
    return messages


def sitk_ijk_to_lps(image) -> np.ndarray:
    matrix = np.eye(4)
    matrix[:3, :3] = np.array(image.GetDirection()).reshape(3, 3) @ np.diag(image.GetSpacing())
    matrix[:3, 3] = image.GetOrigin()
    return matrix


def read_seg_nrrd_with_slicerio(path) -> tuple[dict, np.ndarray]:
    """({segment name: (K, J, I) bool}, ijk_to_lps) read by slicerio."""
    segmentation = slicerio.read_segmentation(str(path))
    masks = {}
    for segment in segmentation["segments"]:
        extracted = slicerio.extract_segments(segmentation, [(segment["name"], 1)])
        masks[segment["name"]] = np.transpose(extracted["voxels"], (2, 1, 0)) > 0  # slicerio arrays are IJK
    return masks, np.asarray(segmentation["ijkToLPS"], dtype=float)


def read_seg_nrrd_with_sitk(path) -> tuple[dict, np.ndarray]:
    """({segment name: (K, J, I) bool}, ijk_to_lps) decoded from the NRRD header fields Segment<n>_Name /
    _Layer / _LabelValue by SimpleITK (a layer is a vector component)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    image = reader.Execute()
    voxels = sitk.GetArrayFromImage(image)
    if image.GetNumberOfComponentsPerPixel() == 1:
        voxels = voxels[..., None]
    masks, number = {}, 0
    while reader.HasMetaDataKey(f"Segment{number}_Name"):
        layer = int(reader.GetMetaData(f"Segment{number}_Layer"))
        label = int(reader.GetMetaData(f"Segment{number}_LabelValue"))
        masks[reader.GetMetaData(f"Segment{number}_Name")] = voxels[..., layer] == label
        number += 1
    return masks, sitk_ijk_to_lps(image)


def write_volume_file(path, array_kji, ijk_to_ras):
    """A volume file with the given RAS geometry, written by SimpleITK (LPS on disk)."""
    ijk_to_lps = RAS_TO_LPS @ ijk_to_ras
    spacing = np.linalg.norm(ijk_to_lps[:3, :3], axis=0)
    image = sitk.GetImageFromArray(array_kji)
    image.SetSpacing(spacing.tolist())
    image.SetDirection((ijk_to_lps[:3, :3] / spacing).ravel().tolist())
    image.SetOrigin(ijk_to_lps[:3, 3].tolist())
    sitk.WriteImage(image, str(path))
    return path


def write_ct_series(folder, array_kji, ijk_to_lps, shuffle_seed=0, series_uid=None, patient_id="P1"):
    """A CT series, one file per K slice, in a shuffled file order with shuffled instance numbers."""
    folder.mkdir()
    study, series, frame_of_reference = generate_uid(), series_uid or generate_uid(), generate_uid()
    spacing = np.linalg.norm(ijk_to_lps[:3, :3], axis=0)
    order = np.random.default_rng(shuffle_seed).permutation(array_kji.shape[0])
    for file_number, k in enumerate(order):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / f"im{file_number:03d}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame_of_reference
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Test^Phantom", patient_id, "19700101", "O"
        ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.ReferringPhysicianName = "20240101", "120000", "A1", ""
        ds.StudyID, ds.SeriesNumber, ds.InstanceNumber, ds.Modality = "1", 1, int(file_number) + 1, "CT"
        ds.Manufacturer, ds.PositionReferenceIndicator = "test", ""
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in
                                      [*(ijk_to_lps[:3, 0] / spacing[0]), *(ijk_to_lps[:3, 1] / spacing[1])]]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in ijk_to_lps[:3, 3] + k * ijk_to_lps[:3, 2]]
        ds.PixelSpacing = [f"{spacing[1]:.6f}", f"{spacing[0]:.6f}"]
        ds.SliceThickness = f"{spacing[2]:.6f}"
        ds.Rows, ds.Columns = array_kji.shape[1], array_kji.shape[2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.ImageType = 0, 1, ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.PixelData = np.ascontiguousarray(array_kji[k], dtype=np.int16).tobytes()
        ds.save_as(ds.filename, enforce_file_format=True)
    return folder


def lesion_volume(path, shape_kji, seed=0):
    """An oblique, anisotropic, flipped-axis volume file with a bright ellipse in every slice."""
    k, j, i = np.mgrid[0:shape_kji[0], 0:shape_kji[1], 0:shape_kji[2]]
    lesion = ((i - shape_kji[2] / 2) / 6.0) ** 2 + ((j - shape_kji[1] / 2) / 4.5) ** 2 < 1.0
    voxels = np.random.default_rng(seed).normal(40.0, 10.0, shape_kji) + 80.0 * lesion
    return write_volume_file(path, voxels.astype(np.float32), oblique_ijk_to_ras())


def add_volume_node(scene, array_kji, ijk_to_ras, name="volume"):
    """A scalar volume node holding ``array_kji`` (K, J, I) with the given IJK-to-RAS geometry."""
    image = vtk.vtkImageData()
    image.SetDimensions(*np.asarray(array_kji).shape[::-1])
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(
        np.ascontiguousarray(array_kji, dtype=np.float32).ravel(), deep=True, array_type=vtk.VTK_FLOAT))
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    node.SetIJKToRASMatrix(vtk_matrix(ijk_to_ras))
    node.SetAndObserveImageData(image)
    return node


def lib_python_path() -> str:
    """PYTHONPATH with the folder holding SDSegSlicerLib first (for subprocesses)."""
    lib_parent = str(Path(SDSegSlicerLib.__file__).resolve().parents[1])
    return os.pathsep.join(p for p in (lib_parent, os.environ.get("PYTHONPATH")) if p)


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (Linux /proc; an exited process not yet reaped, a zombie, does not run)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def worker_pids(parent: int) -> list[int]:
    """The running `sdseg.worker` processes whose parent is ``parent`` (a command's or the web app's workers), from
    Linux /proc."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split() if entry.name.isdigit() else []
            command = (entry / "cmdline").read_bytes().split(b"\0") if fields else []
        except OSError:  # it ended meanwhile
            continue
        if fields and fields[0] != "Z" and int(fields[1]) == parent and b"sdseg.worker" in command:
            pids.append(int(entry.name))
    return pids
