"""The deterministic U-Net baseline (kind "unet", sdseg.models.unet): its loss and identical samples, the raters'
majority / union targets of the training batches, a real `python -m sdseg.cli train` run of the tiny preset on
synthetic multi-rater data, `sdseg evaluate` of the result (one forward pass per case whatever N), and the model in
a real worker subprocess (whole volume and a click), equal to the in-process inference."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from test_worker import WorkerProcess, segment

from sdseg import inference, propagation
from sdseg.checkpoint import load_model
from sdseg.data.batches import InMemoryCrops
from sdseg.data.dataset import CropsDataset
from sdseg.data.synthetic import make_shapes_dataset
from sdseg.evaluation import draw_samples
from sdseg.masks import rater_target
from sdseg.models import build_model
from sdseg.training import main as train_main
from sdseg.volume_io import read_volume

REPO = Path(__file__).resolve().parents[1]
STEPS = 60


def run_cli(*arguments, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sdseg.cli", *map(str, arguments)], capture_output=True, text=True,
                          cwd=cwd, timeout=600, env=dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1"))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_shapes_dataset(tmp_path_factory.mktemp("unet") / "shapes", 48, 4, 12, image_size=32, n_raters=4,
                               seed=0)


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory) -> Path:
    """The tiny unet trained by the real CLI (default target: the raters' majority)."""
    out = tmp_path_factory.mktemp("trained") / "tiny-unet"
    result = run_cli("train", "--model", "unet", "--preset", "tiny", "--data", data, "--out", out, "--steps", STEPS,
                     "--batch-size", 8, "--lr", "3e-3", "--sample-every", STEPS // 2, "--device", "cpu",
                     cwd=out.parent)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"model written to {out}" in result.stdout
    return out


def test_samples_of_a_deterministic_prediction_are_one_mask_repeated():
    torch.manual_seed(0)
    model = build_model("unet", "tiny").eval()
    images = torch.rand(3, 1, 32, 32) * 2 - 1
    samples = model.sample(images, 5, generator=torch.Generator().manual_seed(1))
    assert samples.shape == (3, 5, 32, 32) and model.deterministic
    expected = torch.sigmoid(model.logits(images))[:, 0]
    for n in range(5):
        torch.testing.assert_close(samples[:, n], expected, rtol=0, atol=0)
    other_seed = model.sample(images, 5, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(other_seed, samples, rtol=0, atol=0)
    torch.testing.assert_close(model.sample(images[1:2], 2)[0, 1], samples[1, 0], rtol=0, atol=1e-6)  # no batch effect


def test_the_loss_is_bce_plus_the_soft_dice_loss():
    torch.manual_seed(0)
    model = build_model("unet", "tiny", dice_weight=0.5)
    images = torch.rand(2, 1, 32, 32) * 2 - 1
    mask = torch.zeros(2, 1, 32, 32)
    mask[0, 0, 8:20, 10:22] = 1.0  # the second image's target is empty
    loss, logs = model.training_loss(images, mask)
    p = torch.sigmoid(model.logits(images)).detach().double().numpy()
    y = mask.double().numpy()
    bce = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
    dice = np.mean([(2 * (p[b] * y[b]).sum() + 1) / (p[b].sum() + y[b].sum() + 1) for b in range(2)])
    assert loss.item() == pytest.approx(bce + 0.5 * (1 - dice), rel=1e-5)
    assert logs["bce"] == pytest.approx(bce, rel=1e-5) and logs["dice"] == pytest.approx(dice, rel=1e-5)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_rater_targets_count_every_rater_of_an_image_and_ignore_the_padding():
    raters = torch.zeros(2, 4, 1, 5, dtype=torch.bool)
    raters[0, 0, 0, :4] = True  # image 0: 4 raters, pixels marked by 4, 3, 2, 1, 0 of them
    raters[0, 1, 0, :3] = True
    raters[0, 2, 0, :2] = True
    raters[0, 3, 0, :1] = True
    raters[1, 0, 0, :2] = True  # image 1: 3 real raters (the fourth is padding), pixels marked by 2, 1, 0 of them
    raters[1, 1, 0, :1] = True
    counts = torch.tensor([4, 3])
    majority = rater_target(raters, counts, "majority", torch.zeros(2, dtype=torch.long))
    assert majority[:, 0].tolist() == [[True, True, True, False, False], [True, False, False, False, False]]
    union = rater_target(raters, counts, "union", torch.zeros(2, dtype=torch.long))
    assert union[:, 0].tolist() == [[True] * 4 + [False], [True, True, False, False, False]]
    chosen = rater_target(raters, counts, "random", torch.tensor([3, 1]))
    assert torch.equal(chosen, torch.stack([raters[0, 3], raters[1, 1]]))
    with pytest.raises(ValueError, match="majority, union"):
        rater_target(raters, counts, "mean", torch.zeros(2, dtype=torch.long))


@pytest.mark.parametrize("target", ["majority", "union"])
def test_training_batches_give_the_raters_majority_or_union(data, target):
    dataset = CropsDataset(data, "train")
    crops = InMemoryCrops(dataset, torch.device("cpu"))
    indices = list(range(len(dataset)))
    _, masks = crops.batch(indices, torch.Generator().manual_seed(0), augmentations=(), target=target)
    for index in indices:
        raters = dataset.read(index)["masks"] > 0
        expected = inference.consensus_mask(raters) if target == "majority" else raters.any(0)
        np.testing.assert_array_equal(masks[index, 0].numpy() > 0, expected, err_msg=str(index))
    assert masks.sum() > 0


def test_cli_trains_the_tiny_unet_on_the_majority_and_it_has_the_ambiguous_networks_size(trained, data):
    log = [json.loads(line) for line in (trained / "train_log.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in log] == list(range(1, STEPS + 1))
    assert {"loss", "bce", "dice"} <= log[0].keys()
    losses = [entry["loss"] for entry in log]
    assert np.median(losses[-10:]) < 0.7 * np.median(losses[:5]), "training should lower the loss"
    assert (trained / "samples" / f"step_{STEPS:06d}.png").stat().st_size > 1000
    assert "the raters' majority mask per image" in (trained / "README.md").read_text()

    model = load_model(trained)
    assert model.kind == "unet" and model.config["target"] == "majority"
    assert model.config["prompt_channels"] == ["point", "box"] and model.config["image_channels"] == 3
    ambiguous = build_model("ambiguous", "tiny", image_channels=3)
    first_channels = model.config["block_out_channels"][0]
    # The same network; only the ambiguous model's noisy-mask input channel (a 3 x 3 kernel per first channel) is gone.
    assert model.num_parameters() == ambiguous.num_parameters() - 9 * first_channels


def test_target_union_is_a_recorded_setting_and_the_diffusion_kinds_refuse_it(data, tmp_path, capsys):
    common = ["--preset", "tiny", "--data", str(data), "--steps", "2", "--batch-size", "2", "--sample-every", "0",
              "--device", "cpu"]
    assert train_main(["--model", "unet", "--target", "union", "--out", str(tmp_path / "union"), "--stop-after", "1",
                       *common]) == 0
    assert train_main(["--out", str(tmp_path / "union"), "--resume"]) == 0  # the target comes back with the run
    assert load_model(tmp_path / "union").config["target"] == "union"
    assert "the raters' union mask per image" in (tmp_path / "union" / "README.md").read_text()
    capsys.readouterr()
    assert train_main(["--model", "ambiguous", "--target", "union", "--out", str(tmp_path / "amb"), *common]) == 2
    error = capsys.readouterr().err
    assert error.startswith("sdseg train: error: --target is for --model unet") and error.count("\n") == 1


def test_evaluate_scores_it_as_a_deterministic_predictor_above_the_baselines(trained, data, tmp_path):
    out = tmp_path / "evaluation"
    result = run_cli("evaluate", "--model", trained, "--data", data, "--out", out, "--samples", "1,4",
                     "--baselines", "--device", "cpu", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "metrics.json").read_text())
    assert report["model"]["kind"] == "unet" and report["model"]["deterministic"]
    rows = {(row["samples"], row["postprocessing"]): row for row in report["results"]}
    one, four = rows[(1, "none")], rows[(4, "none")]
    for key in ("dice_vs_raters", "dice_vs_majority", "ged", "iou_vs_majority"):
        assert four[key] == pytest.approx(one[key]), key  # N copies of one mask: the same scores
    assert four["diversity"] == 0.0 and four["auroc_variance_vs_disagreement"] == 0.5
    best_baseline = max(row["dice_vs_majority"] for row in report["baselines"])
    assert one["dice_vs_majority"] > best_baseline + 0.1
    assert "deterministic: its N samples are one mask repeated" in (out / "metrics.md").read_text()


def test_evaluation_runs_each_case_once_whatever_the_sample_count_in_full_batches(trained, data):
    """N = 16 samples with 16 images per pass: one pass of all 5 cases (not 5 passes of one case's 16 samples)."""
    model = load_model(trained)
    images = np.stack([CropsDataset(data, "test").read(i)["image"][0] for i in range(5)])
    batches = []
    model.unet.register_forward_pre_hook(lambda module, args: batches.append(args[0].shape[0]))
    drawn = draw_samples(model, images, 16, None, 0, batch_size=16)
    assert drawn.shape == (5, 16, 32, 32) and batches == [5]
    assert (drawn == drawn[:, :1]).all()
    np.testing.assert_array_equal(drawn[:, 0], draw_samples(model, images, 1, None, 0, batch_size=1)[:, 0])


@pytest.fixture(scope="module")
def worker(trained, tmp_path_factory):
    models = tmp_path_factory.mktemp("models")
    shutil.copytree(trained, models / "tiny-unet")
    process = WorkerProcess(models, tmp_path_factory.mktemp("worker") / "worker.log")
    assert process.next()["type"] == "hello"
    yield process
    process.close()


@pytest.fixture(scope="module")
def blob_volume(tmp_path_factory) -> Path:
    """40 x 40 x 6 voxels, axial K slices: a bright ellipsoid on slices 1..4 around (i 18, j 20)."""
    k, j, i = np.mgrid[0:6, 0:40, 0:40]
    blob = ((i - 18) / 7.0) ** 2 + ((j - 20) / 5.0) ** 2 + ((k - 2.5) / 2.2) ** 2 < 1.0
    array = (np.random.default_rng(2).normal(20.0, 3.0, k.shape) + 100.0 * blob).astype(np.float32)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.8, 0.8, 2.5))
    path = tmp_path_factory.mktemp("volume") / "blob.nrrd"
    sitk.WriteImage(image, str(path))
    return path


def check_identical_samples(arrays) -> None:
    samples = arrays["samples"]
    for n in range(samples.shape[0]):
        np.testing.assert_array_equal(samples[n], arrays["consensus"])
    assert not arrays["variance"].any()


def test_the_worker_segments_a_volume_as_the_in_process_inference(worker, trained, blob_volume, tmp_path):
    roi = [4, 6, 0, 36, 34, 6]
    worker.send(segment("whole", blob_volume, tmp_path / "whole", model="tiny-unet", samples=3, seed=1,
                        device="cpu", roi_ijk=roi))
    messages = worker.until({"done", "error"})
    assert messages[-1]["type"] == "done", messages[-1]
    assert messages[0]["steps"] is None and messages[0]["total"] == 6
    slices = [m for m in messages if m["type"] == "slice"]
    assert [m["done"] for m in slices] == list(range(1, 7)) and messages[-1]["slices"] == 6
    torch.set_num_threads(1)
    volume = read_volume(blob_volume)
    expected = list(inference.segment_slices(load_model(trained), volume.array_kji, roi, 2, 3, seed=1))
    for message, reference in zip(slices, expected, strict=True):
        with np.load(message["file"]) as arrays:
            check_identical_samples(arrays)
            np.testing.assert_array_equal(arrays["samples"], reference.samples)


def test_a_click_is_propagated_by_the_worker_as_in_process(worker, trained, blob_volume, tmp_path):
    point = [18.0, 20.0, 2.0]
    worker.send(segment("click", blob_volume, tmp_path / "click", model="tiny-unet", samples=4, seed=3,
                        device="cpu", prompt={"lesions": [{"point_ijk": point}], "stop_after_empty": 1}))
    messages = worker.until({"done", "error"})
    assert messages[-1]["type"] == "done", messages[-1]
    slices = [m for m in messages if m["type"] == "slice"]
    torch.set_num_threads(1)
    volume = read_volume(blob_volume)
    expected = list(propagation.propagate(load_model(trained), volume.array_kji, volume.ijk_to_ras, 2,
                                          [propagation.Prompt(point_ijk=tuple(point))], [0, 0, 0, 40, 40, 6], 4,
                                          seed=3, stop_after_empty=1))
    assert [(m["index"], m["box_ijk"]) for m in slices] == [(r.index, r.box_ijk) for r in expected]
    for message, reference in zip(slices, expected):
        with np.load(message["file"]) as arrays:
            check_identical_samples(arrays)
            np.testing.assert_array_equal(arrays["samples"], reference.samples)
