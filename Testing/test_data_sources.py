"""Real-data loaders (sdseg.data.sources) and `sdseg preprocess` (sdseg.data.preprocess)."""

from __future__ import annotations

import gzip
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from slicerlib_testing import CLI_TIMEOUT_S
import SimpleITK as sitk

from sdseg.choices import IBSI_STS_MODALITIES, SOURCE_NAMES
from sdseg.data import preprocess, sources
from sdseg.data.dataset import CropsDataset
from sdseg.data.lesion_appearance import MIN_LESION_PIXELS
from test_data_synthetic import distance_to

REPO = Path(__file__).resolve().parents[1]
SAMPLE_DIR = REPO / "Resources" / "SampleData"
# Where scripts/fetch_pyradiomics_data.sh and fetch_debian_data.sh put them: $SDSEG_CACHE, by default ~/.cache/sdseg.
CACHE = Path(os.environ.get("SDSEG_CACHE", Path.home() / ".cache" / "sdseg"))
PYRADIOMICS_SDIST = CACHE / "pyradiomics-3.0.1.tar.gz"
MRICRON_DEB = CACHE / "mricron-data_1.2.20211006+dfsg-4_all.deb"
# CI (CI=true) must run the real-data test: a missing file fails it instead of skipping it.
IN_CI = os.environ.get("CI", "").lower() == "true"
NRRD_TYPES = {"short": "<i2", "unsigned char": "u1", "uchar": "u1", "int": "<i4"}


def read_nrrd(path: Path):
    """Independent minimal reader of the gzip NRRD files written by ITK: (array (K, J, I), header dict)."""
    raw = path.read_bytes()
    head, body = raw.split(b"\n\n", 1)
    header = dict(line.split(": ", 1) for line in head.decode().splitlines()[1:] if ": " in line)
    assert header["encoding"] == "gzip"
    sizes = [int(v) for v in header["sizes"].split()]
    array = np.frombuffer(gzip.decompress(body), dtype=NRRD_TYPES[header["type"]])
    return array.reshape(sizes[::-1]), header


def run_preprocess(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sdseg.cli", "preprocess", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=CLI_TIMEOUT_S)


def lidc_like_pickle(path: Path, patients: int, crops_per_patient: int = 2, size: int = 40) -> None:
    rng = np.random.default_rng(1)
    data = {}
    yy, xx = np.mgrid[:size, :size]
    for p in range(patients):
        for c in range(crops_per_patient):
            image = rng.normal(0.5, 0.1, (size, size)).astype(np.float32)
            masks = [((yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (3 + r + c) ** 2).astype(np.uint8)
                     for r in range(4)]
            image[masks[1] > 0] += 0.3
            data[f"LIDC-IDRI-{p + 1:04d}_slice{c}_nodule0"] = {"image": image, "masks": masks}
    path.write_bytes(pickle.dumps(data))


# --- loaders on real data -----------------------------------------------------------------------------------------

def test_sample_volume_is_real_mr_with_its_lesion_label_and_geometry():
    refs = sources.load_pairs(SAMPLE_DIR)
    assert [ref.patient for ref in refs] == ["sample"]
    case = refs[0].read()
    assert case.patient == "sample"
    image, header = read_nrrd(SAMPLE_DIR / "sample.nrrd")
    label, label_header = read_nrrd(SAMPLE_DIR / "sample_label.nrrd")
    np.testing.assert_array_equal(case.image, image.astype(np.float32))
    np.testing.assert_array_equal(case.masks[0], label)
    assert case.masks.shape == (1,) + image.shape and set(np.unique(label)) == {0, 1}
    assert header["space directions"] == label_header["space directions"]
    assert header["space origin"] == label_header["space origin"]
    directions = np.array([[float(v) for v in d.strip("()").split(",")] for d in header["space directions"].split()])
    origin = np.array([float(v) for v in header["space origin"].strip("()").split(",")])
    lps_to_ras = np.diag([-1.0, -1.0, 1.0])
    np.testing.assert_allclose(case.ijk_to_ras[:3, :3], lps_to_ras @ directions.T, atol=1e-9)
    np.testing.assert_allclose(case.ijk_to_ras[:3, 3], lps_to_ras @ origin, atol=1e-9)
    assert header["space"] == "left-posterior-superior" and image.size * 2 < 5e6
    lesion_slices = np.flatnonzero(label.any(axis=(1, 2)))
    assert 0 < len(lesion_slices) < label.shape[0]  # slices with and without lesion


def test_pyradiomics_sdist_gives_five_patients_matching_an_independent_read(tmp_path):
    import tarfile

    require_real_file(PYRADIOMICS_SDIST, "fetch_pyradiomics_data.sh")

    cases = {ref.patient: ref.read() for ref in sources.load_pyradiomics(PYRADIOMICS_SDIST)}
    assert sorted(cases) == ["brain1", "brain2", "breast1", "lung1", "lung2"]
    with tarfile.open(PYRADIOMICS_SDIST) as archive:
        archive.extract("pyradiomics-3.0.1/data/lung1_label.nrrd", tmp_path, filter="data")
        archive.extract("pyradiomics-3.0.1/data/brain1_label.nrrd", tmp_path, filter="data")
    for name in ("lung1", "brain1"):
        label = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "pyradiomics-3.0.1" / "data" /
                                                          f"{name}_label.nrrd")))
        np.testing.assert_array_equal(cases[name].masks[0], label > 0)
    assert cases["lung1"].image.min() <= -1000  # CT in Hounsfield units
    sample, _ = read_nrrd(SAMPLE_DIR / "sample.nrrd")
    np.testing.assert_array_equal(cases["brain1"].image[:, 71:167, 138:234], sample)  # Resources/SampleData/README


@pytest.mark.parametrize("ci, outcome", [("true", "1 failed"), ("", "1 skipped")])
def test_missing_real_data_fails_under_ci_and_is_skipped_elsewhere(tmp_path, ci, outcome):
    test_id = f"{Path(__file__).name}::test_pyradiomics_sdist_gives_five_patients_matching_an_independent_read"
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test_id],
                            cwd=Path(__file__).parent, capture_output=True, text=True, timeout=CLI_TIMEOUT_S,
                            env=dict(os.environ, CI=ci, SDSEG_CACHE=str(tmp_path / "empty-cache")))
    assert outcome in result.stdout and "fetch_pyradiomics_data.sh" in result.stdout, result.stdout[-2000:]


def require_real_file(path: Path, fetch_script: str) -> None:
    """Skip a real-data test without its file, or fail it under CI=true."""
    if not path.is_file():
        missing = f"{path.name} not at {path}: run scripts/{fetch_script} (it honours $SDSEG_CACHE)"
        if IN_CI:
            pytest.fail(missing)
        pytest.skip(missing)


def test_mricron_deb_gives_colin27_with_its_116_aal_regions():
    require_real_file(MRICRON_DEB, "fetch_debian_data.sh")
    [ref] = sources.load_mricron(MRICRON_DEB)
    case = ref.read()
    assert ref.patient == case.patient == "colin27"
    assert case.image.shape == case.objects.shape == (181, 217, 181)
    assert len(np.unique(case.objects)) == 117 and case.objects.max() == 116
    np.testing.assert_array_equal(case.masks[0], case.objects > 0)
    brain = case.image[case.objects > 0]
    assert brain.mean() > 2 * case.image[case.image.shape[0] // 2, :5, :5].mean()  # T1 brain vs air
    np.testing.assert_array_equal(np.diag(case.ijk_to_ras)[:3], [1.0, 1.0, 1.0])  # 1 mm voxels


def write_atlas(folder: Path) -> np.ndarray:
    """A tiny stand-in of mricron-data's templates: ch2.nii.gz (noise) and aal.nii.gz with two touching boxes
    (labels 1: 10 x 10, 2: 20 x 10 voxels in-plane, slices 2-9) on a 40 x 40 x 12 grid; returns the labels."""
    folder.mkdir(parents=True, exist_ok=True)
    labels = np.zeros((12, 40, 40), dtype=np.uint8)
    labels[2:10, 10:20, 10:20] = 1
    labels[2:10, 10:20, 20:40] = 2
    image = np.random.default_rng(0).integers(50, 200, labels.shape).astype(np.uint8)
    for name, array in (("ch2.nii.gz", image), ("aal.nii.gz", labels)):
        sitk.WriteImage(sitk.GetImageFromArray(array), str(folder / name))
    return labels


def build_deb(folder: Path, templates: Path) -> Path:
    """A real .deb (dpkg-deb --build) holding ``templates`` under usr/share/mricron/templates."""
    if shutil.which("dpkg-deb") is None:
        pytest.skip("dpkg-deb is not installed")
    package = folder / "pkg"
    (package / "DEBIAN").mkdir(parents=True)
    (package / "DEBIAN" / "control").write_text("Package: mricron-data\nVersion: 0.1\nArchitecture: all\n"
                                                "Maintainer: test <t@example.org>\nDescription: test\n")
    shutil.copytree(templates, package / sources.MRICRON_TEMPLATES)
    deb = folder / "mricron-data_0.1_all.deb"
    subprocess.run(["dpkg-deb", "--build", "-Zxz", str(package), str(deb)], check=True, capture_output=True)
    return deb


def test_mricron_loader_reads_the_deb_and_its_folder_alike(tmp_path):
    labels = write_atlas(tmp_path / "templates")
    deb = build_deb(tmp_path, tmp_path / "templates")
    from_deb, from_folder = (sources.load_mricron(path)[0].read() for path in (deb, tmp_path / "templates"))
    for case in (from_deb, from_folder):
        np.testing.assert_array_equal(case.objects, labels)
    np.testing.assert_array_equal(from_deb.image, from_folder.image)
    only_2 = sources.load_mricron(deb, labels=[2])[0].read()
    np.testing.assert_array_equal(only_2.objects, np.where(labels == 2, 2, 0))
    with pytest.raises(sources.SourceError, match="mricron-data"):
        sources.load_mricron(tmp_path / "templates" / "ch2.nii.gz")
    (tmp_path / "notadeb.deb").write_bytes(b"hello")
    with pytest.raises(sources.SourceError, match="not a Debian package"):
        sources.load_mricron(tmp_path / "notadeb.deb")[0].read()


def test_preprocess_add_train_crops_each_atlas_structure_alone_into_train(tmp_path):
    write_atlas(tmp_path / "templates")
    out = tmp_path / "lesions-and-atlas"
    result = run_preprocess("--source", "pairs", "--input", SAMPLE_DIR, "--out", out, "--crops-per-lesion", 1,
                            "--negatives", 0.3, "--add-train", f"mricron={tmp_path / 'templates'}",
                            "--object-rois", 2, "--object-slices", 3)
    assert result.returncode == 0, result.stderr
    info = json.loads((out / "dataset.json").read_text())
    assert "colin27" in info["splits"]["train"]
    assert all("colin27" not in info["splits"][split] for split in ("val", "test"))
    assert info["extra_train_sources"][0]["source"] == "mricron"
    assert info["extra_train_sources"][0]["patients"] == ["colin27"]
    data = CropsDataset(out, "train")
    atlas = [i for i, path in enumerate(data.files) if path.name.startswith("colin27")]
    names = sorted(data.files[i].stem.split("_", 2)[2] for i in atlas)
    assert len(atlas) == 2 * 2 * 3 and {name[:4] for name in names} == {"o001", "o002"}  # objects x ROIs x slices
    assert not any("_neg" in data.files[i].stem for i in atlas)  # no lesion-free texture inside an atlas
    scale = (64 / 40) ** 2  # the 40-voxel ROI (the whole slice) resized to 64
    for index in atlas:
        item, label = data.read(index), int(data.files[index].stem.split("_o")[1][:3])
        assert item["patient"] == "colin27" and item["masks"].shape == (1, 64, 64)
        area = item["masks"].sum() / scale  # that structure alone, never its neighbour
        assert abs(area - (100 if label == 1 else 200)) < 25, (data.files[index].name, area)
    bad = run_preprocess("--source", "pairs", "--input", SAMPLE_DIR, "--out", tmp_path / "bad", "--add-train",
                         "mricron")
    assert bad.returncode == 2 and "SOURCE=PATH" in bad.stderr


def test_btcv_loader_reads_nifti_written_by_nibabel_and_selects_labels(tmp_path):
    nib = pytest.importorskip("nibabel")
    for folder in ("imagesTr", "labelsTr"):
        (tmp_path / folder).mkdir()
    label = np.zeros((20, 16, 6), np.uint8)
    label[2:6, 3:7, 1:3], label[10:14, 8:12, 2:5] = 1, 6
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    nib.save(nib.Nifti1Image((np.full(label.shape, -500) + 600 * (label > 0)).astype(np.int16), affine),
             tmp_path / "imagesTr" / "img0007.nii.gz")
    nib.save(nib.Nifti1Image(label, affine), tmp_path / "labelsTr" / "label0007.nii.gz")
    (ref,) = sources.load_btcv(tmp_path, labels=[6])
    case = ref.read()
    assert ref.patient == case.patient == "btcv0007"
    assert case.masks.shape == (1, 6, 16, 20) and case.masks.sum() == 4 * 4 * 3
    assert case.image.max() == 100 and case.image.min() == -500
    (all_labels,) = sources.load_btcv(tmp_path)
    assert all_labels.read().masks.sum() == 4 * 4 * 2 + 4 * 4 * 3


def test_kvasir_loader_turns_rgb_into_luminance_and_binary_masks(tmp_path):
    (tmp_path / "images").mkdir(), (tmp_path / "masks").mkdir()
    rgb = np.zeros((30, 40, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 50
    mask = np.zeros((30, 40), np.uint8)
    mask[5:15, 10:30] = 255
    sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(tmp_path / "images" / "cju0.png"))
    sitk.WriteImage(sitk.GetImageFromArray(mask), str(tmp_path / "masks" / "cju0.png"))
    (case,) = [ref.read() for ref in sources.load_kvasir(tmp_path)]
    assert case.whole_image_roi and case.image.shape == (1, 30, 40) and case.masks.shape == (1, 1, 30, 40)
    np.testing.assert_allclose(case.image, 0.299 * 200 + 0.587 * 100 + 0.114 * 50, rtol=1e-5)
    assert case.masks.sum() == 10 * 20


# --- restricted unpickler -------------------------------------------------------------------------------------------

class _Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_restricted_unpickler_refuses_code_and_loads_lidc_crops(tmp_path):
    exploit = _Exploit()
    exploit.marker = tmp_path / "pwned"
    bad = tmp_path / "bad.pickle"
    bad.write_bytes(pickle.dumps({"LIDC-IDRI-0001_x": {"image": np.zeros((4, 4)), "masks": [exploit]}}))
    with pytest.raises(sources.SourceError, match="refused to load"):
        sources.load_lidc_pickle(bad)
    assert not exploit.marker.exists()
    good = tmp_path / "data_lidc.pickle"
    lidc_like_pickle(good, patients=2)
    cases = [ref.read() for ref in sources.load_lidc_pickle(good)]
    assert [c.patient for c in cases] == ["LIDC-IDRI-0001"] * 2 + ["LIDC-IDRI-0002"] * 2
    assert cases[0].masks.shape == (4, 1, 40, 40) and cases[0].whole_image_roi
    assert [int(m.sum()) for m in cases[0].masks] == sorted(int(m.sum()) for m in cases[0].masks)


# --- split ----------------------------------------------------------------------------------------------------------

def test_split_is_deterministic_patient_level_and_order_independent():
    patients = [f"p{n:02d}" for n in range(20)]
    split = preprocess.split_patients(patients, seed=0)
    assert split == preprocess.split_patients(list(reversed(patients)) + patients[:5], seed=0)
    assert sorted(sum(split.values(), [])) == patients
    assert [len(split[s]) for s in ("train", "val", "test")] == [12, 4, 4]
    assert split != preprocess.split_patients(patients, seed=1)
    assert [len(v) for v in preprocess.split_patients(["a", "b", "c"], seed=0).values()] == [1, 1, 1]



def test_folds_rotate_val_over_the_patients_outside_test_and_fold_1_is_the_default_split():
    patients = [f"p{n:02d}" for n in range(20)]
    default = preprocess.split_patients(patients, seed=3)
    assert preprocess.fold_count(patients) == 4  # 16 patients outside test, 4 validate per fold
    folds = [preprocess.split_patients(patients, seed=3, fold=k) for k in range(1, 5)]
    assert folds[0] == default
    assert all(f["test"] == default["test"] for f in folds)
    assert sorted(sum((f["val"] for f in folds), [])) == sorted(default["val"] + default["train"])
    for f in folds:
        assert len(f["val"]) == 4 and sorted(f["val"] + f["train"] + f["test"]) == patients
    five = [f"p{n}" for n in range(5)]  # the PyRadiomics case: leave one patient out over the 4 outside test
    assert preprocess.fold_count(five) == 4
    assert sorted(preprocess.split_patients(five, fold=k)["val"][0] for k in range(1, 5)) == sorted(
        set(five) - set(preprocess.split_patients(five)["test"]))
    with pytest.raises(ValueError, match="fold 5 does not exist: the 4 patient"):
        preprocess.split_patients(five, fold=5)
    with pytest.raises(ValueError, match="no fold exists"):
        preprocess.split_patients(["a", "b"], fold=1)

def test_preprocess_cli_keeps_each_patient_in_one_split_and_crops_are_readable(tmp_path):
    pickle_path = tmp_path / "data_lidc.pickle"
    lidc_like_pickle(pickle_path, patients=6, crops_per_patient=3)
    out = tmp_path / "lidc"
    result = run_preprocess("--source", "lidc-pickle", "--input", pickle_path, "--out", out, "--size", 32)
    assert result.returncode == 0, result.stderr
    info = json.loads((out / "dataset.json").read_text())
    assert info["synthetic"] is False and info["n_raters"] == 4 and info["image_size"] == 32
    assert info["preprocessing"] == {"normalization": "percentile", "percentiles": [0.5, 99.5]}
    seen = {}
    for split in ("train", "val", "test"):
        data = CropsDataset(out, split)
        for index in range(len(data)):
            item = data.read(index)
            seen.setdefault(item["patient"], set()).add(split)
            assert item["image"].shape == (1, 32, 32) and item["masks"].shape == (4, 32, 32)
            assert -1.0 <= item["image"].min() and item["image"].max() <= 1.0
        assert sorted(info["splits"][split]) == sorted(p for p, s in seen.items() if split in s)
    assert len(seen) == 6 and all(len(s) == 1 for s in seen.values())
    assert sum(info["counts"].values()) == len(list(out.glob("*/*.npz"))) == 18



def test_preprocess_cli_fold_moves_only_val_and_train_and_writes_the_same_crops(tmp_path):
    pickle_path = tmp_path / "data_lidc.pickle"
    lidc_like_pickle(pickle_path, patients=6, crops_per_patient=3)
    infos, crops = [], []
    for fold in (1, 2):
        out = tmp_path / f"fold{fold}"
        result = run_preprocess("--source", "lidc-pickle", "--input", pickle_path, "--out", out, "--size", 32,
                                "--fold", fold)
        assert result.returncode == 0, result.stderr
        infos.append(json.loads((out / "dataset.json").read_text()))
        crops.append({f.name: np.load(f)["image"] for f in out.glob("*/*.npz")})
    assert [info["fold"] for info in infos] == [{"fold": 1, "of": 5}, {"fold": 2, "of": 5}]
    assert infos[0]["splits"]["test"] == infos[1]["splits"]["test"]
    assert infos[0]["splits"]["val"] != infos[1]["splits"]["val"]
    assert infos[1]["splits"]["val"][0] in infos[0]["splits"]["train"]
    assert crops[0].keys() == crops[1].keys() and all(np.array_equal(crops[0][n], crops[1][n]) for n in crops[0])
    bad = run_preprocess("--source", "lidc-pickle", "--input", pickle_path, "--out", tmp_path / "fold9", "--fold", 9)
    assert bad.returncode == 2
    assert bad.stderr.strip() == ("sdseg preprocess: error: fold 9 does not exist: the 5 patient(s) outside test "
                                  "make 5 fold(s), 1 to 5")

def test_preprocess_cli_crops_rois_around_the_sample_lesion(tmp_path):
    out = tmp_path / "sample"
    result = run_preprocess("--source", "pairs", "--input", SAMPLE_DIR, "--out", out, "--crops-per-lesion", 2,
                            "--margin-slices", 1)
    assert result.returncode == 0, result.stderr
    label, _ = read_nrrd(SAMPLE_DIR / "sample_label.nrrd")
    lesion_slices = np.flatnonzero(label.any(axis=(1, 2)))
    expected = set(range(lesion_slices[0] - 1, lesion_slices[-1] + 2))
    data = CropsDataset(out, "train")
    by_roi = {}
    for path in data.files:
        _, lesion, roi, slice_name = path.stem.rsplit("_", 3)
        by_roi.setdefault((lesion, roi), set()).add(int(slice_name[1:]))
    assert {roi for _, roi in by_roi} == {"c00", "c01"}
    for (lesion, roi), slices in by_roi.items():  # each ROI: the lesion's slices +-1, the same for all its ROIs
        assert max(slices) - min(slices) + 1 == len(slices) and slices <= expected
        assert slices & set(lesion_slices) and slices == by_roi[(lesion, "c00")]
    assert set().union(*by_roi.values()) == expected
    for index, path in enumerate(data.files):
        image, masks = data[index]
        k = int(path.stem.rsplit("_s", 1)[1])
        assert image.shape == (1, 64, 64) and bool(masks.any()) == (k in set(lesion_slices))
    info = json.loads((out / "dataset.json").read_text())
    assert info["splits"] == {"test": [], "val": [], "train": ["sample"]}
    assert info["crop"] == {"in_plane_voxels": 96, "lesion_margin": 1.2}  # --crop's default; training keeps it
    # neighbours: the masks of the slices before and after, in the same ROI (one rater: its mask)
    items = {path.stem: data.read(index) for index, path in enumerate(data.files)}
    checked = 0
    for stem, item in items.items():
        head, slice_name = stem.rsplit("_s", 1)
        before, after = (items.get(f"{head}_s{int(slice_name) + step:04d}") for step in (-1, 1))
        for side, other in ((0, before), (1, after)):
            if other is not None:
                np.testing.assert_array_equal(item["neighbours"][side], other["masks"][0], err_msg=stem)
                checked += 1
    assert checked > 10 and any(item["neighbours"].any() and not item["masks"].any() for item in items.values())


def test_preprocess_negatives_add_lesion_free_crops_at_the_fraction_asked(tmp_path):
    out = tmp_path / "negatives"
    result = run_preprocess("--source", "pairs", "--input", SAMPLE_DIR, "--out", out, "--crops-per-lesion", 1,
                            "--margin-slices", 0, "--negatives", 0.4, "--seed", 3)
    assert result.returncode == 0, result.stderr
    data = CropsDataset(out, "train")
    negatives = [i for i, path in enumerate(data.files) if "_neg" in path.stem]
    lesion_crops = len(data) - len(negatives)
    assert lesion_crops > 0 and len(negatives) == round(lesion_crops * 0.4 / 0.6)
    images = []
    for index in negatives:
        item = data.read(index)
        assert not item["masks"].any() and item["masks"].shape == (1, 64, 64)
        assert np.mean(item["image"] > -0.8) >= 0.5, "mostly inside the body"
        images.append(item["image"])
    assert len({image.tobytes() for image in images}) == len(images), "different places"
    info = json.loads((out / "dataset.json").read_text())
    assert info["negatives"] == {"fraction": 0.4, "counts": {"train": len(negatives), "val": 0, "test": 0}}
    assert info["counts"]["train"] == len(data) and "lesion-free crops" in info["description"]
    for wrong, message in (("1.0", "0 <= FRACTION < 1"), ("-0.1", "0 <= FRACTION < 1")):
        bad = run_preprocess("--source", "pairs", "--input", SAMPLE_DIR, "--out", tmp_path / f"bad{wrong}",
                             "--negatives", wrong)
        assert bad.returncode == 2 and message in bad.stderr


def contrast_and_radius(crop) -> tuple[float, float]:
    """A crop's lesion (raters' majority): mean inside less mean 2-4 pixels outside (Euclidean distance), and the
    radius of the disk of its area as a fraction of the crop."""
    lesion = crop["masks"].mean(0) >= 0.5
    distance = distance_to(lesion)
    image = crop["image"][0]
    return (float(image[lesion].mean() - image[(distance > 1) & (distance <= 4)].mean()),
            float(np.sqrt(lesion.sum() / np.pi) / lesion.shape[0]))


def test_preprocess_add_synthetic_draws_one_visible_lesion_per_crop_on_train_texture_only(tmp_path):
    import torch

    from sdseg.masks import connected_components

    write_atlas(tmp_path / "templates")
    plain, out = tmp_path / "plain", tmp_path / "synthetic"
    common = ["--source", "pairs", "--input", SAMPLE_DIR, "--crops-per-lesion", 1, "--negatives", 0.25, "--seed", 5]
    assert run_preprocess(*common, "--out", plain).returncode == 0
    result = run_preprocess(*common, "--out", out, "--add-synthetic", 6, "--texture",
                            f"mricron={tmp_path / 'templates'}")
    assert result.returncode == 0, result.stderr
    for split in ("train", "val", "test"):  # the real crops are those of the set without synthetic lesions
        real = sorted(path.name for path in (out / split).glob("*.npz") if not path.name.startswith("synthetic"))
        assert real == sorted(path.name for path in (plain / split).glob("*.npz"))
        assert all((out / split / name).read_bytes() == (plain / split / name).read_bytes() for name in real)
    assert not list((out / "val").glob("synthetic*")) and not list((out / "test").glob("synthetic*"))
    lesions = sorted((out / "train").glob("synthetic-0*.npz"))
    negatives = sorted((out / "train").glob("synthetic-neg*.npz"))
    assert len(lesions) == 6 and len(negatives) == round(6 * 0.25 / 0.75)
    patient = str(np.load(sorted((plain / "train").glob("*.npz"))[0])["patient"])
    assert {str(np.load(path)["patient"]) for path in lesions} <= {patient, "colin27"}
    assert {str(np.load(path)["patient"]) for path in negatives} == {patient}  # the real patient's outlined texture
    assert all(not np.load(path)["masks"].any() for path in negatives)
    for path in lesions:
        item = np.load(path)
        mask = item["masks"][0].astype(bool)
        assert item["masks"].shape == (1, 64, 64) and item["image"].shape == (1, 64, 64) and mask.sum() >= 10
        components = connected_components(torch.from_numpy(mask)).numpy()
        assert np.bincount(components[mask]).max() >= 0.9 * mask.sum(), f"{path.name}: one lesion"
    info = json.loads((out / "dataset.json").read_text())
    record = info["synthetic_train"]
    assert record["count"] == 6 and record["negatives"] == len(negatives) and set(record["textures"]) == {patient,
                                                                                                         "colin27"}
    assert record["texture_sources"][0]["source"] == "mricron" and "colin27" in info["splits"]["train"]
    assert info["counts"]["train"] == len(list((out / "train").glob("*.npz"))) and "SYNTHETIC" in info["description"]
    assert info["synthetic"] is False  # val and test stay real
    # by default each synthetic lesion looks like one of the train split's real lesions (contrast, size)
    real_crops = [np.load(path) for path in sorted((plain / "train").glob("*.npz"))]
    real_crops = [crop for crop in real_crops if crop["masks"].mean(0).round().sum() >= MIN_LESION_PIXELS]
    assert record["lesion_appearance"] == "real" and record["real_lesions"]["crops"] == {patient: len(real_crops)}
    real_contrast, real_radius = zip(*(contrast_and_radius(crop) for crop in real_crops))
    synthetic_contrast, synthetic_radius = zip(*(contrast_and_radius(np.load(path)) for path in lesions))
    assert min(real_contrast) > 0 and min(synthetic_contrast) > 0  # bright, as the real lesion
    assert min(real_contrast) <= np.median(synthetic_contrast) <= max(real_contrast)
    assert min(real_radius) * 0.7 <= min(synthetic_radius) and max(synthetic_radius) <= max(real_radius) * 1.3
    generic = run_preprocess(*common, "--out", tmp_path / "generic", "--add-synthetic", 6, "--lesion-appearance",
                             "generic")
    record = json.loads((tmp_path / "generic" / "dataset.json").read_text())["synthetic_train"]
    assert generic.returncode == 0 and record["lesion_appearance"] == "generic" and "real_lesions" not in record
    for extra, message in ((["--texture", f"mricron={tmp_path / 'templates'}"], "--texture gives textures"),
                           (["--lesion-appearance", "real"], "--lesion-appearance is how --add-synthetic"),
                           (["--add-synthetic", 3, "--multirater", 2], "leave out --multirater"),
                           (["--add-synthetic", -1], "N >= 0")):
        bad = run_preprocess(*common, "--out", tmp_path / "bad", *extra)
        assert bad.returncode == 2 and message in bad.stderr and "Traceback" not in bad.stderr


def test_preprocess_multirater_draws_synthetic_raters_on_real_textures(tmp_path):
    pickle_path = tmp_path / "data_lidc.pickle"
    lidc_like_pickle(pickle_path, patients=5)
    out = tmp_path / "multi"
    assert preprocess.main(["--source", "lidc-pickle", "--input", str(pickle_path), "--out", str(out), "--size", "16",
                            "--multirater", "3", "--multirater-counts", "6", "2", "2", "--seed", "4",
                            "--negatives", "0.25"]) == 0
    info = json.loads((out / "dataset.json").read_text())
    assert info["synthetic"] is True and info["n_raters"] == 3 and info["counts"] == {"train": 8, "val": 3, "test": 3}
    assert info["negatives"] == {"fraction": 0.25, "counts": {"train": 2, "val": 1, "test": 1}}
    negatives = sorted((out / "train").glob("train-neg*.npz"))
    assert len(negatives) == 2 and all(not np.load(path)["masks"].any() for path in negatives)
    assert all(np.load(path)["masks"].shape == (3, 16, 16) for path in negatives)
    assert "lidc-pickle" in info["source"] and "CC BY" in info["licence"]
    assert all(info["textures"][split] > 0 for split in ("train", "val", "test"))
    data = CropsDataset(out, "train")
    assert len(data) == 8 and data[0][1].shape == (3, 16, 16)
    assert any(bool((m != m[0]).any()) for m in (data.read(i)["masks"] for i in range(len(data))))


def test_preprocess_errors_say_what_to_do(tmp_path, capsys):
    assert preprocess.main(["--source", "pyradiomics", "--out", str(tmp_path / "x")]) == 2
    assert "pip download" in capsys.readouterr().err
    (tmp_path / "full").mkdir(), (tmp_path / "full" / "f").write_text("x")
    assert preprocess.main(["--source", "pairs", "--input", str(SAMPLE_DIR), "--out", str(tmp_path / "full")]) == 2
    assert "not an empty folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert preprocess.main(["--source", "pairs", "--input", str(tmp_path / "empty"), "--out",
                            str(tmp_path / "y")]) == 2
    assert "no label volume" in capsys.readouterr().err
    bad = tmp_path / "bad.pickle"
    bad.write_bytes(b"not a pickle")
    assert preprocess.main(["--source", "lidc-pickle", "--input", str(bad), "--out", str(tmp_path / "z")]) == 2
    assert "not a usable LIDC crops pickle" in capsys.readouterr().err


@pytest.mark.parametrize("source", [name for name, source in sources.SOURCES.items()
                                    if source.labelled and not source.label_values])
def test_labels_are_refused_where_the_source_sets_the_masks_and_nothing_is_written(source, tmp_path, capsys):
    """--labels was once ignored without a word by the sources whose masks are fixed (sarcoma GTVs, glioma label
    sets, radiologists' outlines): a user who asked for one label got every one. (It applies to --source only:
    --add-train sources keep their own masks, as the help says.)"""
    out = tmp_path / "out"
    assert preprocess.main(["--source", source, "--input", str(tmp_path), "--labels", "1", "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert f"the masks of {source} are set by the source" in error and "leave out --labels" in error
    assert error.count("\n") == 1 and not out.exists()


def test_labels_pick_the_mask_of_a_label_map_source(tmp_path):
    """The sample's label map holds 1 (the tumour): --labels 1 crops it, --labels 2 finds no lesion."""
    assert preprocess.main(["--source", "pairs", "--input", str(SAMPLE_DIR), "--labels", "1", "--out",
                            str(tmp_path / "one")]) == 0
    assert preprocess.main(["--source", "pairs", "--input", str(SAMPLE_DIR), "--labels", "2", "--out",
                            str(tmp_path / "two")]) == 2 and not (tmp_path / "two").exists()


def test_preprocess_refuses_held_out_patients_in_train_and_a_failed_run_leaves_nothing(tmp_path, capsys,
                                                                                       monkeypatch):
    pickle_path = tmp_path / "data_lidc.pickle"
    lidc_like_pickle(pickle_path, patients=6)
    out = tmp_path / "out"
    assert preprocess.main(["--source", "lidc-pickle", "--input", str(pickle_path), "--out", str(out), "--size",
                            "32", "--add-train", f"lidc-pickle={pickle_path}"]) == 2
    assert "a held-out patient must not be trained on" in capsys.readouterr().err and not out.exists()
    assert preprocess.main(["--source", "pairs", "--input", str(SAMPLE_DIR), "--out", str(out), "--labels",
                            "7"]) == 2
    assert "no crop written: no case has a lesion with --labels 7" in capsys.readouterr().err and not out.exists()
    assert preprocess.main(["--source", "lidc-pickle", "--input", str(pickle_path), "--out", str(out),
                            "--multirater", "2", "--multirater-counts", "-5", "2", "2"]) == 2
    assert "--multirater-counts needs TRAIN, VAL, TEST >= 0" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert preprocess.main(["--source", "lidc-pickle", "--input", str(pickle_path), "--out",
                            str(tmp_path / "file" / "x")]) == 2
    assert capsys.readouterr().err.count("\n") == 1  # one line, no traceback

    def interrupted(source, refs, out, *args, **kwargs):  # Ctrl-C in the middle of writing the crops
        (out / "train").mkdir()
        (out / "train" / "half.npz").write_bytes(b"")
        raise KeyboardInterrupt

    monkeypatch.setattr(preprocess, "build_real_dataset", interrupted)
    out.mkdir()  # an empty folder given by the user stays, empty
    assert preprocess.main(["--source", "lidc-pickle", "--input", str(pickle_path), "--out", str(out)]) == 130
    assert capsys.readouterr().err.strip() == "sdseg preprocess: error: interrupted; nothing written"
    assert out.is_dir() and not any(out.iterdir())


def test_the_command_line_offers_exactly_the_sources_and_modalities():
    """`sdseg preprocess` names the sources and IBSI modalities from sdseg.choices (no torch for --help)."""
    assert SOURCE_NAMES == tuple(sorted(sources.SOURCES))
    assert IBSI_STS_MODALITIES == tuple(sources.IBSI_STS_PREPROCESSING)
