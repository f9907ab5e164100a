"""--precision, --compile and --channels_last: real short runs, recorded options, exact fp16 resume."""

from __future__ import annotations

import json
import math
import os
import shutil

import pytest
import torch

import experiments.pretraining as stage1
from backbones import build_backbone
from datasets import load_dataset
from engine.precision import Precision
from experiments.stage import run_main
from methods import METHODS
from methods.losses import focal_loss, simclr_original_loss
from tests.helpers import engine_for, make_engine, read_log
from utils.cpu import cpu_has_native_bf16
from utils.errors import UserError


@pytest.fixture(scope="module")
def subset(cifar10_root):
    """Two steps of 32 images per epoch."""
    return load_dataset("cifar10", "train", cifar10_root, download=False).balanced_subset(64, seed=0)


BF16_CHANNELS_LAST = {"precision": "bf16", "channels_last": True}


def test_fp32_is_no_autocast_and_fp16_brings_a_scaler():
    fp32 = Precision("fp32", torch.device("cpu"))
    with fp32.autocast():
        assert not torch.is_autocast_enabled("cpu")
    assert fp32.scaler is None and fp32.state_dict() == {}
    bf16 = Precision("bf16", torch.device("cpu"))
    with bf16.autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    assert set(Precision("fp16", torch.device("cpu")).state_dict()) == {"grad_scaler"}
    with pytest.raises(UserError, match="--precision fp8"):
        Precision("fp8", torch.device("cpu"))


def test_losses_stay_float32_under_autocast():
    projections = torch.randn(16, 8)
    logits, targets = torch.randn(40), (torch.arange(40) % 2).float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        simclr = simclr_original_loss(projections.bfloat16(), 0.5)
        focal = focal_loss(logits.bfloat16(), targets)
    assert simclr.dtype == focal.dtype == torch.float32
    # Only the inputs' rounding to bf16 differs from the float32 loss.
    torch.testing.assert_close(simclr, simclr_original_loss(projections.bfloat16().float(), 0.5))
    torch.testing.assert_close(focal, focal_loss(logits.bfloat16().float(), targets))


def bf16_forward_and_fp32_loss(engine, batch: int) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """One forward pass of the engine's method on a batch of its views under its bf16 autocast,
    and again on the same views in float32 (the random draws of a step seeded alike): what
    each convolution and linear layer computed in (their outputs' dtypes, whether each
    convolution's input was channels-last) and the two losses."""
    method = engine.method
    index = engine.batch_index(engine.begin_epoch(0)[0], 0)[:batch]
    views = engine.augment_views(engine.images.index_select(0, index))
    labels = engine.labels.index_select(0, index)
    seen = {"conv": set(), "linear": set(), "conv_input_channels_last": set()}

    def record(module, inputs, output):
        kind = "conv" if isinstance(module, torch.nn.Conv2d) else "linear"
        seen[kind].add(output.dtype)
        if kind == "conv":
            seen["conv_input_channels_last"].add(inputs[0].is_contiguous(memory_format=torch.channels_last))

    hooks = [
        module.register_forward_hook(record)
        for module in method.modules()
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear))
    ]
    torch.manual_seed(0)
    with engine.precision.autocast():
        loss = method.training_step(views, labels, index).loss
    for hook in hooks:
        hook.remove()
    torch.manual_seed(0)
    with torch.no_grad():
        fp32_loss = method.training_step(views, labels, index).loss
    return seen, loss, fp32_loss


# Every method that trains, the ones added later included: the bf16 path is the engine's
# autocast around `training_step` and the float32 losses of methods/losses.py, nothing a
# method opts into.
TRAINED_METHODS = [name for name, method in METHODS.items() if method.trains]


@pytest.mark.parametrize("name", TRAINED_METHODS)
def test_bf16_channels_last_runs_every_method_s_layers_in_bf16_and_its_loss_in_float32(subset, tmp_path, name):
    engine = make_engine(name, subset, tmp_path, epochs=1, batch=8, plan_options=BF16_CHANNELS_LAST)
    seen, loss, fp32_loss = bf16_forward_and_fp32_loss(engine, 8)
    assert seen["conv"] == {torch.bfloat16} and seen["linear"] <= {torch.bfloat16}, seen
    assert seen["conv_input_channels_last"] == {True}, seen
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert loss.item() == pytest.approx(fp32_loss.item(), rel=0.05, abs=0.02)


def test_bf16_channels_last_resnet18_step_keeps_float32_weights_and_gradients(subset, tmp_path):
    """ResNet-18's residual blocks stay channels-last and bf16 through a whole step of a
    two-view method; the optimizer updates float32 weights with float32 gradients."""
    torch.manual_seed(0)
    method = METHODS["simsiam"](
        build_backbone("resnet18", "cifar"),
        10,
        METHODS["simsiam"].Config(hidden=64, projection=64, predictor_hidden=32),
    )
    engine = engine_for(method, subset, tmp_path, epochs=1, batch=2, plan_options=BF16_CHANNELS_LAST)
    seen, loss, fp32_loss = bf16_forward_and_fp32_loss(engine, 2)
    assert seen == {"conv": {torch.bfloat16}, "linear": {torch.bfloat16}, "conv_input_channels_last": {True}}
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(fp32_loss.item(), rel=0.05, abs=0.02)
    before = {name: p.detach().clone() for name, p in method.named_parameters()}
    engine.train_step(engine.batch_index(engine.begin_epoch(0)[0], 0))
    for name, parameter in method.named_parameters():
        assert parameter.dtype == torch.float32 and parameter.grad.dtype == torch.float32, name
    assert any(not torch.equal(before[name], p) for name, p in method.named_parameters())


@pytest.mark.parametrize(
    "options", [{"precision": "bf16"}, {"channels_last": True}, {"precision": "bf16", "channels_last": True}]
)
def test_short_runs_with_bf16_and_channels_last_have_finite_losses(subset, tmp_path, options):
    make_engine("relationnet", subset, tmp_path, epochs=2, plan_options=options).fit()
    rows = read_log(tmp_path / "log.csv")
    assert len(rows) == 2 and all(math.isfinite(float(row["loss"])) for row in rows)


def test_fp16_resume_restores_the_gradient_scaler_exactly(subset, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    straight.mkdir()
    resumed.mkdir()
    make_engine("relationnet", subset, straight, epochs=2, plan_options={"precision": "fp16"}).fit()
    make_engine("relationnet", subset, resumed, epochs=1, plan_options={"precision": "fp16"}).fit()
    state = torch.load(resumed / "epoch_1.tar", weights_only=True)
    assert state["grad_scaler"]["_growth_tracker"] == 2  # steps without overflow so far
    engine = make_engine("relationnet", subset, resumed, epochs=2, plan_options={"precision": "fp16"})
    engine.method.load_checkpoint_state(state)
    engine.fit(start_epoch=1, resume_state=state)
    a = torch.load(straight / "epoch_2.tar", weights_only=True)
    b = torch.load(resumed / "epoch_2.tar", weights_only=True)
    assert a["grad_scaler"] == b["grad_scaler"]
    for key, value in a["backbone"].items():
        assert torch.equal(value, b["backbone"][key]), key


@pytest.mark.skipif(
    shutil.which(os.environ.get("CXX", "g++")) is None,
    reason="torch.compile on the CPU needs a C++ compiler (g++ or $CXX): none found",
)
def test_compiled_fp32_steps_equal_eager_ones_and_keep_the_checkpoint_keys(subset, tmp_path):
    steps = {}
    for compiled in (False, True):
        engine = make_engine("relationnet", subset, tmp_path, epochs=1, plan_options={"compile": compiled})
        order, _ = engine.begin_epoch(0)
        losses = [engine.train_step(engine.batch_index(order, 0)).loss.item()]
        gradients = {name: p.grad.clone() for name, p in engine.method.backbone.named_parameters()}
        losses.append(engine.train_step(engine.batch_index(order, 1)).loss.item())
        steps[compiled] = (losses, gradients, engine.method.checkpoint_state())
    (eager_losses, eager_gradients, _), (losses, gradients, state) = steps[False], steps[True]
    assert torch._inductor.config.compile_threads == 1  # no pool of compiler processes (their memory)
    assert set(state["backbone"]) == set(build_backbone("conv4").state_dict())
    assert losses == pytest.approx(eager_losses, rel=1e-5)
    for name, expected in eager_gradients.items():  # the first step's
        torch.testing.assert_close(
            gradients[name], expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item(), msg=name
        )


def test_stage1_records_the_speed_options_and_warns_of_bf16_without_native_units(small_cifar10_root, tmp_path, capsys):
    argv = [
        "--data_root",
        str(small_cifar10_root),
        "--checkpoint_dir",
        str(tmp_path),
        "--no_download",
        "--device",
        "cpu",
        "--seed",
        "1",
        "--method",
        "relationnet",
        "--K",
        "2",
        "--data_size",
        "16",
        "--epochs",
        "1",
        "--precision",
        "bf16",
        "--channels_last",
    ]
    run_main(lambda: stage1.main(argv))
    assert ("no bfloat16 matrix units" in capsys.readouterr().out) == (not cpu_has_native_bf16())
    folder = tmp_path / "relationnet" / "cifar10"
    config = json.loads((folder / "config_relationnet_cifar10_conv4_seed_1.json").read_text())
    assert config["args"]["precision"] == "bf16" and config["args"]["channels_last"] is True
    assert config["args"]["compile"] is False
    state = torch.load(folder / "relationnet_cifar10_conv4_seed_1_epoch_1.tar", weights_only=True)
    assert state["args"]["precision"] == "bf16" and "grad_scaler" not in state


def test_bf16_reaches_the_step_and_changes_the_loss_only_a_little(subset, tmp_path):
    losses = {}
    for precision in ("fp32", "bf16"):
        (tmp_path / precision).mkdir()
        make_engine("relationnet", subset, tmp_path / precision, epochs=1, plan_options={"precision": precision}).fit()
        losses[precision] = float(read_log(tmp_path / precision / "log.csv")[0]["loss"])
    assert losses["fp32"] != losses["bf16"]  # autocast is applied in the engine's step
    assert abs(losses["fp32"] - losses["bf16"]) < 0.05 * losses["fp32"], losses
