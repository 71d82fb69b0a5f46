"""Input volumes of the web app: a volume file read by Slicer's volumes logic, or a DICOM series folder read by
SimpleITK (its largest series, as the worker and the headless command read it) and handed to the scene as an
uncompressed .nrrd."""

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
            nodes = slicer_app.io_manager.load_volumes([str(converted)])
    else:
        nodes = slicer_app.io_manager.load_volumes([str(source)])
    nodes = [node for node in nodes or [] if node is not None and node.GetImageData() is not None]
    if not nodes:
        raise ValueError(f"{source.name}: not a volume this app can read (.nrrd, .nii.gz, .mha or a DICOM folder).")
    node = nodes[0]
    node.SetName(volume_display_name(path))
    return node, source_dicom
