"""The output files of a headless run: their names (all after -o OUT.seg.nrrd), and the checks made before any
work starts, so that a run never computes for minutes and then finds it cannot write its result."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

SEGMENTATION_SUFFIX = ".seg.nrrd"
# Roughly what the outputs take per input voxel at most (float32 variance, one byte per segment layer before
# compression) and on top (summary, preview).
BYTES_PER_VOXEL = 8
FIXED_BYTES = 16 * 2 ** 20


class OutputError(ValueError):
    """An output that cannot be written; the message names the option and says what to do."""


def output_paths(output: str) -> dict[str, Path]:
    """All files of a run, named after -o OUT.seg.nrrd."""
    if not output.lower().endswith(SEGMENTATION_SUFFIX):
        raise OutputError(f"-o {output}: the output must be a {SEGMENTATION_SUFFIX} file, e.g. -o out/ct.seg.nrrd")
    base = output[: -len(SEGMENTATION_SUFFIX)]
    return {"segmentation": Path(output), "variance": Path(base + "_variance.nrrd"),
            "summary_json": Path(base + "_summary.json"), "summary_csv": Path(base + "_summary.csv"),
            "preview": Path(base + "_preview.png")}


def input_voxels(path) -> int:
    """Voxels of a volume file (from its header only), or an estimate for a DICOM folder (2 bytes a voxel)."""
    path = Path(path)
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) // 2
    import SimpleITK as sitk  # not imported by the command line's --help

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:  # unreadable: the worker will say why; assume the file's size
        return path.stat().st_size
    voxels = 1
    for size in reader.GetSize():
        voxels *= size
    return voxels


def check_outputs(paths: dict[str, Path], output: str, input_path, overwrite: bool) -> None:
    """Create the output folder and check, before anything is computed, that every output can be written there:
    nothing in the way (a file where a folder should be, a folder where a file should be), an existing result
    only replaced with ``overwrite``, the folder writable, roughly enough free space. OutputError says what to do."""
    folder = paths["segmentation"].parent
    source = Path(input_path)
    inputs = [p for p in paths.values() if p.exists() and source.exists() and os.path.samefile(p, source)]
    if inputs:
        raise OutputError(f"-o {output}: {inputs[0]} is the input volume, which is never replaced; choose another -o")
    blocking = next((p for p in [folder, *folder.parents] if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise OutputError(f"-o {output}: {blocking} is a file, not a folder; choose another -o")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"-o {output}: cannot create the folder {folder} ({error.strerror}); choose a writable "
                          "location") from None
    folders = [str(p) for p in paths.values() if p.is_dir()]
    if folders:
        raise OutputError(f"-o {output}: {', '.join(folders)} is a folder; choose another -o")
    existing = [str(p) for p in paths.values() if p.exists()]
    if existing and not overwrite:
        raise OutputError(f"{', '.join(existing)} already exist(s): choose another -o, or pass --overwrite")
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".sdseg-write-test-"):
            pass
    except OSError as error:
        raise OutputError(f"-o {output}: cannot write in {folder} ({error.strerror}); choose a writable "
                          "folder") from None
    needed = input_voxels(input_path) * BYTES_PER_VOXEL + FIXED_BYTES
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise OutputError(f"-o {output}: {free / 2 ** 20:.0f} MB free in {folder}, the outputs may need up to "
                          f"{needed / 2 ** 20:.0f} MB; free some space or choose another -o")
