"""Input volumes of the web app: a volume file, or a DICOM series folder read by SimpleITK (its largest series, as the
worker and the headless command read it) and handed to the scene as an uncompressed .nrrd.

The file is read on its own voxel grid: Slicer's volume reader (and trame-slicer's loader, which uses it) reverses the
slice order of a volume whose IJK axes are left-handed (e.g. the LPS directions diag(1, -1, 1) of the sample), so that
slice K of the file would become slice N-1-K in the scene, in the worker's input and in every export. Reading with
ForceRightHandedIJKCoordinateSystem off keeps index order, origin and directions exactly as the file has them, as
the command line (SimpleITK) reads them: the same voxels, the same IJK, the same result."""

from __future__ import annotations

import tempfile
from pathlib import Path

import SimpleITK as sitk

from SDSegSlicerLib.export import dicom_series_files
from SDSegSlicerLib.run import volume_display_name


def read_dicom_series(files: list[str], out_path: Path) -> None:
    """A DICOM series (its files) written to ``out_path``."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    sitk.WriteImage(reader.Execute(), str(out_path), useCompression=False)


def load_input(slicer_app, path: str):
    """(volume node, the files of its DICOM series or None) for a volume file or DICOM folder; ValueError with one
    line if it cannot be read."""
    source = Path(path)
    if not source.exists():
        raise ValueError(f"{path}: no such file or folder.")
    source_dicom = None
    if source.is_dir():
        source_dicom = dicom_series_files(source)
        if not source_dicom:
            raise ValueError(f"{path}: no DICOM series found in this folder.")
        with tempfile.TemporaryDirectory(prefix="SDSegSlicerWeb-dicom-") as folder:
            converted = Path(folder) / f"{volume_display_name(path)}.nrrd"
            try:
                read_dicom_series(source_dicom, converted)
            except RuntimeError as error:  # SimpleITK: unreadable files
                raise ValueError(f"{path}: the DICOM series cannot be read ({str(error).splitlines()[-1]}).") from None
            node = read_volume_file(slicer_app.scene, converted, volume_display_name(path))
    else:
        node = read_volume_file(slicer_app.scene, source, volume_display_name(path))
    if node is None:
        raise ValueError(f"{source.name}: not a volume this app can read (.nrrd, .nii.gz, .mha).")
    return node, source_dicom


def read_volume_file(scene, path: Path, name: str):
    """A scalar volume node named ``name`` with the voxels of the file ``path`` on the file's own IJK grid (see the
    module's docstring), its display nodes made; None (and nothing left in the scene) if it cannot be read."""
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(path))
    storage.SetSingleFile(True)
    storage.ForceRightHandedIJKCoordinateSystemOff()
    node.SetAndObserveStorageNodeID(storage.GetID())
    if not storage.ReadData(node) or node.GetImageData() is None:
        scene.RemoveNode(node)
        scene.RemoveNode(storage)
        return None
    node.CreateDefaultDisplayNodes()
    return node
