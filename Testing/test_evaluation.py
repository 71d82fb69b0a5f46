"""`sdseg evaluate` (sdseg.evaluation) with a real tiny model on synthetic data: a real `python -m sdseg.cli
evaluate` subprocess whose metrics.json equals a recomputation with sdseg.metrics on samples drawn directly from
the model, the trivial baselines on a hand-made data set with known answers, and clear errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from slicerlib_testing import CLI_TIMEOUT_S
import torch
from matplotlib.image import imread

from sdseg.checkpoint import load_model, save_model
from sdseg.data.dataset import CropsDataset
from sdseg.data.synthetic import make_shapes_dataset
from sdseg.evaluation import fit_intensity_threshold, main, mean_mask_baseline, prediction_metrics, prompt_point
from sdseg.masks import relative_area_filter
from sdseg.models.threshold import threshold_masks
from sdseg.prompt_maps import object_click
from sdseg.noise import sample_generators
from sdseg.metrics import auroc, dice, generalized_energy_distance, iou, sample_diversity
from sdseg.models import build_model

REPO = Path(__file__).resolve().parent.parent
SEED, STEPS, CASES, COUNTS = 5, 2, 4, (1, 3)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_shapes_dataset(tmp_path_factory.mktemp("eval") / "shapes", 6, 1, 5, image_size=32, n_raters=3,
                               seed=1)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """An untrained tiny model whose output is shifted towards background: its samples (about 1/3 foreground)
    fall into many components, so the relative-area filter changes them."""
    torch.manual_seed(0)
    model = build_model("ambiguous", "tiny")
    with torch.no_grad():
        model.unet.conv_out.bias -= 0.25
    return save_model(model, tmp_path_factory.mktemp("eval") / "tiny-ambiguous")


def run_cli(*arguments: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sdseg.cli", "evaluate", *arguments], capture_output=True,
                          text=True, cwd=cwd, timeout=CLI_TIMEOUT_S,
                          env=dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1"))


@pytest.fixture(scope="module")
def cli_run(data, model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "out"
    result = run_cli("--model", str(model_dir), "--data", str(data), "--samples", ",".join(map(str, COUNTS)),
                     "--steps", str(STEPS), "--max-cases", str(CASES), "--seed", str(SEED), "--out", str(out),
                     cwd=out.parent)
    assert result.returncode == 0, result.stderr[-3000:]
    return result, out


def test_cli_writes_the_table_the_json_and_the_grid(cli_run):
    result, out = cli_run
    report = json.loads((out / "metrics.json").read_text())
    assert report["data"]["cases"] == CASES and report["settings"]["samples"] == list(COUNTS)
    assert [(row["samples"], row["postprocessing"]) for row in report["results"]] == \
        [(n, p) for n in COUNTS for p in ("none", "relative_area")]
    assert all(row["slices_per_s"] > 0 for row in report["results"]) and report["baselines"] == []
    table = (out / "metrics.md").read_text()
    assert table in result.stdout and f"results written to {out}" in result.stdout
    assert table.count("\n| model |") == 2 * len(COUNTS)
    for caption in ("i ≠ j", "pooled over all pixels of all cases", "(model default)", "slices/s"):
        assert caption in table
    picture = imread(out / "grid.png")
    assert picture.ndim == 3 and picture.shape[1] > picture.shape[0] > 100 and picture.std() > 0.05


def expected_metrics(samples: list[np.ndarray], raters: list[np.ndarray]) -> dict:
    consensus = [s.mean(0) >= 0.5 for s in samples]
    majority = [r.mean(0) >= 0.5 for r in raters]
    return {
        "dice_vs_raters": np.mean([np.mean([dice(c, y) for y in r]) for c, r in zip(consensus, raters)]),
        "iou_vs_raters": np.mean([np.mean([iou(c, y) for y in r]) for c, r in zip(consensus, raters)]),
        "dice_vs_majority": np.mean([dice(c, m) for c, m in zip(consensus, majority)]),
        "iou_vs_majority": np.mean([iou(c, m) for c, m in zip(consensus, majority)]),
        "ged": np.mean([generalized_energy_distance(s, r) for s, r in zip(samples, raters)]),
        "diversity": np.mean([sample_diversity(s) for s in samples]),
        "auroc_variance_vs_disagreement": auroc(np.concatenate([(s.mean(0) * (1 - s.mean(0))).ravel()
                                                                for s in samples]),
                                                np.concatenate([(r.any(0) & ~r.all(0)).ravel() for r in raters])),
    }


def test_metrics_equal_a_recomputation_on_samples_drawn_directly(cli_run, data, model_dir):
    _, out = cli_run
    rows = {(row["samples"], row["postprocessing"]): row
            for row in json.loads((out / "metrics.json").read_text())["results"]}
    test = CropsDataset(data, "test")
    images = [test[i][0][None] for i in range(CASES)]
    raters = [test[i][1].numpy() > 0.5 for i in range(CASES)]
    model = load_model(model_dir)
    assert model.config["relative_area"] == 0.5  # the evaluation's "relative_area" rows: the model's own filter
    for count in COUNTS:
        drawn = [model.sample(image, count, steps=STEPS, generator=sample_generators(SEED, i, range(count)))[0] > 0.5
                 for i, image in enumerate(images)]
        for postprocessing in ("none", "relative_area"):
            samples = [(relative_area_filter(d, 0.5) if postprocessing == "relative_area" else d).numpy()
                       for d in drawn]
            expected = expected_metrics(samples, raters)
            row = rows[(count, postprocessing)]
            for key, value in expected.items():
                assert row[key] == pytest.approx(value, rel=1e-12, abs=1e-12), (count, postprocessing, key)
    assert rows[(1, "none")]["diversity"] == 0.0 and rows[(1, "none")]["auroc_variance_vs_disagreement"] == 0.5
    for count in COUNTS:  # the filter made a difference, so the test tells the two variants apart
        assert rows[(count, "none")]["ged"] != rows[(count, "relative_area")]["ged"]


# Hand-made data set (32x32, 2 raters; background -0.4, lesions +0.6): squares S1 (64 px), S2 and S4 (16 px each).
S1, S2, S4 = (slice(4, 12), slice(4, 12)), (slice(20, 24), slice(20, 24)), (slice(24, 28), slice(0, 4))


def square_mask(*squares) -> np.ndarray:
    mask = np.zeros((32, 32), dtype=np.uint8)
    for square in squares:
        mask[square] = 1
    return mask


def image_with(*squares) -> np.ndarray:
    return np.where(square_mask(*squares) > 0, 0.6, -0.4).astype(np.float32)


def write_hand_made_dataset(folder: Path) -> Path:
    cases = {"train": [(image_with(S1), [square_mask(S1), square_mask(S1)]),
                       (image_with(S1, S2), [square_mask(S1, S2), square_mask(S1)])],
             "test": [(image_with(S1, S4), [square_mask(S1), square_mask()])]}
    for split, items in cases.items():
        (folder / split).mkdir(parents=True)
        for index, (image, masks) in enumerate(items):
            np.savez(folder / split / f"{index}.npz", image=image[None], masks=np.stack(masks),
                     patient=np.str_(f"{split}{index}"))
    info = {"name": "hand-made", "source": "test", "licence": "CC0-1.0", "image_size": 32, "n_raters": 2,
            "preprocessing": {"normalization": "percentile", "percentiles": [0.5, 99.5]}, "synthetic": True,
            "description": "squares"}
    (folder / "dataset.json").write_text(json.dumps(info))
    return folder


def test_reports_name_semi_synthetic_data(tmp_path, model_dir):
    data = write_hand_made_dataset(tmp_path / "hand")
    info = json.loads((data / "dataset.json").read_text())
    (data / "dataset.json").write_text(json.dumps({**info, "semi_synthetic": True}))
    assert main(["--model", str(model_dir), "--data", str(data), "--samples", "1", "--steps", "1",
                 "--out", str(tmp_path / "out")]) == 0
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["data"]["semi_synthetic"] is True
    assert "(SEMI-SYNTHETIC (real LIDC outlines, painted nodules) data, 2 raters)" in \
        (tmp_path / "out" / "metrics.md").read_text()


def test_baselines_on_a_hand_made_case(tmp_path, model_dir):
    data = write_hand_made_dataset(tmp_path / "hand")
    assert main(["--model", str(model_dir), "--data", str(data), "--samples", "1", "--steps", "1", "--baselines",
                 "--out", str(tmp_path / "out")]) == 0
    rows = {row["predictor"]: row for row in json.loads((tmp_path / "out" / "metrics.json").read_text())["baselines"]}
    # test case: raters [S1, empty], majority (at least half) = S1
    expected = {
        "empty mask": {"dice_vs_raters": 0.5, "iou_vs_raters": 0.5, "dice_vs_majority": 0.0, "iou_vs_majority": 0.0,
                       "ged": 2 * 0.5 - 0 - 1},
        "train mean mask": {"dice_vs_raters": 0.5, "iou_vs_raters": 0.5, "dice_vs_majority": 1.0,  # = S1
                            "iou_vs_majority": 1.0, "ged": 2 * 0.5 - 0 - 1},
        "intensity threshold": {"dice_vs_raters": 4 / 9, "iou_vs_raters": 0.4, "dice_vs_majority": 8 / 9,  # S1+S4
                                "iou_vs_majority": 0.8, "ged": 2 * (0.2 + 1) / 2 - 0 - 1},
    }
    assert set(rows) == set(expected)
    for name, values in expected.items():
        assert rows[name]["diversity"] == 0.0 and rows[name]["auroc_variance_vs_disagreement"] == 0.5
        assert rows[name]["slices_per_s"] is None
        for key, value in values.items():
            assert rows[name][key] == pytest.approx(value, abs=1e-12), (name, key)
    fitted = rows["intensity threshold"]
    assert fitted["polarity"] == "above" and -0.4 <= fitted["threshold"] < 0.6
    assert fitted["train_dice"] == pytest.approx((1 + (1 + 128 / 144) / 2) / 2)  # case 2: S1+S2 vs rater S1
    assert "intensity threshold" in (tmp_path / "out" / "metrics.md").read_text()


def test_external_test_set_takes_its_baselines_from_another_train_split(tmp_path, model_dir):
    data = write_hand_made_dataset(tmp_path / "hand")
    external = tmp_path / "external"
    external.mkdir()
    shutil.copy(data / "dataset.json", external)
    shutil.copytree(data / "test", external / "test")
    common = ["--model", str(model_dir), "--samples", "1", "--steps", "1", "--baselines"]
    result = run_cli(*common, "--data", str(external), "--out", str(tmp_path / "none"), cwd=tmp_path)
    assert result.returncode == 2 and "--baselines-from" in result.stderr and result.stderr.count("\n") == 1
    assert main([*common, "--data", str(data), "--out", str(tmp_path / "own")]) == 0
    external_info = json.loads((external / "dataset.json").read_text())
    (external / "dataset.json").write_text(json.dumps({**external_info, "external_test": True}))
    # --baselines-from alone asks for the baselines too
    assert main([*common[:-1], "--data", str(external), "--baselines-from", str(data),
                 "--out", str(tmp_path / "ext")]) == 0
    own, ext = (json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("own", "ext"))
    assert ext["baselines"] == own["baselines"] and ext["baselines_fitted_on"] == str(data)
    text = (tmp_path / "ext" / "metrics.md").read_text()
    assert f"train split of {data}" in text and "an external test set" in text
    # Baselines fitted on crops of another size cannot be scored: one line, before the model loads.
    other = tmp_path / "other"
    (other / "train").mkdir(parents=True)
    (other / "dataset.json").write_text(json.dumps({**external_info, "image_size": 48}))
    np.savez(other / "train" / "0.npz", image=np.zeros((1, 48, 48), np.float32),
             masks=np.zeros((2, 48, 48), np.uint8), patient=np.str_("o"))
    result = run_cli(*common, "--data", str(external), "--baselines-from", str(other), "--out",
                     str(tmp_path / "size"), cwd=tmp_path)
    assert result.returncode == 2 and "48 px" in result.stderr and result.stderr.count("\n") == 1


def test_mean_mask_and_threshold_fits():
    masks = [np.stack([square_mask(S1), square_mask(S1)]).astype(bool),
             np.stack([square_mask(S1, S2), square_mask(S1)]).astype(bool)]
    np.testing.assert_array_equal(mean_mask_baseline(masks), square_mask(S1) > 0)  # S2: mean 0.25
    dark = -np.stack([image_with(S1), image_with(S1, S2)])
    fitted = fit_intensity_threshold(dark, masks)
    assert fitted["polarity"] == "below"
    np.testing.assert_array_equal(threshold_masks(dark, fitted["threshold"], fitted["polarity"]),
                                  [square_mask(S1) > 0, square_mask(S1, S2) > 0])


def test_threshold_fit_equals_a_brute_force_search():
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, size=(3, 12, 12)).astype(np.float32)
    masks = [rng.random((2, 12, 12)) < p for p in (0.2, 0.5, 0.0)]
    grid = np.linspace(-1, 1, 21)
    scores = {(polarity, t): np.mean([np.mean([dice(image > t if polarity == "above" else image < t, m)
                                               for m in rater]) for image, rater in zip(images, masks)])
              for polarity in ("above", "below") for t in grid}
    fitted = fit_intensity_threshold(images, masks, grid)
    nearest = grid[np.argmin(np.abs(grid - fitted["threshold"]))]
    assert nearest == pytest.approx(fitted["threshold"], abs=1e-12)
    assert fitted["train_dice"] == pytest.approx(max(scores.values()))
    assert scores[(fitted["polarity"], nearest)] == pytest.approx(fitted["train_dice"])


def test_bad_data_folder_gives_a_one_line_error(tmp_path, model_dir):
    result = run_cli("--model", str(model_dir), "--data", str(tmp_path / "missing"), cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("sdseg evaluate: error: ") and result.stderr.count("\n") == 1
    assert str(tmp_path / "missing") in result.stderr and "Traceback" not in result.stderr


def one_case_data(folder: Path) -> Path:
    """A data set of one blank test crop."""
    folder.mkdir()
    (folder / "dataset.json").write_text(json.dumps({
        "name": "t", "source": "t", "licence": "t", "image_size": 32, "n_raters": 1, "synthetic": True,
        "preprocessing": {"normalization": "percentile", "percentiles": [0.5, 99.5]}, "description": "t"}))
    (folder / "test").mkdir()
    np.savez(folder / "test" / "0.npz", image=np.zeros((1, 32, 32), np.float32),
             masks=np.zeros((1, 32, 32), np.uint8), patient=np.str_("p"))
    return folder


@pytest.mark.parametrize("arguments, message", [
    (["--model", "no-such-model"], "no model named"),
    (["--baselines"], "'train' split"),
    (["--samples", "0,4"], "at least 1"),
    (["--steps", "x"], "integer"),
])
def test_bad_arguments_give_a_clear_message(arguments, message, tmp_path, model_dir, capsys):
    data = one_case_data(tmp_path / "data")
    base = {"--model": str(model_dir), "--data": str(data), "--out": str(tmp_path / "out"), "--steps": "1",
            "--samples": "1"}
    for key in arguments[::2]:
        base.pop(key, None)
    argv = [item for pair in base.items() for item in pair] + arguments
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    assert code == 2
    error = capsys.readouterr().err
    assert message in error and "Traceback" not in error


def test_an_evaluation_in_out_is_kept_unless_overwrite_and_an_unwritable_out_fails_first(tmp_path, model_dir,
                                                                                          capsys):
    out = tmp_path / "out"
    run = ["--model", str(model_dir), "--data", str(one_case_data(tmp_path / "data")), "--steps", "1", "--samples",
           "1", "--out", str(out)]
    assert main(run) == 0
    first = (out / "metrics.json").read_bytes()
    capsys.readouterr()
    assert main(run + ["--seed", "1"]) == 2
    assert "already holds an evaluation; choose another --out or add --overwrite" in capsys.readouterr().err
    assert (out / "metrics.json").read_bytes() == first
    assert main(run + ["--seed", "1", "--overwrite"]) == 0
    assert json.loads((out / "metrics.json").read_text())["settings"]["seed"] == 1
    capsys.readouterr()
    (tmp_path / "file").write_text("x")
    assert main(run[:-1] + [str(tmp_path / "file" / "out")]) == 2
    output = capsys.readouterr()
    assert "choose a writable --out" in output.err and output.out == ""  # refused before any sampling


def test_lesion_free_cases_give_the_false_positive_figures():
    """Three cases: a lesion found exactly, a lesion-free case answered empty, a lesion-free case with the same 5
    false pixels in every sample."""
    lesion = np.zeros((2, 8, 8), dtype=bool)
    lesion[:, 2:5, 2:5] = True
    empty = np.zeros((2, 8, 8), dtype=bool)
    false = np.zeros((4, 8, 8), dtype=bool)
    false[:, 0, :5] = True
    metrics = prediction_metrics([np.repeat(lesion[:1], 4, 0), np.zeros((4, 8, 8), bool), false],
                                 [lesion, empty, empty])
    assert metrics["lesion_cases"] == 1 and metrics["lesion_free_cases"] == 2
    assert metrics["dice_lesion_cases"] == 1.0
    assert metrics["false_positive_rate"] == 0.5 and metrics["false_positive_pixels"] == 2.5
    only_lesions = prediction_metrics([np.repeat(lesion[:1], 4, 0)], [lesion])
    assert only_lesions["false_positive_rate"] is None and only_lesions["false_positive_pixels"] is None


def test_a_prompted_model_is_evaluated_with_the_users_click(data, tmp_path, monkeypatch):
    """A model with prompt channels gets, per case, the click at the most interior point of the raters' majority
    (lesion-free cases: the centre); --prompt none gives none."""
    torch.manual_seed(0)
    model = build_model("ambiguous", "tiny", image_channels=3)
    model.config["prompt_channels"] = ["point", "box"]
    folder = save_model(model, tmp_path / "prompted")
    seen = []
    from sdseg import inference

    original = inference.crop_prompt_maps

    def recording(prompts, *args, **kwargs):
        seen.extend(prompts)
        return original(prompts, *args, **kwargs)

    monkeypatch.setattr(inference, "crop_prompt_maps", recording)
    assert main(["--model", str(folder), "--data", str(data), "--samples", "1", "--steps", "1", "--max-cases", "3",
                 "--out", str(tmp_path / "out")]) == 0
    test = CropsDataset(data, "test")
    expected = [object_click(test[i][1].numpy() > 0) for i in range(3)]
    assert seen[-3:] == expected and all(prompt is not None for prompt in expected)
    report = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert report["settings"]["prompt"].startswith("click") and "Prompts: click" in (tmp_path / "out" /
                                                                                     "metrics.md").read_text()
    seen.clear()
    assert main(["--model", str(folder), "--data", str(data), "--samples", "1", "--steps", "1", "--max-cases", "3",
                 "--prompt", "none", "--out", str(tmp_path / "none")]) == 0
    assert seen and all(prompt is None for prompt in seen)


def test_previous_neighbour_gives_a_coherent_model_the_neighbour_the_lesion_comes_from(tmp_path):
    """--previous neighbour: each case's samples get the neighbouring slice's raters' union with more foreground
    (unknown where neither neighbour shows anything or the file has none); the report says so."""
    from sdseg.evaluation import draw_samples, read_split

    data = write_hand_made_dataset(tmp_path / "hand")
    files = sorted((data / "test").glob("*.npz"))
    item = dict(np.load(files[0]))
    small, large = square_mask(S1), square_mask(S1, S2)
    item["neighbours"] = np.stack([large, small]).astype(np.uint8)
    np.savez(files[0], **item)
    previous = read_split(data, "test").previous
    assert len(previous) == 1 and np.array_equal(previous[0], large > 0)
    item["neighbours"] = np.zeros_like(item["neighbours"])
    np.savez(files[0], **item)
    assert read_split(data, "test").previous == [None]

    torch.manual_seed(0)
    model = build_model("ambiguous", "tiny", image_channels=4, prompt_channels=["point", "box", "previous"]).eval()
    seen = []
    sample = model.sample

    def recording_sample(image, *args, **kwargs):
        seen.append(image[:, 3].clone())
        return sample(image, *args, **kwargs)

    model.sample = recording_sample
    images = np.zeros((1, 32, 32), np.float32)
    draw_samples(model, images, 2, 1, 0, 8, previous=[large > 0])
    assert torch.equal(seen[-1], torch.from_numpy(np.where(large > 0, 1.0, -1.0)).float()[None].repeat(2, 1, 1))
    draw_samples(model, images, 2, 1, 0, 8, previous=[None])
    assert not seen[-1].any()
    folder = save_model(build_model("ambiguous", "tiny", image_channels=4,
                                    prompt_channels=["point", "box", "previous"]), tmp_path / "coherent")
    assert main(["--model", str(folder), "--data", str(data), "--samples", "1", "--steps", "1", "--previous",
                 "neighbour", "--out", str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert report["settings"]["previous"].startswith("the neighbouring slice's raters' union")


def test_spread_takes_cases_evenly_over_the_whole_split(tmp_path):
    """--spread: a large split's subset reaches its last patients, which the first N cases never do."""
    from sdseg.evaluation import case_indices, read_split

    folder = tmp_path / "many"
    (folder / "test").mkdir(parents=True)
    for index in range(10):  # case i: a square of side i + 1, so each case read back is recognisable
        masks = [square_mask((slice(0, index + 1), slice(0, index + 1)))]
        np.savez(folder / "test" / f"{index:02d}.npz", image=image_with()[None], masks=np.stack(masks),
                 patient=np.str_(f"p{index}"))
    (folder / "dataset.json").write_text(json.dumps({"name": "many", "source": "test", "licence": "CC0-1.0",
                                                     "image_size": 32, "n_raters": 1, "synthetic": True, "description": "squares",
                                                     "preprocessing": {"normalization": "percentile",
                                                                       "percentiles": [0.5, 99.5]}}))
    assert case_indices(10, 4, spread=False) == [0, 1, 2, 3]
    assert case_indices(10, 4, spread=True) == [0, 3, 6, 9]
    assert case_indices(10, None, spread=True) == list(range(10))
    sides = [int(masks[0].sum() ** 0.5) for masks in read_split(folder, "test", 4, spread=True).rater_masks]
    assert sides == [1, 4, 7, 10]


def test_the_click_is_the_largest_slices_centre_and_on_the_lesion_when_that_centre_is_not():
    """A disc: the centre of mass of its largest slice. A U (the sarcoma STS_013's shape) whose centre of mass lies
    in its opening: a voxel of the U, at its thickest."""
    k, j, i = np.mgrid[:5, :40, :40]
    disc = np.hypot(j - 20.0, i - 14.0) <= np.array([0, 5, 8, 5, 0])[:, None, None]  # slice 2 the largest
    assert prompt_point(disc) == (14.0, 20.0, 2.0)
    u_shape = np.zeros((3, 40, 40), bool)
    u_shape[1, 5:35, 5:12] = u_shape[1, 5:35, 28:35] = u_shape[1, 28:35, 5:35] = True
    i_click, j_click, k_click = prompt_point(u_shape)
    rows, columns = np.nonzero(u_shape[1])
    assert not u_shape[1, round(rows.mean()), round(columns.mean())]  # the centre of mass is off the U
    assert k_click == 1.0 and u_shape[1, round(j_click), round(i_click)]
    assert min(j_click - 5, 34 - j_click, i_click - 5, 34 - i_click) >= 3  # not at its edge: 3 voxels inside
