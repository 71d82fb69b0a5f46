"""The scale search on the clicked slice and the propagation staying on its lesion (sdseg.scale_search,
sdseg.lesion_jumps, sdseg.lesion_length, sdseg.propagation), in process and through a REAL worker subprocess and
`sdseg-slicer segment`.
The threshold model (mask = normalised intensity > 0; crops of 16 voxels, its input size) makes the expected masks
exact: a lesion larger than its 1x crop touches that crop's edge there, a tiny one fills the 0.5x crop best."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest
from slicerlib_testing import BRIGHT_MODEL_NAME, BRIGHT_MODEL_SIZE, BRIGHT_WINDOW, CLI_TIMEOUT_S, write_volume_file

from sdseg import propagation
from sdseg.models import build_model
from sdseg.propagation import Prompt
from sdseg.scale_search import ScaleRule

SHAPE_KJI = (12, 96, 96)
CENTRE = 48.0
IJK_TO_RAS = np.diag([0.8, 0.8, 2.5, 1.0])
TIMEOUT_S = 300.0


def bright_model(**config):
    return build_model("threshold", "tiny", image_size=BRIGHT_MODEL_SIZE, threshold=0.0, polarity="above",
                       crop={"in_plane_voxels": BRIGHT_MODEL_SIZE, "lesion_margin": 1.2},
                       preprocessing={"normalization": "ct_window", "window": list(BRIGHT_WINDOW)}, **config)


def disc_volume(radii, extra=None):
    """A bright disc of radius ``radii[k]`` on slice k (0: none) around (CENTRE, CENTRE), plus ``extra`` bright."""
    j, i = np.mgrid[0:SHAPE_KJI[1], 0:SHAPE_KJI[2]]
    truth = np.array([(j - CENTRE) ** 2 + (i - CENTRE) ** 2 <= r * r if r else np.zeros(SHAPE_KJI[1:], bool)
                      for r in radii])
    array = np.where(truth | (extra if extra is not None else False), 150.0, 20.0).astype(np.float32)
    return array, truth


def run(model, array, prompt, **kwargs):
    reports = []
    results = list(propagation.propagate(model, array, IJK_TO_RAS, 2, [prompt], [0, 0, 0, *array.shape[::-1]], 4,
                                         on_report=reports.append, **kwargs))
    found = np.zeros(array.shape, bool)
    for result in results:
        i0, j0, k0, i1, j1, k1 = result.box_ijk
        found[k0, j0:j1, i0:i1] |= result.consensus > 0
    return results, found, reports


def dice(a, b):
    return 2.0 * (a & b).sum() / (a.sum() + b.sum())


CLICK = Prompt(point_ijk=(CENTRE, CENTRE, 5.0))


def test_a_lesion_larger_than_the_trained_crop_is_found_at_a_larger_scale():
    """A disc 25 voxels across touches the edge of the 8- and 16-voxel crops: the rule takes a larger scale, whose
    samples are the result a forced run at that scale gives."""
    array, truth = disc_volume([0, 0, 8, 10, 12, 12, 12, 10, 8, 0, 0, 0])
    results, found, reports = run(bright_model(), array, CLICK)
    chosen, done = reports[0], reports[-1]
    assert chosen.scale_source == "search" and chosen.scale > 1.0 and chosen.scale_score == 1.0
    tried = {c["scale"]: c for c in chosen.scales_tried}
    assert tried[1.0]["touches_border"] and tried[0.5]["touches_border"] and not tried[chosen.scale]["touches_border"]
    assert dice(found, truth) > 0.85  # crops of 32-64 voxels seen at 16 x 16: boundary pixels differ
    assert done.stops == {"forward": "empty", "backward": "empty"}
    forced, _, forced_reports = run(bright_model(), array, CLICK, scale=chosen.scale)
    np.testing.assert_array_equal(forced[0].samples, results[0].samples)
    assert forced_reports[0].scale_source == "forced" and forced_reports[0].scales_tried == []


def test_a_tiny_lesion_is_found_at_a_smaller_scale_and_a_healthy_click_finds_nothing():
    array, truth = disc_volume([0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0])
    _, found, reports = run(bright_model(), array, CLICK)
    assert reports[0].scale == 0.5 and found[4:7].any() and not (found & ~truth)[4:7].any()
    _, found, reports = run(bright_model(), array, Prompt(point_ijk=(CENTRE + 30, CENTRE, 5.0)))
    assert not found.any() and reports[0].scale == 1.0 and reports[0].scale_score == 0.0


def test_crops_re_scale_as_the_lesion_shrinks_and_a_box_fixes_the_scale():
    array, truth = disc_volume([0, 2, 4, 8, 12, 12, 12, 8, 4, 2, 0, 0])
    results, found, reports = run(bright_model(), array, CLICK)
    side = {r.index: r.box_ijk[3] - r.box_ijk[0] for r in results}
    assert side[5] == reports[0].scale * BRIGHT_MODEL_SIZE and side[1] < side[5] and side[9] < side[5]
    assert dice(found, truth) > 0.85
    # no scale passes the rule (a min_score above 1): the recipe's scale, and no re-scaling: 16-voxel crops at the
    # ends (re-scaling to the fill of the 1x crop the prompted slice overflowed would take 8-voxel ones)
    results, _, reports = run(bright_model(propagation={"scale_rule": {"min_score": 1.1}}), array, CLICK)
    side = {r.index: r.box_ijk[3] - r.box_ijk[0] for r in results}
    assert reports[0].scale == 1.0 and side[1] == side[9] == BRIGHT_MODEL_SIZE
    _, _, reports = run(bright_model(), array, Prompt(box_ijk=(30, 30, 3, 67, 67, 8)))
    assert reports[0].scale_source == "box" and reports[0].scales_tried == []


def neighbour_touching_on_one_slice():
    """The lesion: a disc on slices 2..8; a bright block beside it on slices 8..11 touches it on slice 8 only."""
    block = np.zeros(SHAPE_KJI, bool)
    block[8:, 30:70, int(CENTRE) + 7:90] = True
    return disc_volume([0, 0, 6, 6, 6, 6, 6, 6, 6, 0, 0, 0], block)


def test_a_direction_stops_when_the_consensus_jumps_onto_a_neighbouring_structure():
    array, truth = neighbour_touching_on_one_slice()
    results, found, reports = run(bright_model(), array, CLICK, scale=1.0)  # 16-voxel crops: exact masks
    assert reports[-1].stops["forward"].startswith("jump: ") and reports[-1].stops["backward"] == "empty"
    assert max(r.index for r in results) == 8 and not found[9:].any()
    # slice 8 keeps only the previous slice's footprint: its disc (12.4 voxels across) dilated by 4 voxels
    extra = np.argwhere(found & ~truth)
    disc = np.argwhere(truth[7])
    assert len(extra) and all(extra[:, 0] == 8)
    assert all(np.abs(disc - voxel[1:]).max(axis=1).min() <= 4 for voxel in extra)
    assert (found == truth)[:8].all()
    # without the bounds (a model whose config loosens them) the propagation runs onto the block
    loose = {"propagation": {"jump_rule": {"max_area_ratio": 1e9, "max_centroid_shift": 1e9,
                                           "max_outside_fraction": 1.0}}}
    _, leaked, reports = run(bright_model(**loose), array, CLICK, scale=1.0)
    assert leaked[9:].sum() > 1000 and not reports[-1].stops["forward"].startswith("jump")


def test_a_direction_stops_at_the_length_its_model_allows_from_the_prompted_slice():
    """A bright cylinder through the whole volume: without a length rule the propagation runs to both ends; with
    max_diameters 1 each direction stops past 1 x the prompted slice's equivalent diameter (mm, along the slices)."""
    array, truth = disc_volume([6] * SHAPE_KJI[0])
    _, found, reports = run(bright_model(), array, CLICK, scale=1.0)
    assert found.any(axis=(1, 2)).all() and reports[-1].stops == {"forward": "roi_end", "backward": "roi_end"}
    bounded = bright_model(propagation={"length_rule": {"max_diameters": 1.0}})
    _, found, reports = run(bounded, array, CLICK, scale=1.0)
    spacing = np.diag(IJK_TO_RAS)[:3]
    diameter_mm = 2.0 * np.sqrt(truth[5].sum() * spacing[0] * spacing[1] / np.pi)
    reach = int(diameter_mm // spacing[2])  # whole slices within one diameter of slice 5
    assert 0 < reach < 5
    assert np.flatnonzero(found.any(axis=(1, 2))).tolist() == list(range(5 - reach, 5 + reach + 1))
    assert reports[-1].stops == {"forward": "length", "backward": "length"}
    _, found, reports = run(bounded, array, Prompt(box_ijk=(10, 10, 0, 86, 86, 12)), scale=1.0)  # the box's slices
    assert found.any(axis=(1, 2)).all() and reports[-1].stops == {"forward": "roi_end", "backward": "roi_end"}


def test_rule_parameters_come_from_the_model_config():
    assert ScaleRule.of_config({"propagation": {"scale_rule": {"target_fill": 0.7}}}).target_fill == 0.7
    with pytest.raises(ValueError, match="unknown scale_rule key"):
        ScaleRule.of_config({"propagation": {"scale_rule": {"fill": 0.7}}})
    # the disc 25 voxels across fills the 2x crop to 0.78, the 4x one to 0.39: the default rule (max_fill 0.45)
    # takes 4x; a max_fill of 0.83 and a target fill of 0.7 take 2x, a max_fill of 0.83 alone still 4x
    array, _ = disc_volume([0, 0, 8, 10, 12, 12, 12, 10, 8, 0, 0, 0])
    for rule, scale in (({}, 4.0), ({"max_fill": 0.83, "target_fill": 0.7}, 2.0), ({"max_fill": 0.83}, 4.0)):
        _, _, reports = run(bright_model(propagation={"scale_rule": rule}), array, CLICK, max_slices=1)
        assert reports[0].scale == scale, rule and reports[-1].stops == {"forward": "max_slices", "backward": "max_slices"}


def worker_messages(client, job, timeout=TIMEOUT_S):
    job_id = client.submit(job)
    messages, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        messages += [m for m in client.poll(1.0) if m.get("job_id") == job_id]
        if messages and messages[-1]["type"] in ("done", "error", "cancelled"):
            return messages
    raise AssertionError(f"no end of job {job_id} within {timeout} s: {messages[-3:]}")


def test_the_worker_reports_the_scale_and_the_stops(worker_env, tmp_path):
    from SDSegSlicerLib.worker_client import WorkerClient

    array, _ = neighbour_touching_on_one_slice()
    array[:, :, :30] = np.where(disc_volume([0, 0, 8, 10, 12, 12, 12, 10, 8, 0, 0, 0])[1][:, :, 30:60], 150.0,
                                20.0)[:, :, :30]  # a second, larger lesion at i 0..29 (centre i 18)
    volume = write_volume_file(tmp_path / "two.nrrd", array, IJK_TO_RAS)
    client = WorkerClient()
    try:
        client.start(TIMEOUT_S)
        job = {"volume": str(volume), "model": BRIGHT_MODEL_NAME, "samples": 2, "device": "cpu",
               "prompt": {"lesions": [{"point_ijk": [CENTRE, CENTRE, 5.0]}, {"point_ijk": [18.0, CENTRE, 5.0]}]}}
        messages = worker_messages(client, job)
        forced = worker_messages(client, {**job, "prompt": {**job["prompt"], "scale": 2}})
        refused = worker_messages(client, {**job, "prompt": {**job["prompt"], "scale": 100}})
    finally:
        client.stop()
    accepted, done = messages[0], messages[-1]
    assert accepted["type"] == "accepted" and accepted["scale_search"]["scales"] == [0.5, 1.0, 2.0, 4.0]
    assert accepted["scale_search"]["rule"]["target_fill"] == ScaleRule().target_fill and accepted["jump_rule"]
    assert accepted["length_rule"] == {"max_diameters": None}  # the test model sets none
    scales = [m for m in messages if m["type"] == "progress" and "scale" in m]
    assert [m["lesion"] for m in scales] == [0, 1] and scales[1]["scale"] > 1.0
    first_slice = next(n for n, m in enumerate(messages) if m["type"] == "slice" and m["lesion"] == 1)
    assert messages.index(scales[1]) < first_slice  # the scale comes before the lesion's first slice
    lesions = done["summary"]["lesions"]
    assert lesions[0]["stops"]["forward"].startswith("jump: ") and lesions[1]["stops"]["forward"] == "empty"
    assert lesions[1]["scale"] == scales[1]["scale"] and len(lesions[1]["scales_tried"]) == 4
    assert forced[0]["scale_search"] is None and forced[-1]["type"] == "done"
    assert [lesion["scale_source"] for lesion in forced[-1]["summary"]["lesions"]] == ["forced", "forced"]
    assert refused[-1]["type"] == "error" and refused[-1]["code"] == "bad_request" and "scale" in refused[-1]["message"]


def test_the_cli_forces_the_scale_and_the_summary_says_it(worker_env, tmp_path):
    array, _ = disc_volume([0, 0, 8, 10, 12, 12, 12, 10, 8, 0, 0, 0])
    volume = write_volume_file(tmp_path / "big.nrrd", array, IJK_TO_RAS)
    summaries = []
    for options in ([], ["--scale", "2"]):
        output = tmp_path / f"big{len(summaries)}.seg.nrrd"
        result = subprocess.run(
            [sys.executable, "-m", "SDSegSlicerLib.headless", "segment", str(volume), "-o", str(output), "--model",
             BRIGHT_MODEL_NAME, "--samples", "2", "--device", "cpu", "--point-ijk", "48,48,5", *options],
            env=worker_env, capture_output=True, text=True, timeout=CLI_TIMEOUT_S)
        assert result.returncode == 0, result.stderr
        summaries.append(json.loads(output.with_name(output.name.replace(".seg.nrrd", "_summary.json")).read_text()))
    searched, forced = (summary["lesions"][0] for summary in summaries)
    assert searched["scale_source"] == "search" and searched["scale"] == 4.0 and len(searched["scales_tried"]) == 4
    assert searched["stops"] == {"forward": "empty", "backward": "empty"}
    assert forced["scale_source"] == "forced" and forced["scale"] == 2.0 and forced["slices"] == 7
    figures = {f"{level}[].{key}" for level in ("segments", "lesions") for item in summaries[0][level] for key in item}
    figures |= {"voxel_volume_ml", "variance_mean", "variance_max"}
    assert set(summaries[0]["definitions"]) == figures  # each figure of the file defined there, and nothing else



def test_a_lesion_taken_at_a_scale_it_overflows_grows_its_crops_without_re_scaling():
    """In a 40 x 40 plane a disc 25 voxels across touches the 8- and 16-voxel crops and fills the 32- and 40-voxel
    ones beyond max_fill: the largest scale it touches (1x) is taken and the slice cut again larger (16 -> 24 ->
    36); later crops hold 1.2 x its extent (at most 30 voxels), not a scale picked for the fill of a crop it
    overflowed (2x: 32)."""
    j, i = np.mgrid[0:40, 0:40]
    truth = np.zeros((9, 40, 40), bool)
    truth[2:7] = (j - 20) ** 2 + (i - 20) ** 2 <= 12 ** 2
    array = np.where(truth, 150.0, 20.0).astype(np.float32)
    results, found, reports = run(bright_model(), array, Prompt(point_ijk=(20.0, 20.0, 4.0)))
    assert reports[0].scale == 1.0 and reports[0].scales_tried[1]["touches_border"]
    side = {r.index: r.box_ijk[3] - r.box_ijk[0] for r in results}
    assert side[4] == 36 and max(side[k] for k in side if k != 4) <= 30 and dice(found, truth) > 0.95


@pytest.mark.parametrize("kind", ["ambiguous", "unet", "sdseg"])
def test_every_model_kind_keeps_the_rules_tuned_for_it_in_its_config(kind, tmp_path):
    """config["propagation"] (the scale rule tuned on validation volumes) is a key every model kind takes and keeps
    through a save and a load, and the propagation reads it."""
    from sdseg.checkpoint import load_model, save_model
    from sdseg.models import build_model

    rule = {"min_score": 0.7, "max_fill": 0.83}
    save_model(build_model(kind, "tiny", propagation={"scale_rule": rule}), tmp_path / kind)
    loaded = ScaleRule.of_config(load_model(tmp_path / kind).config)
    assert (loaded.min_score, loaded.max_fill) == (0.7, 0.83) and loaded.min_presence == ScaleRule().min_presence
