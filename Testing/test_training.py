"""`sdseg train` (sdseg.training) with the real tiny models on synthetic multi-rater data: the schedule and EMA
formulas, a real `python -m sdseg.cli train` subprocess whose model reloads and beats trivial predictors, exact
resume (also across SDSeg's stage boundary), seeding, and clear errors."""

from __future__ import annotations

import json
import shutil
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.image import imread
from safetensors.torch import load_file

from sdseg.checkpoint import load_model
from sdseg.data.dataset import CropsDataset
from sdseg.inference import sample_crops
from sdseg.prompt_maps import CropPrompt, crop_prompt_maps, object_click, prompt_channels_of
from sdseg.data.synthetic import make_shapes_dataset
from sdseg.ema import WeightEMA, ema_decay
from sdseg.metrics import dice
from sdseg.training import (BatchOrder, Training, TrainingError, learning_rate, main, parse_stage_steps, stage_plan,
                            training_data_record)

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread: the tests share a small CPU with other work, where more threads only contend."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_shapes_dataset(tmp_path_factory.mktemp("train") / "shapes", 48, 4, 16, image_size=32, n_raters=4,
                               seed=0)


def test_learning_rate_warms_up_linearly_then_decays_as_a_cosine():
    peak, warmup, total = 1e-3, 10, 110
    assert learning_rate(0, total, warmup, peak) == pytest.approx(peak / 10)
    assert learning_rate(4, total, warmup, peak) == pytest.approx(peak / 2)
    assert learning_rate(9, total, warmup, peak) == pytest.approx(peak)
    assert learning_rate(10, total, warmup, peak) == pytest.approx(peak)
    assert learning_rate(60, total, warmup, peak) == pytest.approx(peak / 2)
    assert learning_rate(35, total, warmup, peak) == pytest.approx(peak * (1 + math.cos(math.pi / 4)) / 2)
    assert learning_rate(109, total, warmup, peak) == pytest.approx(peak * (1 + math.cos(math.pi * 0.99)) / 2)
    assert learning_rate(0, 100, 0, peak) == pytest.approx(peak)


def test_ema_decay_warms_up_and_the_ema_averages_weights():
    assert ema_decay(0.999, 0) == pytest.approx(0.1)
    assert ema_decay(0.999, 90) == pytest.approx(0.91)
    assert ema_decay(0.999, 10 ** 6) == 0.999
    module = torch.nn.Linear(3, 1)
    start = module.weight.detach().clone()
    ema = WeightEMA(module, 0.999)
    with torch.no_grad():
        module.weight.add_(1.0)
    ema.update(module, ["weight"])
    torch.testing.assert_close(ema.shadow["weight"], 0.1 * start + 0.9 * (start + 1.0))
    torch.testing.assert_close(ema.shadow["bias"], module.bias.detach())
    with ema.applied(module):
        torch.testing.assert_close(module.weight.detach(), ema.shadow["weight"])
    torch.testing.assert_close(module.weight.detach(), start + 1.0)


def test_batch_order_visits_every_item_once_per_epoch():
    order = BatchOrder(10, 4, seed=3)
    positions = [i for step in range(5) for i in order.indices(step)]
    assert sorted(positions[:10]) == list(range(10)) and sorted(positions[10:]) == list(range(10))
    assert positions[:10] != positions[10:20]
    assert BatchOrder(10, 4, seed=3).indices(3) == order.indices(3)
    assert BatchOrder(10, 4, seed=4).indices(0) != order.indices(0)


def test_stage_plan_splits_steps_or_follows_stage_steps():
    assert stage_plan(["main"], 7, None) == [("main", 7)]
    assert stage_plan(["autoencoder", "diffusion"], 7, None) == [("autoencoder", 3), ("diffusion", 4)]
    steps = parse_stage_steps("autoencoder=2, diffusion=5")
    assert stage_plan(["autoencoder", "diffusion"], 0, steps) == [("autoencoder", 2), ("diffusion", 5)]
    with pytest.raises(TrainingError, match="autoencoder=N,diffusion=N"):
        stage_plan(["autoencoder", "diffusion"], 0, {"autoencoder": 2})
    with pytest.raises(TrainingError, match="STAGE=STEPS"):
        parse_stage_steps("autoencoder:2")


def trivial_dice(data: Path, references) -> float:
    """Best mean Dice of a predictor that ignores the image: empty mask, full mask, or the mean training mask at
    any threshold (the threshold chosen on the test references themselves, to favour the baseline)."""
    train = CropsDataset(data, "train")
    mean_mask = torch.stack([train[i][1].mean(0) for i in range(len(train))]).mean(0)
    candidates = [torch.zeros_like(mean_mask), torch.ones_like(mean_mask)]
    candidates += [mean_mask > t for t in np.linspace(0.02, 0.5, 25)]
    return max(float(np.mean([dice(c, r) for r in references])) for c in candidates)


def test_cli_trains_the_tiny_ambiguous_model_which_reloads_and_beats_trivial_predictors(data, tmp_path):
    out = tmp_path / "ambiguous"
    command = [sys.executable, "-m", "sdseg.cli", "train", "--model", "ambiguous", "--preset", "tiny", "--data",
               str(data), "--out", str(out), "--steps", "80", "--batch-size", "8", "--lr", "3e-3",
               "--sample-every", "40"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=300,
                            env=dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"model written to {out}" in result.stdout

    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in log] == list(range(1, 81))
    losses = [entry["loss"] for entry in log]
    assert np.median(losses[-20:]) < 0.5 * np.median(losses[:5]), "training should lower the loss"

    for step in (40, 80):
        picture = imread(out / "samples" / f"step_{step:06d}.png")
        assert picture.ndim == 3 and picture.shape[0] > 100 and picture.std() > 0.05
    card = (out / "README.md").read_text()
    for expected in ("synthetic-shapes", "--steps 80", "main 80", "EMA", "hardware", "training time"):
        assert expected in card

    model = load_model(out)
    info = json.loads((data / "dataset.json").read_text())
    assert model.kind == "ambiguous" and model.config["image_size"] == 32
    assert model.config["preprocessing"] == info["preprocessing"]
    assert model.config["training_data"] == [{"data_set": "synthetic-shapes", "splits": None}]  # no patients: no split
    assert "crop" not in model.config  # whole synthetic images, no crop recipe: inference uses its default
    assert model.config["prompt_channels"] == ["point", "box"] and model.config["image_channels"] == 3
    test = CropsDataset(data, "test")
    clicks = [object_click(test[i][1].numpy() > 0) for i in range(len(test))]  # where a user would click
    images = torch.cat([torch.stack([test[i][0] for i in range(len(test))]),
                        crop_prompt_maps(clicks, [(32, 32)] * len(test), 32, ("point", "box"), "cpu")], dim=1)
    references = [test[i][1].mean(0) > 0.5 for i in range(len(test))]  # majority of the raters
    samples = model.sample(images, 3, generator=torch.Generator().manual_seed(0))
    model_dice = float(np.mean([dice(s.mean(0) > 0.5, r) for s, r in zip(samples, references)]))
    assert model_dice > trivial_dice(data, references) + 0.1


SDSEG_RUN = ["--model", "sdseg", "--preset", "tiny", "--stage-steps", "autoencoder=3,diffusion=3", "--batch-size",
             "4", "--lr", "2e-3", "--ema", "0.9", "--sample-every", "0", "--device", "cpu"]


@pytest.fixture(scope="module")
def uninterrupted_sdseg_run(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "uninterrupted"
    assert main(SDSEG_RUN + ["--data", str(data), "--out", str(out)]) == 0
    return out


def _log_without_times(out: Path) -> list[dict]:
    entries = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    return [{k: v for k, v in entry.items() if k != "elapsed_s"} for entry in entries]


def test_resumed_runs_end_with_the_weights_of_an_uninterrupted_run(data, tmp_path, uninterrupted_sdseg_run):
    out = tmp_path / "interrupted"
    assert main(SDSEG_RUN + ["--data", str(data), "--out", str(out), "--stop-after", "2"]) == 0  # mid autoencoder
    assert not (out / "model.safetensors").exists()
    assert json.loads((out / "training_state" / "state.json").read_text())["step"] == 2
    assert main(["--out", str(out), "--resume", "--stop-after", "3"]) == 0  # at the stage boundary
    assert main(["--out", str(out), "--resume", "--stop-after", "5"]) == 0  # mid diffusion
    assert main(["--out", str(out), "--resume"]) == 0

    expected, actual = load_file(uninterrupted_sdseg_run / "model.safetensors"), load_file(out / "model.safetensors")
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name
    first, second = load_model(uninterrupted_sdseg_run), load_model(out)
    assert first.config["latent_scale_factor"] == second.config["latent_scale_factor"] is not None
    assert _log_without_times(out) == _log_without_times(uninterrupted_sdseg_run)
    assert "resumed at steps 2, 3, 5" in (out / "README.md").read_text()


def test_ctrl_c_saves_the_state_after_the_current_step_and_resume_completes_the_run(
        data, tmp_path, monkeypatch, uninterrupted_sdseg_run, capsys):
    out = tmp_path / "ctrl-c"
    train_step = Training._train_step

    def step_then_ctrl_c(self, *args):
        entry = train_step(self, *args)
        if entry["step"] == 4:
            signal.raise_signal(signal.SIGINT)  # as if the user pressed Ctrl-C during step 4
        return entry

    monkeypatch.setattr(Training, "_train_step", step_then_ctrl_c)
    assert main(SDSEG_RUN + ["--data", str(data), "--out", str(out)]) == 0
    assert "stopped after step 4" in capsys.readouterr().out
    assert json.loads((out / "training_state" / "state.json").read_text())["step"] == 4
    assert not (out / "model.safetensors").exists()
    monkeypatch.undo()
    assert main(["--out", str(out), "--resume"]) == 0
    expected, actual = load_file(uninterrupted_sdseg_run / "model.safetensors"), load_file(out / "model.safetensors")
    assert all(torch.equal(expected[name], actual[name]) for name in expected)


def test_same_seed_gives_the_same_weights_and_another_seed_other_weights(data, tmp_path, uninterrupted_sdseg_run):
    segdiff = ["--model", "segdiff", "--preset", "tiny", "--data", str(data), "--steps", "3", "--batch-size", "4",
               "--sample-every", "0", "--device", "cpu"]
    for name in ("a", "b"):
        assert main(segdiff + ["--out", str(tmp_path / name)]) == 0
    a, b = (load_file(tmp_path / name / "model.safetensors") for name in "ab")
    assert all(torch.equal(a[name], b[name]) for name in a)
    assert main(SDSEG_RUN + ["--data", str(data), "--out", str(tmp_path / "seed1"), "--seed", "1"]) == 0
    seed0, seed1 = (load_file(folder / "model.safetensors") for folder in (uninterrupted_sdseg_run, tmp_path / "seed1"))
    assert not all(torch.equal(seed0[name], seed1[name]) for name in seed0)


def test_init_fine_tunes_a_trained_model_keeping_its_configuration(data, tmp_path, uninterrupted_sdseg_run):
    """--init starts from the trained weights (kind and size from the model, the SDSeg latent scale kept when the
    autoencoder stage is skipped); a near-zero learning rate then leaves the weights where they were."""
    out = tmp_path / "fine-tuned"
    assert main(["--init", str(uninterrupted_sdseg_run), "--data", str(data), "--out", str(out), "--stage-steps",
                 "autoencoder=0,diffusion=2", "--batch-size", "4", "--lr", "1e-12", "--ema", "0",
                 "--sample-every", "0", "--device", "cpu"]) == 0
    start, tuned = load_model(uninterrupted_sdseg_run), load_model(out)
    assert tuned.kind == "sdseg" and tuned.config == start.config  # the same data set: recorded once
    start_weights, tuned_weights = start.state_dict(), tuned.state_dict()
    for name, weight in start_weights.items():
        torch.testing.assert_close(tuned_weights[name], weight, atol=1e-6, rtol=0, msg=name)
    card = (out / "README.md").read_text()
    assert f"fine-tuned from `{uninterrupted_sdseg_run}`" in card and "autoencoder 0, diffusion 2" in card

    moved = tmp_path / "moved"
    assert main(["--init", str(uninterrupted_sdseg_run), "--data", str(data), "--out", str(moved), "--stage-steps",
                 "autoencoder=0,diffusion=3", "--batch-size", "4", "--lr", "1e-2", "--ema", "0",
                 "--sample-every", "0", "--device", "cpu"]) == 0
    moved_weights = load_model(moved).state_dict()
    assert not torch.equal(moved_weights["unet.conv_in.weight"], start_weights["unet.conv_in.weight"])
    assert all(torch.equal(moved_weights[n], w) for n, w in start_weights.items() if n.startswith("mask_autoencoder"))


def test_init_with_an_added_prompt_channel_starts_from_the_same_answers_and_learns_to_use_it(
        data, tmp_path, uninterrupted_sdseg_run):
    """--init MODEL --prompt-channels point,box,previous widens a point+box model: the added channel's input weights
    start at zero, so with the previous slice unknown it draws exactly the trained model's samples; training then
    moves those weights, and the run's model takes the previous-slice mask."""
    start = load_model(uninterrupted_sdseg_run)
    assert prompt_channels_of(start.config) == ("point", "box")
    runs, with_neighbours = {}, _with_neighbours(data, tmp_path)[0]
    for name, lr in (("same", "1e-12"), ("moved", "1e-2")):
        runs[name] = tmp_path / name
        assert main(["--init", str(uninterrupted_sdseg_run), "--prompt-channels", "point,box,previous", "--data",
                     str(with_neighbours), "--out", str(runs[name]), "--stage-steps", "autoencoder=0,diffusion=3",
                     "--batch-size", "4", "--lr", lr, "--ema", "0", "--sample-every", "0", "--device", "cpu"]) == 0
    widened = load_model(runs["same"])
    assert "with the prompt channels point, box, previous (added ones start at zero)" in (
        runs["same"] / "README.md").read_text()
    assert prompt_channels_of(widened.config) == ("point", "box", "previous")
    assert widened.config["image_channels"] == start.config["image_channels"] + 1
    size = start.config["image_size"]
    crops = [np.random.default_rng(n).uniform(-1, 1, (size, size)).astype(np.float32) for n in range(2)]
    prompts = [CropPrompt(point=(size / 2, size / 2)), CropPrompt(box=(4.0, size - 4.0, 8.0, size - 8.0))]
    drawn = {name: sample_crops(model, crops, [0, 1], range(3), 2, seed=5, size=size, prompts=prompts)
             for name, model in (("start", start), ("widened", widened))}
    for before, after in zip(drawn["start"], drawn["widened"]):
        np.testing.assert_array_equal(after, before)
    first_conv = "image_encoder.encoder.conv_in.weight"
    moved = load_model(runs["moved"]).state_dict()[first_conv]
    assert widened.state_dict()[first_conv][:, -1].abs().max() < 1e-9  # started at zero, learning rate 1e-12
    assert moved[:, -1].abs().max() > 1e-4


def test_the_crop_recipe_of_the_data_goes_into_the_model(data, tmp_path):
    recorded = tmp_path / "recorded"
    shutil.copytree(data, recorded)
    info = json.loads((recorded / "dataset.json").read_text())
    (recorded / "dataset.json").write_text(json.dumps({**info, "crop": {"in_plane_voxels": 80, "lesion_margin": 1.5}}))
    assert main(["--model", "ambiguous", "--preset", "tiny", "--data", str(recorded), "--out", str(tmp_path / "m"),
                 "--steps", "1", "--batch-size", "2", "--sample-every", "0", "--device", "cpu"]) == 0
    assert load_model(tmp_path / "m").config["crop"] == {"in_plane_voxels": 80, "lesion_margin": 1.5}


def test_prompt_channels_none_trains_a_model_without_prompts(data, tmp_path):
    assert main(["--model", "ambiguous", "--preset", "tiny", "--data", str(data), "--out", str(tmp_path / "plain"),
                 "--steps", "1", "--batch-size", "2", "--sample-every", "1", "--device", "cpu",
                 "--prompt-channels", "none"]) == 0
    config = load_model(tmp_path / "plain").config
    assert config["image_channels"] == 1 and "prompt_channels" not in config
    assert main(["--model", "ambiguous", "--preset", "tiny", "--data", str(data), "--out", str(tmp_path / "point"),
                 "--steps", "1", "--batch-size", "2", "--sample-every", "1", "--device", "cpu",
                 "--prompt-channels", "point"]) == 0
    config = load_model(tmp_path / "point").config
    assert config["image_channels"] == 2 and config["prompt_channels"] == ["point"]


def test_augmentations_are_a_recorded_setting_of_the_run(data, tmp_path):
    run = ["--model", "ambiguous", "--preset", "tiny", "--data", str(data), "--steps", "2", "--batch-size", "4",
           "--sample-every", "0", "--device", "cpu"]
    assert main(run + ["--out", str(tmp_path / "flip")]) == 0
    assert main(run + ["--out", str(tmp_path / "all"), "--augment", "flip,transpose,scale,intensity"]) == 0
    assert "| augmentations | flip |" in (tmp_path / "flip" / "README.md").read_text()
    assert "| augmentations | flip, transpose, scale, intensity |" in (tmp_path / "all" / "README.md").read_text()
    flip, every = (load_file(tmp_path / name / "model.safetensors") for name in ("flip", "all"))
    assert not all(torch.equal(flip[name], every[name]) for name in flip)  # other batches, other weights


def test_init_refuses_a_data_set_of_another_image_size(tmp_path, uninterrupted_sdseg_run, capsys):
    other = make_shapes_dataset(tmp_path / "shapes64", 8, 2, 2, image_size=64, n_raters=1, seed=0)
    assert main(["--init", str(uninterrupted_sdseg_run), "--data", str(other), "--out", str(tmp_path / "out"),
                 "--steps", "2"]) == 2
    error = capsys.readouterr().err
    assert "image size 64 (the model has 32)" in error and "Traceback" not in error


def test_adopt_preprocessing_fine_tunes_a_model_on_data_normalised_another_way(data, tmp_path,
                                                                              uninterrupted_sdseg_run, capsys):
    """Without --adopt-preprocessing the data set is refused, naming the option; with it the model starts from the
    trained weights and keeps the data set's preprocessing, which the card says."""
    windowed = tmp_path / "windowed"
    shutil.copytree(data, windowed)
    info = json.loads((windowed / "dataset.json").read_text())
    window = {"normalization": "ct_window", "window": [-160.0, 240.0]}
    (windowed / "dataset.json").write_text(json.dumps({**info, "preprocessing": window}))
    fine_tune = ["--init", str(uninterrupted_sdseg_run), "--data", str(windowed), "--stage-steps",
                 "autoencoder=0,diffusion=2", "--batch-size", "4", "--lr", "1e-12", "--ema", "0", "--sample-every",
                 "0", "--device", "cpu"]
    assert main(fine_tune + ["--out", str(tmp_path / "refused")]) == 2
    error = capsys.readouterr().err
    assert f"preprocessing {window} (the model has {info['preprocessing']})" in error
    assert "or give --adopt-preprocessing" in error and "Traceback" not in error
    assert main(fine_tune + ["--out", str(tmp_path / "adopted"), "--adopt-preprocessing"]) == 0
    start, tuned = load_model(uninterrupted_sdseg_run), load_model(tmp_path / "adopted")
    assert start.config["preprocessing"] == info["preprocessing"] != window == tuned.config["preprocessing"]
    for name, weight in start.state_dict().items():
        torch.testing.assert_close(tuned.state_dict()[name], weight, atol=1e-6, rtol=0, msg=name)
    assert f"taking the data set's intensity preprocessing `{json.dumps(window)}`" in (
        tmp_path / "adopted" / "README.md").read_text()


@pytest.mark.parametrize("arguments, message", [
    (["--model", "ambiguous", "--data", "{tmp}/nothing", "--out", "{tmp}/out"], "no such data set folder"),
    (["--model", "ambiguous", "--data", "{tmp}", "--out", "{tmp}/out"], "not a crops data set"),
    (["--data", "{data}", "--out", "{tmp}/out"], "--model (or --init) and --data are required"),
    (["--init", "{tmp}/nothing", "--data", "{data}", "--out", "{tmp}/out"], "--init: no model named or found"),
    (["--init", "{run}", "--preset", "tiny", "--data", "{data}", "--out", "{tmp}/out"], "leave out --preset"),
    (["--init", "{run}", "--prompt-channels", "none", "--data", "{data}", "--out", "{tmp}/out"],
     "--prompt-channels: the model takes the prompt channels ['point', 'box']; ['point', 'box'] cannot be dropped"),
    (["--model", "ambiguous", "--data", "{data}", "--out", "{tmp}/out", "--prompt-channels", "box,point"],
     "--prompt-channels: give point,box"),
    (["--init", "{run}", "--model", "ambiguous", "--data", "{data}", "--out", "{tmp}/out"], "is a sdseg model"),
    (["--out", "{tmp}/out", "--resume"], "no saved training state"),
    (["--model", "sdseg", "--adopt-preprocessing", "--data", "{data}", "--out", "{tmp}/out"],
     "--adopt-preprocessing changes the preprocessing of an --init model: give --init"),
    (["--model", "sdseg", "--data", "{data}", "--out", "{tmp}/out", "--stage-steps", "diffusion=5"],
     "must name each stage"),
    (["--model", "ambiguous", "--data", "{data}", "--out", "{tmp}/out", "--ema", "1"], "--ema must be in"),
    (["--model", "ambiguous", "--preset", "tiny", "--data", "{data}", "--out", "{tmp}/out", "--device", "cuda:7"],
     "cuda"),
    (SDSEG_RUN + ["--data", "{data}", "--out", "{run}"], "already holds a training run"),
    (["--out", "{run}", "--resume", "--lr", "0.5"], "--lr 0.5 (the saved run has 0.002)"),
    (["--model", "ambiguous", "--data", "{data}", "--out", "{tmp}/out", "--augment", "rotate"],
     "--augment: give a subset of flip,transpose,scale,intensity or none"),
    (["--out", "{run}", "--resume", "--augment", "scale"], "--augment ['scale'] (the saved run has ['flip'])"),
    (["--model", "ambiguous", "--data", "{data}", "--out", "{tmp}/out", "--stop-after", "0"],
     "--stop-after 0: the run is at step 0; give a later step"),
    (["--out", "{run}", "--resume", "--stop-after", "3"], "--stop-after 3: the run is at step 6"),
    (["--model", "ambiguous", "--data", "{data}", "--out", "{data}/dataset.json/out"], "cannot write into --out"),
])
def test_bad_arguments_give_a_clear_message_and_exit_code_2(arguments, message, data, tmp_path, capsys,
                                                           uninterrupted_sdseg_run):
    if "cuda" in message and torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    values = {"tmp": tmp_path, "data": data, "run": uninterrupted_sdseg_run}
    assert main([a.format(**values) for a in arguments]) == 2
    error = capsys.readouterr().err
    assert error.startswith("sdseg train: error:") and message in error and "Traceback" not in error


def _with_neighbours(data: Path, tmp_path: Path) -> tuple[Path, set[int]]:
    """A copy of ``data`` whose every other training crop file has neighbouring-slice masks (the first rater's mask
    and that mask moved 3 pixels), as the 3D sources write them; the copy and those crops' indices."""
    copy = tmp_path / "shapes"
    shutil.copytree(data, copy)
    files = sorted((copy / "train").glob("*.npz"))
    with_neighbours = set(range(0, len(files), 2))
    for index in with_neighbours:
        item = dict(np.load(files[index]))
        item["neighbours"] = np.stack([item["masks"][0], np.roll(item["masks"][0], 3, axis=1)]).astype(np.uint8)
        np.savez(files[index], **item)
    return copy, with_neighbours


def test_training_batches_give_the_previous_mask_only_where_the_crop_file_has_neighbours(data, tmp_path):
    """InMemoryCrops: the "previous" channel is one of the crop's neighbouring-slice masks (+1 in, -1 out) or
    unknown (0), and always unknown for crop files without neighbours (2D sources, lesion-free crops)."""
    from sdseg.data.batches import InMemoryCrops

    copy, with_neighbours = _with_neighbours(data, tmp_path)
    files = sorted((copy / "train").glob("*.npz"))
    crops = InMemoryCrops(CropsDataset(copy, "train"), torch.device("cpu"))
    assert crops.has_neighbours.tolist() == [i in with_neighbours for i in range(len(files))]
    indices = list(range(len(files)))
    images, _ = crops.batch(indices, torch.Generator().manual_seed(0), augmentations=(),
                            prompt_channels=("point", "box", "previous"))
    previous = images[:, 3]
    assert images.shape[1] == 4 and set(previous.unique().tolist()) <= {-1.0, 0.0, 1.0}
    known = previous.flatten(1).ne(0).any(1)
    assert not known[[i for i in indices if i not in with_neighbours]].any()
    assert known[sorted(with_neighbours)].float().mean() > 0.4
    for index in torch.nonzero(known).flatten().tolist():
        options = [crops.neighbours[index, side].float() * 2 - 1 for side in (0, 1)]
        assert any(torch.equal(previous[index], option) for option in options), index


def test_a_training_crop_clicked_off_its_object_gets_an_empty_mask(data):
    """InMemoryCrops: where the prompt is a click off the object (sdseg.prompt_maps.OFF_OBJECT_CLICK_ODDS) the
    training mask is empty; elsewhere it is the drawn rater's mask."""
    from sdseg.data.batches import InMemoryCrops
    from sdseg.prompt_maps import training_prompts

    crops = InMemoryCrops(CropsDataset(data, "train"), torch.device("cpu"))
    indices = list(range(len(crops))) * 8
    _, mask = crops.batch(indices, torch.Generator().manual_seed(2), augmentations=(), prompt_channels=("point",))
    generator = torch.Generator().manual_seed(2)
    chosen = (torch.rand(len(indices), generator=generator) * crops.rater_counts[indices]).long()  # the rater,
    torch.rand(len(indices), 2, generator=generator)  # then the flips (drawn even without augmentations)
    off_object = training_prompts(crops.masks[indices], generator, crops.neighbours[indices]).off_object
    assert off_object.any()
    drawn = crops.masks[indices][torch.arange(len(indices)), chosen]
    expected = torch.where(off_object[:, None, None], False, drawn)
    assert torch.equal(mask[:, 0] > 0, expected)


def test_fine_tuning_on_another_data_set_adds_its_record_and_on_the_same_one_adds_none(data, tmp_path,
                                                                                        uninterrupted_sdseg_run):
    other = tmp_path / "other"
    shutil.copytree(data, other)
    info = json.loads((other / "dataset.json").read_text())
    (other / "dataset.json").write_text(json.dumps({**info, "name": "other-shapes"}))
    runs = [(uninterrupted_sdseg_run, other, tmp_path / "on-other"), (tmp_path / "on-other", data, tmp_path / "again")]
    for start, data_set, out in runs:
        assert main(["--init", str(start), "--data", str(data_set), "--out", str(out), "--stage-steps",
                     "autoencoder=0,diffusion=1", "--batch-size", "4", "--sample-every", "0", "--device", "cpu"]) == 0
    first = training_data_record(info)
    assert load_model(tmp_path / "on-other").config["training_data"] == [first, {**first, "data_set": "other-shapes"}]
    assert load_model(tmp_path / "again").config["training_data"] == [first, {**first, "data_set": "other-shapes"}]
