"""relic through the three stages on CIFAR-10 and STL-10 files, with the backbones its users
train: stage 2 (linear layer and logistic regression) and test.py score the target backbone."""

from __future__ import annotations

import json

import pytest
import torch

import experiments.linear_evaluation as stage2
import experiments.testing as stage3
from tests.helpers import load, record_feature_inputs, run_stage, stage_arguments, three_stages


# ResNet-50 (ImageNet stem, 2048 features) on STL-10 only, where relic-pytorch trains it: on
# CIFAR-10 it would repeat, at twice the suite's cost, what ResNet-18 and the STL-10 case test.
@pytest.mark.parametrize(
    "dataset, backbone",
    [("cifar10", "conv4"), ("cifar10", "resnet18"), ("stl10", "conv4"), ("stl10", "resnet18"), ("stl10", "resnet50")],
)
def test_relic_three_stages(small_cifar10_root, stl10_root, tmp_path, capsys, monkeypatch, dataset, backbone):
    seen = record_feature_inputs(monkeypatch)
    root = small_cifar10_root if dataset == "cifar10" else stl10_root
    args = stage_arguments(root, tmp_path, dataset=dataset, backbone=backbone)
    stage1_file, stage2_file, _, test_out = three_stages(
        args,
        tmp_path,
        dataset,
        "relic",
        capsys,
        backbone=backbone,
        stage1_args=["--data_size", "8", "--train_subset", "24", "--relic_local_views", "2"],
        stage2_args=["--train_subset", "40"],
    )
    assert "Test accuracy:" in test_out
    state = load(stage1_file)
    # As the package, its backbones see [0, 1] images, in stage 1 and in stages 2 and 3.
    config = json.loads((stage1_file.parent / f"config_relic_{dataset}_{backbone}_seed_1.json").read_text())
    assert config["input_normalisation"] == {"mean": [0.0] * 3, "std": [1.0] * 3}
    assert {name for name, *_ in seen} == {"experiments.linear_evaluation", "experiments.testing"}
    assert all((mean, std) == ((0.0,) * 3, (1.0,) * 3) for _, mean, std in seen), seen
    # 24 images in batches of 8: two steps copy the online network into the target, the third moves it.
    assert state["args"]["data_size"] == 8 and state["momentum_steps"] == 3
    # Stage 2 evaluates the target backbone (the EMA weights), not the online one.
    evaluated = load(stage2_file)["backbone"]
    assert all(torch.equal(evaluated[key], value) for key, value in state["backbone"].items())
    assert any(
        not torch.equal(state["online_backbone"][key], value)
        for key, value in state["backbone"].items()
        if value.is_floating_point()
    )

    run_stage(stage2, args + ["--checkpoint", str(stage1_file), "--classifier", "logistic", "--train_subset", "40"])
    logistic = stage1_file.with_name(f"relic_{dataset}_{backbone}_seed_1_logistic_regression.tar")
    capsys.readouterr()
    run_stage(stage3, args + ["--checkpoint", str(logistic)])
    assert "Test accuracy:" in capsys.readouterr().out
