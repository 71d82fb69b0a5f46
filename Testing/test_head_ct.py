"""The `head-ct` source (sdseg.data.head_ct): the real head CT of Debian's invesalius-examples, read from the .deb
that scripts/fetch_debian_data.sh fetches and checked against dpkg-deb's extraction; InVesalius projects written
here; texture for synthetic lesions through `sdseg preprocess --multirater`."""

from __future__ import annotations

import io
import json
import plistlib
import shutil
import subprocess
import tarfile

import numpy as np
import pytest

from sdseg.data.cases import SourceError
from sdseg.data.head_ct import CRANIUM, INVESALIUS_EXAMPLES, load_head_ct
from test_data_sources import CACHE, require_real_file, run_preprocess

INVESALIUS_DEB = CACHE / "invesalius-examples_3.1.99998-4_all.deb"


def write_inv3(path, voxels: np.ndarray, spacing=(0.5, 0.75, 2.0), orientation=1) -> None:
    """An InVesalius project as InVesalius writes it: a gzipped tar of one folder with main.plist + matrix.dat."""
    main = {"matrix": {"dtype": "int16", "filename": "matrix.dat", "shape": list(voxels.shape)},
            "spacing": list(spacing), "orientation": orientation, "modality": "CT", "name": "test"}
    with tarfile.open(path, "w:gz") as archive:
        for name, data in (("main.plist", plistlib.dumps(main)), ("matrix.dat", voxels.astype("<i2").tobytes())):
            info = tarfile.TarInfo(f"tmpproject/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


def test_written_project_gives_its_voxels_on_axial_lps_axes(tmp_path):
    voxels = np.arange(3 * 4 * 5, dtype=np.int16).reshape(3, 4, 5) - 30
    write_inv3(tmp_path / "p.inv3", voxels)
    [ref] = load_head_ct(tmp_path / "p.inv3")
    case = ref.read()
    np.testing.assert_array_equal(case.image, voxels)
    np.testing.assert_allclose(case.ijk_to_ras, np.diag([-0.5, -0.75, 2.0, 1.0]))
    assert case.masks.shape == (1, 3, 4, 5) and not case.masks.any()
    write_inv3(tmp_path / "coronal.inv3", voxels, orientation=2)
    with pytest.raises(SourceError, match="axial"):
        load_head_ct(tmp_path / "coronal.inv3")
    (tmp_path / "broken.inv3").write_bytes(b"not a project")
    with pytest.raises(SourceError, match="not an InVesalius project"):
        load_head_ct(tmp_path / "broken.inv3")


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb as the independent reader")
def test_debian_package_gives_the_real_head_ct(tmp_path):
    require_real_file(INVESALIUS_DEB, "fetch_debian_data.sh")
    [ref] = load_head_ct(INVESALIUS_DEB)
    case = ref.read()
    subprocess.run(["dpkg-deb", "-x", str(INVESALIUS_DEB), str(tmp_path / "deb")], check=True)
    with tarfile.open(tmp_path / "deb" / INVESALIUS_EXAMPLES / CRANIUM) as archive:
        files = {m.name.split("/")[-1]: archive.extractfile(m).read() for m in archive.getmembers() if m.isfile()}
    main = plistlib.loads(files["main.plist"])
    expected = np.frombuffer(files["matrix.dat"], dtype="<i2").reshape(main["matrix"]["shape"])
    assert case.image.shape == expected.shape == (108, 256, 256)
    np.testing.assert_array_equal(case.image, expected)
    assert case.image.min() == -1024 and 1500 < case.image.max() < 4000  # HU: air to dense bone
    assert case.ijk_to_ras[2, 2] == pytest.approx(1.5) and -case.ijk_to_ras[0, 0] == pytest.approx(0.957, abs=1e-3)
    brain = case.image[54, 96:160, 96:160]  # the middle of the middle slice: brain tissue, 0-80 HU
    assert 0 < np.median(brain) < 80


def test_preprocess_uses_it_as_texture_only(tmp_path):
    require_real_file(INVESALIUS_DEB, "fetch_debian_data.sh")
    result = run_preprocess("--source", "head-ct", "--input", INVESALIUS_DEB, "--out", tmp_path / "real")
    assert result.returncode == 2 and "no masks" in result.stderr and result.stderr.count("\n") == 1
    result = run_preprocess("--source", "head-ct", "--input", INVESALIUS_DEB, "--multirater", 2,
                            "--multirater-counts", 6, 0, 0, "--size", 32, "--out", tmp_path / "synthetic")
    assert result.returncode == 0, result.stderr
    info = json.loads((tmp_path / "synthetic" / "dataset.json").read_text())
    assert info["counts"] == {"train": 6, "val": 0, "test": 0} and "GPL-2" in info["licence"]
    crops = [np.load(path) for path in sorted((tmp_path / "synthetic" / "train").glob("*.npz"))]
    assert all(c["image"].shape == (1, 32, 32) and c["masks"].shape == (2, 32, 32) for c in crops)
    assert sum(c["masks"].any() for c in crops) >= 4  # synthetic lesions drawn on the CT texture
