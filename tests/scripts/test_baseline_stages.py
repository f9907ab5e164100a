"""byol, simsiam, barlowtwins and vicreg through the three stages on CIFAR-10 files with Conv-4
and ResNet-18 (CIFAR stem): stage 2 and test.py score the online backbone, and test.py's kNN
monitor scores a stage-1 checkpoint directly."""

from __future__ import annotations

import pytest
import torch

import experiments.testing as stage3
from tests.helpers import load, read_log, record_feature_inputs, run_stage, stage_arguments, three_stages

# Small heads and one warm-up epoch: the tests' cost, not the reference settings.
SMALL_HEADS = {
    "byol": ["--byol_hidden", "64", "--byol_predictor_hidden", "64", "--byol_projection", "32"],
    "simsiam": ["--simsiam_hidden", "64", "--simsiam_projection", "64", "--simsiam_predictor_hidden", "32"],
    "barlowtwins": ["--barlowtwins_hidden", "64", "--barlowtwins_projection", "64"],
    "vicreg": ["--vicreg_hidden", "64", "--vicreg_projection", "64"],
}


@pytest.mark.parametrize("backbone", ["conv4", "resnet18"])
@pytest.mark.parametrize("method", list(SMALL_HEADS))
def test_three_stages_and_knn(small_cifar10_root, tmp_path, capsys, monkeypatch, method, backbone):
    seen = record_feature_inputs(monkeypatch)
    args = stage_arguments(small_cifar10_root, tmp_path, backbone=backbone)
    stage1_file, stage2_file, stage1_out, test_out = three_stages(
        args,
        tmp_path,
        "cifar10",
        method,
        capsys,
        backbone=backbone,
        stage1_args=[
            "--data_size",
            "8",
            "--train_subset",
            "24",
            f"--{method}_warmup_epochs",
            "0",
            *SMALL_HEADS[method],
        ],
        stage2_args=["--train_subset", "40"],
    )
    assert "Test accuracy:" in test_out and "feature_std" in stage1_out
    # As solo-learn, the backbones see images normalised with the data set's mean and std.
    assert seen and all(mean != (0.0,) * 3 and std != (1.0,) * 3 for _, mean, std in seen), seen
    state = load(stage1_file)
    assert state["steps"] == 3 and state["args"][f"{method}_warmup_epochs"] == 0
    if method == "byol":  # the momentum has reached 1 at the last step; the target lags behind
        assert state["momentum"] == 1.0
        assert any(
            not torch.equal(state["target"][f"0.{key}"], value)
            for key, value in state["backbone"].items()
            if value.is_floating_point()
        )
    evaluated = load(stage2_file)["backbone"]
    assert all(torch.equal(evaluated[key], value) for key, value in state["backbone"].items())
    log = read_log(stage1_file.with_name(f"log_{method}_cifar10_{backbone}_seed_1.csv"))
    assert len(log) == 1 and float(log[0]["feature_std"]) > 0

    if backbone == "conv4":
        run_stage(stage3, args + ["--checkpoint", str(stage1_file), "--knn", "5"])
        out = capsys.readouterr().out
        assert "kNN" in out or "knn" in out.lower(), out
