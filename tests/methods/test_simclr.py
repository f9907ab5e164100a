"""SimCLR: its two losses against closed forms and the original code, checkpoints, real runs
and the three stage scripts. The helpers (build, train, three_stages) serve
test_rotationnet.py too."""

from __future__ import annotations

import math
from collections import OrderedDict

import pytest
import torch
from torch import nn

from backbones import build_backbone
from datasets.augment import CropColorViews, build_augmentation
from engine.checkpoint import read_checkpoint
from experiments.options import stage1_config
from methods.config import ConfigError
from methods.losses import nt_xent_loss, simclr_original_loss
from methods.simclr import SimCLR
from tests.helpers import (
    GOLDEN,
    build_method,
    cifar10_subset,
    parse_stage1,
    run_script,
    save_original_checkpoint,
    three_stage_commands,
    train_method,
)
from utils.errors import UserError

GOLDEN_SIMCLR = GOLDEN / "simclr.pt"


def to_view_major(interleaved: torch.Tensor) -> torch.Tensor:
    """The original's rows 2n, 2n+1 (views of image n) as the engine's rows n, B+n."""
    images = interleaved.shape[0] // 2
    return interleaved.view(images, 2, -1).transpose(0, 1).reshape(2 * images, -1)


def original_reference(interleaved: torch.Tensor, t: float) -> torch.Tensor:
    """The original code's loss, literally, on the interleaved layout: the log of the mean ratio
    (docs/original-code.md, SimCLR's loss)."""
    norms = interleaved.norm(dim=1, keepdim=True)
    e = torch.exp(interleaved @ interleaved.t() / (norms * norms.t()).clamp(min=1e-8) / t)
    partner = [i + 1 if i % 2 == 0 else i - 1 for i in range(len(e))]
    ratios = [e[partner[i], i] / (e[:, i].sum() - math.exp(1 / t)) for i in range(len(e))]
    return -torch.log(torch.stack(ratios).mean())


def ntxent_reference(view_major: torch.Tensor, t: float) -> torch.Tensor:
    """NT-Xent as the SimCLR paper writes it, one row at a time, in float64."""
    x = nn.functional.normalize(view_major.double(), dim=1)
    rows = len(x)
    losses = []
    for i in range(rows):
        positive = torch.exp(x[i] @ x[(i + rows // 2) % rows] / t)
        others = sum(torch.exp(x[i] @ x[j] / t) for j in range(rows) if j != i)
        losses.append(-torch.log(positive / others))
    return torch.stack(losses).mean()


def unit_rows(*axes: int) -> torch.Tensor:
    # float64: at t = 0.2 the original's subtraction of e^{1/t} already costs float32 digits.
    return torch.eye(4, dtype=torch.float64)[list(axes)]


@pytest.mark.parametrize("t", [0.5, 0.2])
def test_losses_on_hand_made_inputs(t):
    # Image 0 = e0, image 1 = e1, both views identical: every ratio is e^{1/t} / (e^{1/t} + 2).
    same = unit_rows(0, 1, 0, 1)
    expected = math.log(1 + 2 * math.exp(-1 / t))
    assert simclr_original_loss(same, t).item() == pytest.approx(expected, rel=1e-6)
    assert nt_xent_loss(same, t).item() == pytest.approx(expected, rel=1e-6)
    # Four orthogonal views: every similarity but the self one is 0, so every ratio is 1/3.
    orthogonal = unit_rows(0, 1, 2, 3)
    assert simclr_original_loss(orthogonal, t).item() == pytest.approx(math.log(3), rel=1e-6)
    assert nt_xent_loss(orthogonal, t).item() == pytest.approx(math.log(3), rel=1e-6)
    # Image 0 with identical views, image 1 with orthogonal ones: the ratios differ, so the log
    # of the mean (original) and the mean of the logs (NT-Xent) part.
    mixed = unit_rows(0, 1, 0, 2)
    ratio = 1 / (1 + 2 * math.exp(-1 / t))
    assert simclr_original_loss(mixed, t).item() == pytest.approx(-math.log((2 * ratio + 2 / 3) / 4), rel=1e-6)
    assert nt_xent_loss(mixed, t).item() == pytest.approx((-2 * math.log(ratio) + 2 * math.log(3)) / 4, rel=1e-6)


def test_original_loss_equals_the_original_code():
    golden = torch.load(GOLDEN_SIMCLR, weights_only=True)
    interleaved, t = golden["projections_interleaved"], golden["temperature"]
    value = simclr_original_loss(to_view_major(interleaved), t)
    torch.testing.assert_close(value, golden["value"], rtol=1e-5, atol=0)
    torch.testing.assert_close(original_reference(interleaved, t), golden["value"], rtol=1e-5, atol=0)


@pytest.mark.parametrize("images,t", [(1, 0.5), (3, 0.5), (16, 0.1), (16, 1.0)])
def test_losses_equal_reference_implementations(images, t):
    torch.manual_seed(images)
    interleaved = torch.randn(2 * images, 64)
    view_major = to_view_major(interleaved)
    torch.testing.assert_close(
        simclr_original_loss(view_major, t), original_reference(interleaved, t), rtol=1e-5, atol=1e-6
    )
    torch.testing.assert_close(
        nt_xent_loss(view_major, t).double(), ntxent_reference(view_major, t), rtol=1e-5, atol=1e-6
    )


def test_training_step_uses_the_chosen_loss():
    torch.manual_seed(0)
    views = torch.randn(2 * 5, 3, 32, 32)
    values = {}
    for loss in ("original", "ntxent"):
        method = build_method("simclr", 1, "--simclr_loss", loss)
        out = method.training_step([views], torch.zeros(5, dtype=torch.long), torch.arange(5))
        projections = method.head(method.backbone(views))
        assert out.loss_weight == 10 and not out.metrics
        values[loss] = out.loss
        reference = simclr_original_loss if loss == "original" else nt_xent_loss
        torch.testing.assert_close(out.loss, reference(projections, 0.5))
    assert values["original"].item() != pytest.approx(values["ntxent"].item())


@pytest.mark.parametrize(
    "options,fields",
    [
        ({"temperature": 0}, ("temperature",)),
        ({"temperature": -1}, ("temperature",)),
        ({"temperature": float("nan")}, ("temperature",)),
        ({"temperature": float("inf")}, ("temperature",)),
        ({"temperature": 0.01}, ("temperature", "loss")),
        ({"loss": "infonce"}, ("loss",)),
    ],
)
def test_bad_options_are_named(options, fields):
    with pytest.raises(ConfigError) as raised:
        SimCLR.Config(**options)
    assert raised.value.fields == fields and str(raised.value).startswith(fields[0]) and "\n" not in str(raised.value)
    assert SimCLR.Config(temperature=0.01, loss="ntxent").temperature == 0.01


def test_a_temperature_too_low_for_the_loss_names_both_flags():
    args = parse_stage1("simclr", "--temperature", "0.01")
    with pytest.raises(UserError, match="^--temperature, --simclr_loss: a temperature of 0.01 is below 0.02"):
        stage1_config(SimCLR, args)


def original_head() -> nn.Sequential:
    """The original `Model.head`, whose state dict is the `head` checkpoint entry."""
    return nn.Sequential(
        OrderedDict(
            [
                ("linear1", nn.Linear(64, 256)),
                ("bn1", nn.BatchNorm1d(256)),
                ("relu", nn.LeakyReLU()),
                ("linear2", nn.Linear(256, 64)),
            ]
        )
    )


def test_checkpoint_round_trip_and_original_files(tmp_path):
    method = build_method("simclr")
    method.training_step([torch.randn(8, 3, 32, 32)], torch.zeros(4, dtype=torch.long), torch.arange(4)).loss.backward()
    method.optimizer.step()
    state = method.checkpoint_state()
    assert set(state) == {"backbone", "head", "optimizer"}
    assert set(state["head"]) == set(original_head().state_dict())
    fresh = build_method("simclr", 2)
    fresh.load_checkpoint_state(state)
    assert all(torch.equal(value, fresh.state_dict()[key]) for key, value in method.state_dict().items())
    assert fresh.optimizer.state_dict()["state"][0]["exp_avg"].equal(state["optimizer"]["state"][0]["exp_avg"])

    # A file as the original code writes it: its own modules, two Adam groups, nothing else.
    backbone, head = build_backbone("conv4"), original_head()
    path = tmp_path / "simclr_cifar10_conv4_seed_1_epoch_200.tar"
    save_original_checkpoint(path, backbone, "head", head)
    fresh.load_checkpoint_state(read_checkpoint(path))
    assert torch.equal(fresh.head.linear2.weight, head.linear2.weight)
    assert torch.equal(fresh.head.bn1.running_mean, head.bn1.running_mean)
    assert torch.equal(fresh.backbone.state_dict()["layer1.conv.weight"], backbone.state_dict()["layer1.conv.weight"])
    assert len(fresh.optimizer.state_dict()["state"]) == len(read_checkpoint(path)["optimizer"]["state"])


def test_loss_falls_on_real_images(cifar10_root, tmp_path):
    data = cifar10_subset(cifar10_root, 640)
    # Fixed views of 64 of the images, scored in eval mode: a comparison free of batch noise.
    augment = build_augmentation(CropColorViews(), data.mean, data.std)
    views = augment(data.images[:64].repeat(2, 1, 1, 1), torch.Generator().manual_seed(0))

    def fixed_loss(method):
        method.eval()
        with torch.no_grad():
            return simclr_original_loss(method.head(method.backbone(views))).item()

    method = build_method("simclr")
    before = fixed_loss(method)
    # 4 epochs x 20 steps of 32 images x 2 views. Chance: all 63 other rows alike, log 63 = 4.14.
    rows = train_method(method, data, tmp_path, epochs=4)
    losses = [float(row["loss"]) for row in rows]
    assert losses[-1] < losses[0] < math.log(63), losses
    assert fixed_loss(method) < before - 0.2, (before, fixed_loss(method))
    assert all(float(row["score"]) == -float(row["loss"]) for row in rows)


def test_same_seed_same_loss(cifar10_root, tmp_path):
    data = cifar10_subset(cifar10_root, 96)
    runs = [(build_method("simclr", seed), tmp_path / name, seed) for name, seed in (("a", 3), ("b", 3), ("c", 4))]
    (loss_a, loss_b, loss_c) = [train_method(method, data, folder, seed)[0]["loss"] for method, folder, seed in runs]
    assert loss_a == loss_b != loss_c
    weights_a, weights_b = runs[0][0].state_dict(), runs[1][0].state_dict()
    assert all(torch.equal(value, weights_b[key]) for key, value in weights_a.items())


def test_three_stages(small_cifar10_root, tmp_path):
    state = three_stage_commands("simclr", small_cifar10_root, tmp_path)
    assert {"backbone", "head", "optimizer"} <= set(state)
    assert set(state["head"]) == set(original_head().state_dict())
    assert state["args"]["simclr_loss"] == "original" and state["args"]["temperature"] == 0.5


def test_bad_temperature_is_one_line_without_traceback(small_cifar10_root, tmp_path):
    result = run_script(
        "train_unsupervised.py",
        "--method",
        "simclr",
        "--temperature",
        "0",
        "--data_root",
        str(small_cifar10_root),
        "--checkpoint_dir",
        str(tmp_path),
        "--no_download",
        "--epochs",
        "1",
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "--temperature" in result.stderr
    assert not list(tmp_path.iterdir())
