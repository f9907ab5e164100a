"""mocov2plus, mocov3 and nnclr through the three stages on 200 real CIFAR-10 images (of the
shared sample where present) with Conv-4 and ResNet-18 (CIFAR stem): stage 2 and test.py score the
online backbone, and the checkpoint holds the queue, its pointer and the momentum."""

from __future__ import annotations

import math

import pytest
import torch

from tests.helpers import load, read_log, stage_arguments, three_stages

# Small heads and queues and no warm-up: the tests' cost, not the reference settings.
SMALL_HEADS = {
    "mocov2plus": ["--mocov2plus_hidden", "64", "--mocov2plus_projection", "32", "--mocov2plus_queue_size", "20"],
    "mocov3": ["--mocov3_hidden", "64", "--mocov3_projection", "32", "--mocov3_predictor_hidden", "64"],
    "nnclr": [
        *("--nnclr_hidden", "64", "--nnclr_projection", "32"),
        *("--nnclr_predictor_hidden", "64", "--nnclr_queue_size", "20"),
    ],
}


@pytest.mark.parametrize("backbone", ["conv4", "resnet18"])
@pytest.mark.parametrize("method", list(SMALL_HEADS))
def test_three_stages(real_small_cifar10_root, tmp_path, capsys, method, backbone):
    args = stage_arguments(real_small_cifar10_root, tmp_path, backbone=backbone)
    stage1_file, stage2_file, stage1_out, test_out = three_stages(
        args,
        tmp_path,
        "cifar10",
        method,
        capsys,
        backbone=backbone,
        stage1_args=[
            *("--data_size", "8", "--train_subset", "24"),
            *(f"--{method}_warmup_epochs", "0", *SMALL_HEADS[method]),
        ],
        stage2_args=["--train_subset", "40"],
    )
    assert "Test accuracy:" in test_out and "feature_std" in stage1_out
    state = load(stage1_file)
    assert state["steps"] == 3 and state["args"][f"{method}_warmup_epochs"] == 0
    if method != "mocov3":  # three batches of 8 into a queue of 20: written up to 24 = 4 (mod 20)
        assert state["queue_pointer"] == 4 and torch.isfinite(state["queue"]["rows"]).all()
    if method != "nnclr":  # the momentum has reached its final value at the last step
        assert state["momentum"] == pytest.approx(0.999 if method == "mocov2plus" else 1.0)
    evaluated = load(stage2_file)["backbone"]
    assert all(torch.equal(evaluated[key], value) for key, value in state["backbone"].items())
    log = read_log(stage1_file.with_name(f"log_{method}_cifar10_{backbone}_seed_1.csv"))
    assert len(log) == 1 and math.isfinite(float(log[0]["loss"])) and float(log[0]["feature_std"]) > 0
