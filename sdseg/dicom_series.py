"""The slices of a DICOM series, checked from their headers before any voxel is read: one size, one orientation,
evenly spaced positions along the slice normal (no gap, no duplicate). ITK's series reader reads an uneven series
with the spacing (last position - first position) / (slices - 1) and only prints a warning, so a missing or
unreadable slice (GDCM leaves such a file out of the series) would silently shift the slices and change every
volume measured; here it is a :class:`SeriesProblem` naming the slice.

A slice's position along the normal is ``p = dot(ImagePositionPatient, n)`` with ``n = row x column`` of its
ImageOrientationPatient; the series' spacing is the median of the steps ``p[s+1] - p[s]``, and a step is irregular
when it differs from that median by more than ``max(SPACING_TOLERANCE_MM, SPACING_TOLERANCE_FRACTION x median)``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple

import numpy as np
import SimpleITK as sitk

SPACING_TOLERANCE_MM = 0.15  # positions written with one decimal (some scanners) stay within this
SPACING_TOLERANCE_FRACTION = 0.05
ORIENTATION_TOLERANCE = 1e-3


class SeriesProblem(ValueError):
    """A series whose slices do not make one evenly spaced volume; the message names the slice."""


class SliceHeader(NamedTuple):
    name: str
    size: tuple  # (columns, rows)
    origin: np.ndarray  # LPS position of the first voxel, mm
    direction: np.ndarray  # 3x3, columns = LPS directions of the I, J (and normal) axes
    data_bytes: int  # bytes of its voxels once decoded


def voxel_bytes(pixel_id: int, components: int) -> int:
    """Bytes of one voxel of a SimpleITK pixel type with ``components`` components once decoded (a complex type
    counts its two parts in its own size)."""
    vector = "vector" in sitk.GetPixelIDValueAsString(pixel_id)
    return sitk.GetArrayViewFromImage(sitk.Image([1, 1], pixel_id, *([max(1, components)] if vector else []))).nbytes


def read_header(file: str) -> SliceHeader:
    """The header of one slice file (no pixel data read); RuntimeError if it is not readable."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(file)
    reader.ReadImageInformation()
    dimension = reader.GetDimension()
    direction = np.array(reader.GetDirection(), dtype=np.float64).reshape(dimension, dimension)[:3, :3]
    return SliceHeader(Path(file).name, tuple(reader.GetSize()[:2]), np.array(reader.GetOrigin()[:3]), direction,
                       decoded_bytes(reader))


def decoded_bytes(reader: sitk.ImageFileReader) -> int:
    """Bytes the voxels of a file take once decoded, from its header (``ReadImageInformation`` done)."""
    return math.prod(reader.GetSize()) * voxel_bytes(reader.GetPixelID(), reader.GetNumberOfComponents())


def series_problems(headers: list[SliceHeader]) -> list[str]:
    """What keeps the slices (in the series reader's order) from making one evenly spaced volume, one sentence
    each (none: a regular series)."""
    first = headers[0]
    problems = [f"slice {h.name} is {h.size[0]} x {h.size[1]} voxels, the others {first.size[0]} x {first.size[1]}"
                for h in headers[1:] if h.size != first.size]
    problems += [f"slice {h.name} has another orientation than {first.name}" for h in headers[1:]
                 if np.abs(h.direction[:, :2] - first.direction[:, :2]).max() > ORIENTATION_TOLERANCE]
    if problems or len(headers) < 3:
        return problems
    normal = np.cross(first.direction[:, 0], first.direction[:, 1])
    positions = np.array([float(h.origin @ normal) for h in headers])
    steps = np.diff(positions)
    spacing = float(np.median(steps))
    tolerance = max(SPACING_TOLERANCE_MM, SPACING_TOLERANCE_FRACTION * abs(spacing))
    for s, step in enumerate(steps):
        before, after = headers[s], headers[s + 1]
        where = f"{before.name} ({positions[s]:.2f} mm) and {after.name} ({positions[s + 1]:.2f} mm)"
        if abs(step) <= tolerance:
            problems.append(f"slices {where} are at the same position (a duplicate slice)")
        elif abs(step - spacing) > tolerance:
            missing = round(step / spacing) - 1 if step / spacing > 1.5 else 0
            problems.append(f"{where} are {abs(step):.2f} mm apart, the other slices {abs(spacing):.2f} mm"
                            + (f" (about {missing} slice(s) missing or unreadable there)" if missing else
                               " (uneven spacing)"))
    return problems
