"""Exports of a result: .seg.nrrd (all or selected segments), NIfTI labelmap, DICOM SEG, and volumes (.nrrd ...).

Every file keeps the input volume's voxel grid and IJK-to-patient geometry. Errors are ValueError / OSError with
a message that says what to do.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import slicer

from . import __version__
from .atomic import atomic_output
from .segmentation_writer import read_segment_arrays, reference_geometry, segment_ids_by_name

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
DICOM_GEOMETRY_TOLERANCE_MM = 0.01
SOFTWARE_NAME = "SDSegSlicer"


def _selected_segment_ids(segmentation_node, segment_ids):
    """segment_ids (checked) or all segments in order; never empty."""
    segmentation = segmentation_node.GetSegmentation()
    all_ids = [segmentation.GetNthSegmentID(n) for n in range(segmentation.GetNumberOfSegments())]
    ids = all_ids if segment_ids is None else list(segment_ids)
    unknown = [segment_id for segment_id in ids if segment_id not in all_ids]
    if unknown:
        raise ValueError(f"Segments {unknown} are not in '{segmentation_node.GetName()}'.")
    if not ids:
        raise ValueError(f"'{segmentation_node.GetName()}' has no segment to export.")
    return ids


def _prepare_output(path, suffixes) -> str:
    path = os.fspath(path)
    if not path.lower().endswith(suffixes):
        raise ValueError(f"Cannot write '{path}': the file name must end with {' or '.join(suffixes)}.")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return path


def export_segmentation(segmentation_node, path, segment_ids=None) -> str:
    """Write the segments (all, or segment_ids) to a .seg.nrrd with the reference volume's full geometry."""
    path = _prepare_output(path, (".seg.nrrd", ".nrrd"))
    ids = _selected_segment_ids(segmentation_node, segment_ids)
    scene = segmentation_node.GetScene()
    node = segmentation_node
    if len(ids) != segmentation_node.GetSegmentation().GetNumberOfSegments():
        node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
        node.GetSegmentation().SetSourceRepresentationName(
            segmentation_node.GetSegmentation().GetSourceRepresentationName())
        geometry_parameter = slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()
        node.GetSegmentation().SetConversionParameter(
            geometry_parameter, segmentation_node.GetSegmentation().GetConversionParameter(geometry_parameter))
        for segment_id in ids:
            node.GetSegmentation().CopySegmentFromSegmentation(segmentation_node.GetSegmentation(), segment_id)
    try:
        _write_with_storage_node(node, "vtkMRMLSegmentationStorageNode", path,
                                 lambda storage: storage.SetCropToMinimumExtent(False))
    finally:
        if node is not segmentation_node:
            scene.RemoveNode(node)
    return path


def export_volume(volume_node, path, compress: bool = True) -> str:
    """Write a scalar volume (e.g. the variance) to .nrrd / .nii.gz / .nii / .mha / .mhd with its geometry
    (compress=False: faster, for a temporary copy such as the worker's input)."""
    path = _prepare_output(path, (".nrrd", ".nhdr", ".nii.gz", ".nii", ".mha", ".mhd"))
    if volume_node.GetImageData() is None:
        raise ValueError(f"Volume '{volume_node.GetName()}' has no voxels to write.")
    _write_with_storage_node(volume_node, "vtkMRMLVolumeArchetypeStorageNode", path,
                             lambda storage: storage.SetUseCompression(compress))
    return path


def _write_with_storage_node(node, storage_class: str, path: str, configure) -> None:
    """Write ``node`` to ``path`` through a temporary storage node of ``storage_class`` (what Slicer's Save does),
    atomically."""
    scene = node.GetScene()
    storage = scene.AddNewNodeByClass(storage_class)
    try:
        configure(storage)
        with atomic_output(path) as temporary:
            storage.SetFileName(str(temporary))
            if not storage.WriteData(node):
                raise OSError(f"Could not write '{path}': check that the folder is writable and the disk not full.")
    finally:
        scene.RemoveNode(storage)


def sitk_image(array_kji: np.ndarray, ijk_to_ras):
    """SimpleITK image of a (K, J, I) array with the given IJK-to-RAS geometry (stored in LPS, as ITK does)."""
    ijk_to_lps = RAS_TO_LPS @ np.asarray(ijk_to_ras, dtype=float)
    spacing = np.linalg.norm(ijk_to_lps[:3, :3], axis=0)
    image = sitk.GetImageFromArray(array_kji)
    image.SetSpacing(spacing.tolist())
    image.SetDirection((ijk_to_lps[:3, :3] / spacing).ravel().tolist())
    image.SetOrigin(ijk_to_lps[:3, 3].tolist())
    return image


def export_nifti_labelmap(segmentation_node, path, segment_ids=None) -> dict[int, str]:
    """Write the segments (all, or segment_ids) as one NIfTI labelmap on the reference grid; the label of a
    segment is its position in the list (1, 2, ...). Returns {label: segment name}.

    A labelmap holds one label per voxel, so overlapping segments (e.g. the consensus and the samples) cannot
    go into one file: export them one at a time, or use .seg.nrrd."""
    path = _prepare_output(path, (".nii.gz", ".nii"))
    ids = _selected_segment_ids(segmentation_node, segment_ids)
    names = {segment_id: name for name, segment_id in segment_ids_by_name(segmentation_node).items()}
    masks, _, ijk_to_ras = read_segment_arrays(segmentation_node, ids, full_extent=True)
    overlap = masks.sum(axis=0) > 1
    if overlap.any():
        pair = [names[ids[n]] for n in np.flatnonzero(masks[:, overlap].any(axis=1))[:2]]
        raise ValueError(f"Segments '{pair[0]}' and '{pair[1]}' overlap and a labelmap holds one label per voxel: "
                         "export one segment at a time (e.g. the consensus), or use .seg.nrrd.")
    labels = np.zeros(masks.shape[1:], dtype=np.uint8 if len(ids) < 256 else np.uint16)
    for label, mask in enumerate(masks, start=1):
        labels[mask] = label
    with atomic_output(path) as temporary:
        sitk.WriteImage(sitk_image(labels, ijk_to_ras), str(temporary), useCompression=True)
    return {label: names[segment_id] for label, segment_id in enumerate(ids, start=1)}


# --- DICOM SEG ------------------------------------------------------------------------------------------------------

def dicom_series_files(folder) -> list[str]:
    """The files of the largest DICOM series in ``folder`` (the series the worker reads, sdseg.volume_io), in
    slice order; empty if it holds none."""
    reader = sitk.ImageSeriesReader()
    series = reader.GetGDCMSeriesIDs(str(folder))
    return list(max((reader.GetGDCMSeriesFileNames(str(folder), uid) for uid in series), key=len, default=()))


def _source_dicom_files(segmentation_node, source_dicom):
    """Files of the source DICOM series: `source_dicom` (folder or file list), else the files 3D Slicer's DICOM
    database holds for the volume the segmentation was made on."""
    if source_dicom is not None:
        if isinstance(source_dicom, (str, os.PathLike)):
            folder = Path(source_dicom)
            if not folder.is_dir():
                raise ValueError(f"'{folder}' is not a folder: give the folder of the source DICOM series.")
            return sorted(p for p in folder.rglob("*") if p.is_file())
        return [Path(p) for p in source_dicom]
    volume = segmentation_node.GetNodeReference(segmentation_node.GetReferenceImageGeometryReferenceRole())
    uids = (volume.GetAttribute("DICOM.instanceUIDs") or "").split() if volume is not None else []
    database = getattr(slicer, "dicomDatabase", None)
    if not uids or database is None:
        raise ValueError("DICOM SEG needs the DICOM series the volume was loaded from: load the volume through "
                         "the DICOM module, or give the series folder.")
    return [Path(database.fileForInstance(uid)) for uid in uids]


def _read_source_series(files):
    """pydicom datasets of one image series (files that are not DICOM images are skipped)."""
    import pydicom  # the DICOM stack is imported only for DICOM exports
    datasets = []
    for file in files:
        try:
            dataset = pydicom.dcmread(file)
        except (pydicom.errors.InvalidDicomError, OSError):
            continue
        if "ImagePositionPatient" in dataset and "PixelData" in dataset:
            datasets.append(dataset)
    series = {dataset.SeriesInstanceUID for dataset in datasets}
    if len(series) != 1:
        raise ValueError(f"Found {len(series)} DICOM image series in the source files: "
                         "give the folder of exactly the series that was segmented.")
    return datasets


def _dicom_slice_indices(datasets, ijk_to_ras, dims_ijk) -> list[int]:
    """K index of each source image in the segmentation's grid; raises if the grids differ (resampled volume)."""
    ijk_to_lps = RAS_TO_LPS @ ijk_to_ras
    lps_to_ijk = np.linalg.inv(ijk_to_lps)
    indices = []
    for dataset in datasets:
        row_direction, column_direction = (np.array(dataset.ImageOrientationPatient, dtype=float).reshape(2, 3))
        row_spacing, column_spacing = (float(v) for v in dataset.PixelSpacing)
        ijk = lps_to_ijk @ np.append(np.array(dataset.ImagePositionPatient, dtype=float), 1.0)
        matches = (
            (int(dataset.Columns), int(dataset.Rows)) == tuple(dims_ijk[:2])
            and np.allclose(ijk_to_lps[:3, 0], row_direction * column_spacing, atol=DICOM_GEOMETRY_TOLERANCE_MM)
            and np.allclose(ijk_to_lps[:3, 1], column_direction * row_spacing, atol=DICOM_GEOMETRY_TOLERANCE_MM)
            and np.allclose(ijk[:2], 0.0, atol=1e-2) and abs(ijk[2] - round(ijk[2])) < 1e-2
            and 0 <= round(ijk[2]) < dims_ijk[2])
        if not matches:
            raise ValueError("The segmentation's voxel grid does not match the source DICOM series (the volume was "
                             "resampled, or it is another series): export .seg.nrrd or NIfTI instead.")
        indices.append(int(round(ijk[2])))
    return indices


def export_dicom_seg(segmentation_node, path, source_dicom=None, segment_ids=None) -> str:
    """Write the segments (all, or segment_ids) as a binary DICOM SEG referencing the source series.

    source_dicom: the series folder (or its files); None in 3D Slicer: the series the volume was loaded from."""
    try:
        import highdicom
        from pydicom.sr.codedict import codes
    except ImportError:
        raise ValueError("DICOM SEG export needs the highdicom package: in 3D Slicer click 'Install backend' in "
                         "the SDSegSlicer module (it installs a highdicom that keeps Slicer's pydicom); elsewhere "
                         "'pip install highdicom'.") from None
    path = _prepare_output(path, (".dcm",))
    ids = _selected_segment_ids(segmentation_node, segment_ids)
    names = {segment_id: name for name, segment_id in segment_ids_by_name(segmentation_node).items()}
    datasets = _read_source_series(_source_dicom_files(segmentation_node, source_dicom))
    ijk_to_ras, extent = reference_geometry(segmentation_node)
    dims_ijk = [extent[1] - extent[0] + 1, extent[3] - extent[2] + 1, extent[5] - extent[4] + 1]
    k_indices = _dicom_slice_indices(datasets, ijk_to_ras, dims_ijk)
    masks, _, _ = read_segment_arrays(segmentation_node, ids, full_extent=True)
    frames = np.moveaxis(masks[:, k_indices], 0, -1)  # (frames, rows=J, columns=I, segments)
    algorithm = highdicom.AlgorithmIdentificationSequence(
        name=SOFTWARE_NAME, version=__version__, family=codes.cid7162.ArtificialIntelligence)
    descriptions = [
        highdicom.seg.SegmentDescription(
            segment_number=number, segment_label=names[segment_id],
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Lesion,
            algorithm_type=highdicom.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm)
        for number, segment_id in enumerate(ids, start=1)]
    segmentation = highdicom.seg.Segmentation(
        source_images=datasets, pixel_array=frames,
        segmentation_type=highdicom.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=highdicom.UID(), series_number=9001, sop_instance_uid=highdicom.UID(),
        instance_number=1, manufacturer=SOFTWARE_NAME, manufacturer_model_name=segmentation_node.GetName(),
        software_versions=__version__, device_serial_number="none", omit_empty_frames=False)
    with atomic_output(path) as temporary:
        segmentation.save_as(temporary)
    return path
