"""`sdseg-slicer batch` over a small cohort with a tiny real model: a local process pool and a local Ray cluster
(started by the test), prompts per volume, a corrupt volume recorded without stopping the others, and resuming."""

from __future__ import annotations

import csv

import pytest
from slicerlib_testing import MODEL_NAME, lesion_volume, read_seg_nrrd_with_slicerio

from SDSegSlicerLib import headless

OPTIONS = ["--model", MODEL_NAME, "--samples", "2", "--steps", "2", "--device", "cpu"]


@pytest.fixture
def cohort(tmp_path):
    folder = tmp_path / "cohort"
    folder.mkdir()
    lesion_volume(folder / "alpha.nrrd", (3, 16, 16), seed=1)
    lesion_volume(folder / "beta.nii.gz", (4, 16, 16), seed=2)
    (folder / "broken.nrrd").write_text("NRRD0004\nnot a volume\n")
    prompts = tmp_path / "prompts.csv"
    prompts.write_text("id,kind,value\nbeta,point_ijk,8 8 2\nbeta,point_ijk,3;3;1\n")
    return folder, prompts


def summary(out):
    with open(out / "summary.csv", newline="") as stream:
        return {row["id"]: row for row in csv.DictReader(stream)}


def check_cohort(out):
    rows = summary(out)
    assert rows["alpha"]["status"] == "done" and rows["beta"]["status"] == "done"
    assert rows["broken"]["status"] == "error" and "broken.nrrd" in rows["broken"]["error"]
    assert rows["beta"]["lesions"] == "2" and len(rows["beta"]["lesion_volumes_ml"].split(";")) == 2
    assert rows["alpha"]["lesions"] == "1"  # whole volume: one set of segments
    masks, _ = read_seg_nrrd_with_slicerio(out / "beta.seg.nrrd")
    assert "lesion 2 sample 2" in masks and masks["lesion 1 consensus"].shape == (4, 16, 16)
    return rows


def test_a_cohort_on_a_local_pool_records_failures_and_resumes(cohort, tmp_path, worker_env, capsys):
    folder, prompts = cohort
    out = tmp_path / "out"
    arguments = ["batch", "--inputs", str(folder), "--out", str(out), "--prompts", str(prompts), "--workers", "2",
                 *OPTIONS]
    assert headless.main(arguments) == 1  # one volume failed
    err = capsys.readouterr().err
    assert "2 of 3 volumes done" in err and "broken: error:" in err
    first = check_cohort(out)
    stamp = (out / "alpha.seg.nrrd").stat().st_mtime_ns
    assert headless.main(arguments) == 1
    again = summary(out)
    assert again["alpha"]["status"] == again["beta"]["status"] == "skipped (done before)"
    assert again["alpha"]["lesion_volumes_ml"] == first["alpha"]["lesion_volumes_ml"]
    assert (out / "alpha.seg.nrrd").stat().st_mtime_ns == stamp and again["broken"]["status"] == "error"


def test_a_cohort_on_a_local_ray_cluster(cohort, tmp_path, worker_env, capsys):
    ray = pytest.importorskip("ray")
    folder, prompts = cohort
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        assert headless.main(["batch", "--inputs", str(folder), "--out", str(tmp_path / "ray"), "--prompts",
                              str(prompts), "--ray", "local", *OPTIONS]) == 1
        check_cohort(tmp_path / "ray")
    finally:
        ray.shutdown()


def test_bad_cohorts_are_one_line(tmp_path, capsys):
    (tmp_path / "list.csv").write_text("path\nx.nrrd\n")
    (tmp_path / "empty").mkdir()
    (tmp_path / "p.csv").write_text("input,kind,value\nnope.nrrd,point_ijk,1 2 3\n")
    (tmp_path / "one").mkdir()
    lesion_volume(tmp_path / "one" / "one.nrrd", (2, 8, 8))
    for arguments, message in [
        (["--inputs", str(tmp_path / "list.csv")], "a CSV needs an 'input' column"),
        (["--inputs", str(tmp_path / "empty")], "no volume found"),
        (["--inputs", str(tmp_path / "one" / "one.nrrd")], "no such folder or .csv file"),
        (["--inputs", str(tmp_path / "one"), "--prompts", str(tmp_path / "p.csv")],
         "line 2: 'nope.nrrd' is not one of the inputs"),
    ]:
        assert headless.main(["batch", "--out", str(tmp_path / "o"), *arguments]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
