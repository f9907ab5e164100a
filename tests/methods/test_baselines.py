"""The four two-view baselines (byol, simsiam, barlowtwins, vicreg): their losses on inputs
whose value is known in closed form, LARS and the learning-rate schedule, the reference
settings, learning without collapse on real images, and exact resume inside an epoch."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from backbones import build_backbone
from backbones.features import extract_features
from datasets import load_dataset
from datasets.augment import CropColorViews
from engine.signals import RunInterrupted
from methods import METHODS
from methods.base import ViewGroup
from methods.byol import BYOL
from methods.config import ConfigError
from methods.losses import barlow_twins_loss, negative_cosine_loss, normalised_mse_loss, vicreg_loss
from methods.momentum import cosine_momentum
from methods.optimizers import LARS, warmup_cosine_lr
from tests.helpers import engine_for, interrupt_at, load, read_log

BASELINES = ("byol", "simsiam", "barlowtwins", "vicreg")
# Rows +-1 in every pattern: each column has mean 0 and (biased) variance 1, and the columns
# are orthogonal, so a view's batch-normalised correlation with itself is the identity.
PATTERNS = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])


def small(name: str, seed: int = 0, **options):
    """A seeded baseline on Conv-4 with small heads (the tests' cost, not the method); `options`
    are fields of its config."""
    torch.manual_seed(seed)
    heads = {"byol": {"predictor_hidden": 128}, "simsiam": {"predictor_hidden": 64}}.get(name, {})
    sizes = {"hidden": 256, "projection": 64 if name == "byol" else 256, "warmup_epochs": 1}
    method_class = METHODS[name]
    return method_class(build_backbone("conv4"), 10, method_class.Config(**{**sizes, **heads, **options}))


# --- losses ---------------------------------------------------------------------------------------


def test_cosine_losses_of_identical_orthogonal_and_opposite_views():
    x = torch.eye(3, 8)
    for other, cosine in ((x, 1.0), (torch.eye(3, 8).roll(1, dims=1), 0.0), (-x, -1.0)):
        assert negative_cosine_loss(x, other).item() == pytest.approx(-cosine)
        assert normalised_mse_loss(5 * x, other).item() == pytest.approx(2 - 2 * cosine)  # scale-free


def test_cosine_losses_stop_the_gradient_of_the_target():
    prediction, target = torch.randn(4, 6, requires_grad=True), torch.randn(4, 6, requires_grad=True)
    (negative_cosine_loss(prediction, target) + normalised_mse_loss(prediction, target)).backward()
    assert target.grad is None and prediction.grad.abs().sum() > 0


def test_barlow_twins_closed_forms():
    # Identical views: the cross-correlation is the identity (up to BatchNorm's eps).
    loss, on, off = barlow_twins_loss(PATTERNS, PATTERNS, 0.0051, 0.1)
    assert loss.item() == pytest.approx(0.0, abs=1e-9) and off.item() == pytest.approx(0.0, abs=1e-12)
    # Swapped dimensions: C = [[0, 1], [1, 0]], so (1 - 0)^2 twice on and 1 twice off the diagonal.
    loss, on, off = barlow_twins_loss(PATTERNS, PATTERNS.flip(1), 0.5, 0.1)
    assert (on.item(), off.item()) == pytest.approx((2.0, 2.0), abs=1e-4)
    assert loss.item() == pytest.approx(0.1 * (2 + 0.5 * 2), abs=1e-4)
    # A collapsed batch normalises to 0: C = 0, the loss is scale x d.
    collapsed = torch.ones(8, 5) * 3.0
    assert barlow_twins_loss(collapsed, collapsed, 0.0051, 0.1)[0].item() == pytest.approx(0.1 * 5)


def test_vicreg_closed_forms():
    # Identical views, standard deviation above 1 in every dimension, uncorrelated: nothing to pay.
    spread = 2 * PATTERNS
    loss, invariance, variance, covariance = vicreg_loss(spread, spread)
    assert (loss.item(), invariance.item(), variance.item(), covariance.item()) == pytest.approx((0, 0, 0, 0), abs=1e-7)
    # A collapsed batch: no invariance or covariance cost, the full hinge 1 - sqrt(eps) per view.
    collapsed = torch.full((6, 4), 0.7)
    loss, invariance, variance, covariance = vicreg_loss(collapsed, collapsed, 25.0, 25.0, 1.0)
    assert variance.item() == pytest.approx(2 * (1 - math.sqrt(1e-4)))
    assert loss.item() == pytest.approx(25 * 2 * 0.99) and covariance.item() == 0.0
    # Orthogonal views (rows e_0 and e_1): MSE 2 / d; a perfectly correlated pair of dimensions
    # ([x, x] rows, unbiased variance v) costs 2 v^2 / d in covariance.
    assert vicreg_loss(torch.eye(2, 4), torch.eye(2, 4).roll(1, dims=1))[1].item() == pytest.approx(2 / 4)
    correlated = PATTERNS[:, :1].expand(4, 2)  # unbiased variance 4/3
    assert vicreg_loss(correlated, correlated)[3].item() == pytest.approx(2 * 2 * (4 / 3) ** 2 / 2)


# --- optimizer and schedule -----------------------------------------------------------------------


def test_lars_scales_matrices_by_their_trust_ratio_and_steps_vectors_plainly():
    weight = torch.nn.Parameter(torch.full((2, 2), 3.0))  # |w| = 6
    bias = torch.nn.Parameter(torch.ones(2))
    weight.grad, bias.grad = torch.full((2, 2), 4.0), torch.full((2,), 0.5)  # |g| = 8
    lr, decay, eta = 0.5, 0.1, 0.02
    LARS([weight, bias], lr=lr, weight_decay=decay, eta=eta).step()
    trust = min(eta * 6 / (8 + decay * 6 + 1e-8) / lr, 1.0)
    torch.testing.assert_close(weight.detach(), torch.full((2, 2), 3.0 - lr * trust * (4.0 + decay * 3.0)))
    torch.testing.assert_close(bias.detach(), torch.full((2,), 1.0 - lr * 0.5))  # no LARS, no decay
    frozen = torch.nn.Parameter(torch.zeros(2, 2))  # norm 0: its plain gradient
    frozen.grad = torch.ones(2, 2)
    LARS([frozen], lr=lr, weight_decay=decay).step()
    torch.testing.assert_close(frozen.detach(), torch.full((2, 2), -lr))


def test_warmup_then_cosine():
    assert warmup_cosine_lr(0, 100, 10, 1.0) == pytest.approx(3e-5)
    assert warmup_cosine_lr(9, 100, 10, 1.0) == pytest.approx(1.0)
    assert warmup_cosine_lr(55, 100, 10, 1.0) == pytest.approx(0.5)
    assert warmup_cosine_lr(100, 100, 10, 1.0) == pytest.approx(0.0, abs=1e-12)


# --- the methods ----------------------------------------------------------------------------------


def test_reference_settings_views_and_checkpoint_keys():
    expected = {  # solo-learn's scripts/pretrain/cifar/*.yaml
        "byol": (1.0, LARS, 1e-5, [512, 4096, 256], {"target", "predictor", "momentum"}),
        "simsiam": (0.5, torch.optim.SGD, 1e-5, [512, 2048, 2048, 2048], {"predictor"}),
        "barlowtwins": (0.3, LARS, 1e-4, [512, 2048, 2048, 2048], set()),
        "vicreg": (0.3, LARS, 1e-4, [512, 2048, 2048, 2048], set()),
    }
    for name, (lr, optimizer, decay, sizes, extra_keys) in expected.items():
        method = METHODS[name](build_backbone("resnet18", "cifar"), 10)
        linears = [layer for layer in method.projector if isinstance(layer, torch.nn.Linear)]
        assert [linears[0].in_features] + [layer.out_features for layer in linears] == sizes, name
        assert (method.lr, type(method.optimizer), method.optimizer.defaults["weight_decay"]) == (lr, optimizer, decay)
        assert method.default_batch_size == 256 and method.optimizer.defaults["momentum"] == 0.9
        assert set(method.checkpoint_state()) == {"backbone", "projector", "optimizer", "steps"} | extra_keys
    byol = BYOL(build_backbone("conv4"), 10)
    assert byol.view_groups == [
        ViewGroup(1, CropColorViews(jitter=(0.4, 0.4, 0.2, 0.1), blur_p=1.0)),
        ViewGroup(1, CropColorViews(jitter=(0.4, 0.4, 0.2, 0.1), blur_p=0.1, solarize_p=0.2)),
    ]
    assert byol.momentum == 0.99 and byol.predictor[0].out_features == 4096
    simsiam = METHODS["simsiam"](build_backbone("conv4"), 10)
    assert [group.get("static_lr", False) for group in simsiam.optimizer.param_groups] == [False, True]
    assert isinstance(simsiam.projector[-1], torch.nn.BatchNorm1d) and not simsiam.projector[-1].affine


@pytest.mark.parametrize(
    "name,option,value",
    [
        ("byol", "momentum", 1.5),
        ("simsiam", "projection", 0),
        ("barlowtwins", "off_diagonal_weight", -1.0),
        ("vicreg", "variance", float("nan")),
        ("vicreg", "warmup_epochs", -1),
        ("byol", "predictor_hidden", 2**17),
    ],
)
def test_bad_options_are_named(name, option, value):
    with pytest.raises(ConfigError) as raised:
        METHODS[name].Config(**{option: value})
    assert raised.value.fields == (option,) and str(raised.value).startswith(f"{option} {value}: ")


def test_byol_target_follows_with_the_scheduled_momentum():
    method = small("byol", momentum=0.9)
    method.total_steps = 10
    before = method.target[0].layer1.conv.weight.clone()
    with torch.no_grad():
        method.backbone.layer1.conv.weight.add_(1.0)
    method.after_step(1)
    torch.testing.assert_close(
        method.target[0].layer1.conv.weight, 0.9 * before + 0.1 * method.backbone.layer1.conv.weight
    )
    assert method.momentum == pytest.approx(cosine_momentum(1, 10, 0.9)) and method.steps == 1


# --- through the engine, on real images -----------------------------------------------------------


@pytest.fixture(scope="module")
def small_images(cifar10_root):
    """320 real CIFAR-10 images shrunk to 16 px: the same code path at a quarter of the cost."""
    data = load_dataset("cifar10", "train", cifar10_root, download=False).balanced_subset(320, seed=0)
    return dataclasses.replace(
        data, images=F.interpolate(data.images.float(), size=16, mode="area").round().to(torch.uint8)
    )


@pytest.mark.parametrize("name", BASELINES)
def test_learns_without_collapse(small_images, tmp_path, name):
    """150 steps of 32 images with the reference learning rate: the loss falls, and neither
    the projections (solo-learn's `feature_std`, 1/sqrt(256) = 0.0625 for evenly spread ones)
    nor the backbone's normalised features collapse (a collapsed batch gives 0)."""
    method = small(name)
    engine_for(method, small_images, tmp_path, epochs=15, batch=32, checkpoints=False).fit()
    rows = read_log(tmp_path / "log.csv")
    losses = [float(row["loss"]) for row in rows]
    late = sum(losses[-3:]) / 3
    assert losses[0] - late > max(0.02 * abs(losses[0]), 0.1), losses
    assert float(rows[-1]["feature_std"]) > 0.02, rows[-1]
    features = F.normalize(extract_features(method.backbone, small_images, torch.device("cpu")), dim=1)
    assert features.std(dim=0).mean() > 0.02


@pytest.mark.parametrize("name", BASELINES)
def test_resume_inside_an_epoch_is_exact(small_images, tmp_path, name):
    data = small_images.balanced_subset(64, seed=0)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    straight.mkdir(), resumed.mkdir()
    reference = small(name)
    engine_for(reference, data, straight, epochs=2, batch=16).fit()

    plan = {"rolling_checkpoint": resumed / "last.tar"}
    stopped = engine_for(small(name), data, resumed, epochs=2, batch=16, plan_options=plan)
    interrupt_at(stopped, 1)
    with pytest.raises(RunInterrupted):
        stopped.fit()
    state = load(resumed / "last.tar")
    assert state["interrupted"]["steps_done"] == 2 and state["steps"] == 2
    again = small(name, seed=5)  # other initial weights: everything must come from the file
    again.load_checkpoint_state(state)
    engine_for(again, data, resumed, epochs=2, batch=16, plan_options=plan).fit(state["epoch"], state)

    assert again.steps == reference.steps == 8
    assert again.optimizer.param_groups[0]["lr"] == reference.optimizer.param_groups[0]["lr"]
    if name == "byol":
        assert again.momentum == reference.momentum > 0.99
    for key, value in reference.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key
    strip = lambda rows: [{k: v for k, v in row.items() if k != "seconds"} for row in rows]  # noqa: E731
    assert strip(read_log(straight / "log.csv")) == strip(read_log(resumed / "log.csv"))
