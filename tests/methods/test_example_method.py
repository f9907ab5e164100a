"""The example method of docs/adding-a-method.md, run exactly as printed there: a new method is
one file and one registry line over the engine, the stages and exact resume."""

from __future__ import annotations

import importlib.util
import re
import sys

import pytest
import torch

import experiments.linear_evaluation as stage2
import experiments.pretraining as stage1
from datasets import load_dataset
from methods import METHODS
from methods.config import ConfigError
from tests.helpers import REPO, engine_for, load, read_log, run_stage, stage_arguments


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    """The page's example file, written out and imported as a module."""
    page = (REPO / "docs" / "adding-a-method.md").read_text()
    section = page[page.index("## A complete example") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    path = tmp_path_factory.mktemp("example") / "momentum_example.py"
    path.write_text(code)
    spec = importlib.util.spec_from_file_location("momentum_example", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # as an import does: dataclasses read the module's names
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


@pytest.fixture(scope="module")
def data(small_cifar10_root):
    return load_dataset("cifar10", "train", small_cifar10_root, download=False).balanced_subset(96, seed=0)


def build(example, seed=1, **options):
    """The example method on Conv-4; `options` are fields of its config."""
    from backbones import build_backbone

    torch.manual_seed(seed)
    return example.MomentumExample(build_backbone("conv4"), 10, example.MomentumExample.Config(**options))


def test_config_view_groups_and_bad_options(example):
    method = build(example, momentum=0.9)
    assert method.momentum == 0.9 and len(method.view_groups) == 2 and method.lr == 1e-3
    assert example.MomentumExample(method.backbone, 10).momentum == 0.99  # the field's default
    assert example.normalised_mse(torch.ones(3, 4), torch.ones(3, 4)).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ConfigError, match="^momentum 2: must be a finite number >= 0 and <= 1$"):
        build(example, momentum=2)


def test_trains_moves_the_target_and_resumes_exactly(example, data, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    straight.mkdir(), resumed.mkdir()
    method = build(example, momentum=0.9)
    engine_for(method, data, straight, epochs=2).fit()
    rows = read_log(straight / "log.csv")
    assert len(rows) == 2 and all(float(row["loss"]) < 4 for row in rows)  # 2 terms in [0, 4]
    # after_step ran every step: the schedule moved and the target follows the online network.
    assert 0.9 < method.current_momentum <= 1.0
    online = dict(method.backbone.named_parameters())
    target = dict(method.target[0].named_parameters())
    assert all(not torch.equal(online[name], target[name]) for name in online)

    state = load(straight / "epoch_1.tar")
    assert {"backbone", "projector", "predictor", "target", "optimizer", "current_momentum"} <= set(state)
    again = build(example, seed=7, momentum=0.9)  # other initial weights: all must come from the file
    again.load_checkpoint_state(state)
    engine_for(again, data, resumed, epochs=2).fit(start_epoch=1, resume_state=state)
    assert again.current_momentum == method.current_momentum
    for key, value in method.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key


def test_one_registry_line_gives_the_stages(example, small_cifar10_root, tmp_path, monkeypatch):
    monkeypatch.setitem(METHODS, "momentum_example", example.MomentumExample)
    args = stage_arguments(small_cifar10_root, tmp_path)
    run_stage(
        stage1,
        args
        + [
            "--method",
            "momentum_example",
            "--momentum",
            "0.95",
            "--epochs",
            "1",
            "--data_size",
            "32",
            "--train_subset",
            "64",
        ],
    )
    folder = tmp_path / "momentum_example" / "cifar10"
    checkpoint = folder / "momentum_example_cifar10_conv4_seed_1_epoch_1.tar"
    assert load(checkpoint)["args"]["momentum"] == 0.95
    run_stage(stage2, args + ["--checkpoint", str(checkpoint), "--epochs", "1"])
    assert (folder / "momentum_example_cifar10_conv4_seed_1_epoch_1_linear_evaluation.tar").exists()
    with pytest.raises(SystemExit):  # its flag belongs to it alone
        run_stage(stage1, args + ["--method", "simclr", "--momentum", "0.95", "--epochs", "1"])
    with pytest.raises(SystemExit):  # and is checked when parsed
        run_stage(stage1, args + ["--method", "momentum_example", "--momentum", "2", "--epochs", "1"])
