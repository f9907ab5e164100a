"""`--val_images`: the held-out training images reach no training step of stage 1 (the method's
or the online probe's) nor stage 2's classifier, are recorded, and stage 2 reuses them; the
monitor and the probe score on them, and the probe's state resumes exactly through the stage."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

import experiments.linear_evaluation as stage2
import experiments.pretraining as stage1
from datasets import load_dataset
from engine.loop import Engine
from engine.plan import PROBE_KEY
from experiments.validation import VALIDATION_KEY
from tests.helpers import load, read_log, run_stage, stage_arguments

HEADER = "simclr_cifar10_conv4_seed_1"
STAGE1 = ["--method", "simclr", "--data_size", "50", "--val_images", "40", "--online_probe"]


def fingerprints(images: torch.Tensor) -> set[str]:
    return {hashlib.sha1(image.contiguous().numpy().tobytes()).hexdigest() for image in images}


def test_held_out_images_reach_no_training_step_and_stage2_reuses_them(
    small_cifar10_root, tmp_path, monkeypatch, capsys
):
    trained = []
    train_step = Engine.train_step

    def recording_step(self, index):
        trained.append(self.images.index_select(0, index).cpu())
        return train_step(self, index)

    monkeypatch.setattr(Engine, "train_step", recording_step)
    arguments = stage_arguments(small_cifar10_root, tmp_path)
    run_stage(stage1, arguments + [*STAGE1, "--epochs", "1", "--eval_every", "1", "--eval_images", "100"])
    shown = capsys.readouterr().out
    folder = tmp_path / "simclr" / "cifar10"
    state = load(folder / f"{HEADER}_epoch_1.tar")
    train = load_dataset("cifar10", "train", small_cifar10_root, download=False)
    held_out = state[VALIDATION_KEY]
    assert held_out.dtype == torch.int64 and len(torch.unique(held_out)) == 40
    assert train.labels[held_out].bincount(minlength=10).tolist() == [4] * 10  # class-balanced
    held_images = fingerprints(train.images[held_out])
    seen = fingerprints(torch.cat(trained))
    assert len(fingerprints(train.images)) == 200  # every image differs: the test can tell them apart
    assert not seen & held_images and len(seen) == 160
    assert state["args"]["val_images"] == 40 and state["args"]["online_probe"] is True
    assert json.loads((folder / f"config_{HEADER}.json").read_text())["validation_images"] == 40
    row = read_log(folder / f"log_{HEADER}.csv")[0]
    monitor = ["knn_accuracy", "knn_top5", "rankme", "alignment", "uniformity", "probe_accuracy", "probe_top5"]
    assert {f"val_{name}" for name in monitor} <= set(row) and "knn_accuracy" not in row
    assert all(row[f"val_{name}"] != "" for name in monitor)
    assert "on 40 images of the validation split" in shown and "not for selecting" not in shown

    # Stage 2 trains its classifier on the other 160 images and scores the 40 every epoch.
    classified = []
    frozen_features = stage2.frozen_features

    def recording_features(backbone, train_set, test, device, checkpoint):
        classified.append(train_set.images)
        return frozen_features(backbone, train_set, test, device, checkpoint)

    monkeypatch.setattr(stage2, "frozen_features", recording_features)
    stage2_arguments = arguments + ["--checkpoint", str(folder / f"{HEADER}_epoch_1.tar"), "--epochs", "2"]
    run_stage(stage2, stage2_arguments)
    evaluated = folder / f"{HEADER}_epoch_2_linear_evaluation.tar"
    assert torch.equal(load(evaluated)[VALIDATION_KEY], held_out)
    assert not fingerprints(classified[0]) & held_images and len(classified[0]) == 160
    rows = read_log(folder / f"log_{HEADER}_epoch_2_linear_evaluation.csv")
    assert [0 <= float(row["val_accuracy"]) <= 100 for row in rows] == [True, True]
    assert "the 40 training images the stage-1 checkpoint held out" in capsys.readouterr().out

    # Another split is refused in one line, unless asked for.
    with pytest.raises(SystemExit) as refused:
        run_stage(stage2, stage2_arguments + ["--val_images", "30", "--overwrite"])
    error = capsys.readouterr().err.strip()
    assert refused.value.code == 2 and len(error.splitlines()) == 1
    assert "held out 40 training images" in error and "--new_val_split" in error
    run_stage(stage2, stage2_arguments + ["--val_images", "30", "--new_val_split", "--overwrite"])
    assert len(load(evaluated)[VALIDATION_KEY]) == 30


def test_the_probe_resumes_exactly_through_stage_1(small_cifar10_root, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    for out, epochs in ((straight, ["2"]), (resumed, ["1", "2"])):
        for count in epochs:
            resume = ["--resume", "auto"] if out == resumed and count == "2" else []
            run_stage(stage1, stage_arguments(small_cifar10_root, out) + [*STAGE1, "--epochs", count, *resume])
    folder = "simclr/cifar10"
    a = load(straight / folder / f"{HEADER}_epoch_2.tar")
    b = load(resumed / folder / f"{HEADER}_epoch_2.tar")
    for key, value in a[PROBE_KEY]["classifier"].items():
        assert torch.equal(value, b[PROBE_KEY]["classifier"][key]), key
    for key, value in a["backbone"].items():
        assert torch.equal(value, b["backbone"][key]), key
    strip = lambda rows: [{k: v for k, v in row.items() if k != "seconds"} for row in rows]  # noqa: E731
    log = f"log_{HEADER}.csv"
    assert strip(read_log(straight / folder / log)) == strip(read_log(resumed / folder / log))
    assert "val_probe_accuracy" in read_log(straight / folder / log)[0]


def test_an_untrained_backbone_records_its_held_out_images_and_refuses_the_probe(small_cifar10_root, tmp_path, capsys):
    arguments = stage_arguments(small_cifar10_root, tmp_path) + ["--method", "randomweights"]
    with pytest.raises(SystemExit) as refused:
        run_stage(stage1, arguments + ["--online_probe"])
    error = capsys.readouterr().err.strip()
    assert refused.value.code == 2 and len(error.splitlines()) == 1 and "nothing to probe" in error
    assert not (tmp_path / "randomweights").exists() or not list((tmp_path / "randomweights").rglob("*.tar"))
    run_stage(stage1, arguments + ["--val_images", "20"])
    state = load(next((tmp_path / "randomweights").rglob("*.tar")))
    train = load_dataset("cifar10", "train", small_cifar10_root, download=False)
    assert train.labels[state[VALIDATION_KEY]].bincount(minlength=10).tolist() == [2] * 10
