"""swav and dino (methods/swav.py, methods/dino.py over methods/multicrop.py): the reference
settings, refused options and checkpoint entries, multi-crop's views, each view through the
backbone on its own, SwAV's queue and prototypes, DINO's teacher, centre and temperature, a
loss that falls on real images, and exact resume inside an epoch. Their pure functions are
checked against solo-learn's values in test_golden_modern_prototypes.py."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from backbones import build_backbone
from datasets import load_dataset
from datasets.augment import CropColorViews
from engine.signals import RunInterrupted
from methods import METHODS
from methods.base import EpochContext, ViewGroup
from methods.config import ConfigError
from methods.dino import DINO
from methods.momentum import cosine_momentum
from methods.optimizers import LARS
from methods.swav import SwAV
from tests.helpers import build_method, engine_for, interrupt_at, load, one_line, read_log
from utils.errors import UserError

NAMES = ("swav", "dino")
# Small heads, one warm-up epoch: the tests' cost, not the reference settings.
SMALL = {"hidden": 128, "projection": 32, "prototypes": 64, "warmup_epochs": 1}


def small(name: str, seed: int = 0, **options):
    torch.manual_seed(seed)
    method_class = METHODS[name]
    return method_class(build_backbone("conv4"), 10, method_class.Config(**{**SMALL, **options}))


def context(method, epoch: int, total_epochs: int = 4, steps_per_epoch: int = 2) -> EpochContext:
    """An epoch's context with no data: these methods' epoch hooks read only where the run is."""
    empty = torch.empty(0)
    return EpochContext(epoch, total_epochs, steps_per_epoch, empty, empty, None, torch.device("cpu"), 0)  # type: ignore[arg-type]


# --- settings, options, checkpoint entries --------------------------------------------------------


def test_reference_settings_views_and_checkpoint_keys():
    swav, dino = SwAV(build_backbone("resnet18", "cifar"), 10), DINO(build_backbone("resnet18", "cifar"), 10)
    # solo-learn's scripts/pretrain/cifar/swav.yaml and dino.yaml, and its methods' defaults
    assert (swav.lr, dino.lr) == (0.6, 0.3)
    for method in (swav, dino):
        assert type(method.optimizer) is LARS and method.optimizer.defaults["weight_decay"] == 1e-6
        assert method.default_batch_size == 256 and method.config.warmup_epochs == 10
        assert method.config.local_views == 0 and len(method.view_groups) == 2
    assert [swav.projector[0].in_features, swav.projector[0].out_features, swav.projector[-1].out_features] == [
        512,
        2048,
        128,
    ]
    assert swav.prototypes.weight.shape == (3000, 128) and swav.queue.shape == (2, 3840, 128)
    config = swav.config
    assert (config.temperature, config.sinkhorn_iterations, config.sinkhorn_epsilon) == (0.1, 3, 0.05)
    assert (config.queue_start_epoch, config.freeze_prototypes_epochs) == (50, 2)
    assert swav.view_groups == [ViewGroup(1, CropColorViews(blur_p=0.5))] * 2
    linears = [layer for layer in dino.projector if isinstance(layer, torch.nn.Linear)]
    assert [(layer.in_features, layer.out_features) for layer in linears] == [(512, 2048), (2048, 2048), (2048, 256)]
    assert not any(isinstance(layer, torch.nn.BatchNorm1d) for layer in dino.projector)
    assert dino.prototypes.weight.shape == (4096, 256) and dino.center.shape == (1, 4096)
    config = dino.config
    assert (config.student_temperature, config.teacher_temperature, config.warmup_teacher_temperature) == (
        0.1,
        0.07,
        0.04,
    )
    assert (config.center_momentum, config.momentum, config.freeze_prototypes_epochs) == (0.9, 0.9995, 1)
    assert dino.view_groups == [
        ViewGroup(1, CropColorViews(jitter=(0.4, 0.4, 0.2, 0.1))),
        ViewGroup(1, CropColorViews(jitter=(0.4, 0.4, 0.2, 0.1), solarize_p=0.2)),
    ]
    assert set(swav.checkpoint_state()) == {"backbone", "projector", "prototypes", "queue", "optimizer", "steps"}
    assert set(dino.checkpoint_state()) == {
        *("backbone", "projector", "prototypes", "teacher", "center", "momentum", "optimizer", "steps")
    }
    assert swav.evaluated_backbone is swav.backbone and dino.evaluated_backbone is dino.backbone


@pytest.mark.parametrize(
    "name,option,value",
    [
        ("swav", "sinkhorn_epsilon", 0.01),
        ("swav", "queue_size", -1),
        ("swav", "local_views", 33),
        ("dino", "center_momentum", 1.5),
        ("dino", "student_temperature", 0.0),
        ("dino", "local_size_ratio", 0.0),
    ],
)
def test_bad_options_are_named(name, option, value):
    with pytest.raises(ConfigError) as raised:
        METHODS[name].Config(**{option: value})
    assert raised.value.fields == (option,) and str(raised.value).startswith(f"{option} {value}: ")


@pytest.mark.parametrize(
    "name,key,value",
    [
        ("swav", "queue", torch.zeros(2, 100, 128)),  # another queue size
        ("swav", "queue", torch.full((2, 3840, 128), 5.0)),  # not unit vectors
        ("swav", "queue", torch.full((2, 3840, 128), float("nan"))),
        ("dino", "center", torch.zeros(1, 10)),
        ("dino", "center", torch.full((1, 4096), -3.0)),
        ("dino", "momentum", 1.5),
        ("dino", "steps", -1),
    ],
)
def test_a_checkpoint_entry_that_does_not_fit_is_refused_in_one_line(name, key, value):
    method = build_method(name)
    untouched = {entry: tensor.clone() for entry, tensor in method.state_dict().items()}
    with pytest.raises(UserError) as refusal:
        method.load_checkpoint_state({**method.checkpoint_state(), key: value}, "crafted.tar")
    message = one_line(refusal.value)
    assert "crafted.tar" in message and f"'{key}'" in message
    assert all(torch.equal(tensor, untouched[entry]) for entry, tensor in method.state_dict().items())


# --- views ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_local_views_are_smaller_crops_forwarded_one_by_one(name):
    method = small(name, local_views=3)
    first = method.view_groups[0].views
    assert isinstance(first, CropColorViews)
    local = method.view_groups[2]
    assert local.count == 3 and local.views == dataclasses.replace(
        first, crop_scale=method.local_crop_scale, size_ratio=3 / 7
    )
    assert local.side(32) == 13 and local.side(96) == 41
    views = [torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32), torch.randn(12, 3, 13, 13)]
    each = method.each_view(views)
    assert [tuple(view.shape) for view in each] == [(4, 3, 32, 32)] * 2 + [(4, 3, 13, 13)] * 3
    assert torch.equal(each[3], views[2][4:8])
    # Each view through the backbone on its own: batch norm's running statistics are those of
    # one forward per view, not of one forward of all views.
    one_by_one = small(name, local_views=3)
    method.training_step(views, torch.zeros(4, dtype=torch.long), torch.arange(4))
    for view in each:
        one_by_one.backbone(view)
    for key, value in one_by_one.backbone.state_dict().items():
        torch.testing.assert_close(method.backbone.state_dict()[key], value, rtol=1e-6, atol=1e-7, msg=key)


# --- SwAV's queue and prototypes, DINO's teacher and centre ---------------------------------------


def test_swav_queue_fills_newest_first_and_joins_the_codes_from_its_epoch():
    method = small("swav", queue_size=6, queue_start_epoch=1)
    views = [torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)]
    batch = (views, torch.zeros(4, dtype=torch.long), torch.arange(4))
    method.on_epoch_start(context(method, 0))
    method.training_step(*batch)
    assert method.queue[:, 4:].abs().sum() == 0 and torch.allclose(method.queue[:, :4].norm(dim=-1), torch.ones(2, 4))
    first = method.queue[:, :4].clone()
    method.training_step(*batch)
    assert torch.equal(method.queue[:, 4:], first[:, :2])  # shifted back by a batch, the oldest dropped

    with torch.no_grad():
        scores = F.linear(F.normalize(torch.randn(4, 32), dim=1), method.prototypes.weight)
    alone = method.codes(scores, 0)
    method.on_epoch_start(context(method, 1))
    with_queue = method.codes(scores, 0)
    assert alone.shape == with_queue.shape == (4, 64) and not torch.allclose(alone, with_queue)
    torch.testing.assert_close(with_queue.sum(dim=1), torch.ones(4))


def test_swav_prototypes_are_frozen_for_their_epochs_and_unit_length_after_every_step(small_images, tmp_path):
    method = small("swav", freeze_prototypes_epochs=1, queue_size=0)
    assert torch.allclose(method.prototypes.weight.norm(dim=1), torch.ones(64))
    initial = method.prototypes.weight.detach().clone()
    engine = engine_for(method, small_images.balanced_subset(32, seed=0), tmp_path, epochs=1, batch=16)
    engine.fit()
    # Frozen: neither a step nor weight decay; only the normalisation's rounding.
    torch.testing.assert_close(method.prototypes.weight, initial, rtol=0, atol=1e-6)
    engine_for(method, small_images.balanced_subset(32, seed=0), tmp_path, epochs=2, batch=16).fit(1)
    assert (method.prototypes.weight - initial).abs().max() > 1e-3
    torch.testing.assert_close(method.prototypes.weight.norm(dim=1), torch.ones(64))


def test_dino_teacher_follows_with_the_scheduled_momentum_and_the_centre_moves():
    method = small("dino", momentum=0.9, warmup_teacher_temperature_epochs=3)
    temperatures = []
    for epoch in range(3):
        method.on_epoch_start(context(method, epoch, total_epochs=5))
        temperatures.append((method.teacher_temperature, method.prototypes.trains))
    assert temperatures == [(0.04, False), (pytest.approx(0.055), True), (0.07, True)]
    views = [torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)]
    with torch.no_grad():
        teacher = torch.cat([method.teacher(view) for view in views])
    method.training_step(views, torch.zeros(4, dtype=torch.long), torch.arange(4))
    torch.testing.assert_close(method.center, 0.1 * teacher.mean(dim=0, keepdim=True))

    before = method.teacher[0].layer1.conv.weight.clone()
    with torch.no_grad():
        method.backbone.layer1.conv.weight.add_(1.0)
    method.after_step(1)
    torch.testing.assert_close(
        method.teacher[0].layer1.conv.weight, 0.9 * before + 0.1 * method.backbone.layer1.conv.weight
    )
    assert method.momentum == pytest.approx(cosine_momentum(1, 10, 0.9)) and method.steps == 1


def test_dino_frozen_prototypes_pass_a_zero_gradient():
    method = small("dino")
    method.on_epoch_start(context(method, 0))
    views = [torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)]
    method.training_step(views, torch.zeros(4, dtype=torch.long), torch.arange(4)).loss.backward()
    assert method.prototypes.weight.grad.abs().sum() == 0 and method.projector[0].weight.grad.abs().sum() > 0
    method.zero_grad()
    method.on_epoch_start(context(method, 1))
    method.training_step(views, torch.zeros(4, dtype=torch.long), torch.arange(4)).loss.backward()
    assert method.prototypes.weight.grad.abs().sum() > 0


# --- through the engine, on real images -----------------------------------------------------------


@pytest.fixture(scope="module")
def small_images(cifar10_root):
    """320 real CIFAR-10 images shrunk to 16 px: the same code path at a quarter of the cost."""
    data = load_dataset("cifar10", "train", cifar10_root, download=False).balanced_subset(320, seed=0)
    return dataclasses.replace(
        data, images=F.interpolate(data.images.float(), size=16, mode="area").round().to(torch.uint8)
    )


def test_losses_fall_on_real_images(small_images, tmp_path):
    """Six epochs of ten steps on real images. SwAV's loss falls from the first epoch on
    (measured here: 6.053, 5.847, 5.657, 5.566, 5.551, 5.549). DINO's (its reference heads)
    first rises, as the centre takes away what the untrained student and teacher share (they
    start equal), then falls: 8.221, 8.348, 8.322, 8.315, 8.314, 8.313 (ln 4096 = 8.318)."""
    for name, options, first_epochs in (
        ("swav", {"hidden": 256, "projection": 64, "prototypes": 256, "queue_size": 0}, 1),
        ("dino", {"warmup_epochs": 1}, 2),
    ):
        torch.manual_seed(0)
        method_class = METHODS[name]
        method = method_class(build_backbone("conv4"), 10, method_class.Config(**{"warmup_epochs": 1, **options}))
        (tmp_path / name).mkdir()
        engine_for(method, small_images, tmp_path / name, epochs=6, batch=32, checkpoints=False).fit()
        losses = [float(row["loss"]) for row in read_log(tmp_path / name / "log.csv")]
        assert all(map(math.isfinite, losses)), (name, losses)
        peak = max(losses[:first_epochs])
        assert losses[-1] < min(losses[first_epochs:-1]) and peak - losses[-1] > 0.02, (name, losses)


@pytest.mark.parametrize("name", NAMES)
def test_resume_inside_an_epoch_is_exact(small_images, tmp_path, name):
    """Two epochs of four steps, interrupted after the second step and resumed: the weights, the
    optimizer, the queue or centre and momentum, and the log equal an uninterrupted run's. The
    queue joins the codes in the second epoch and the prototypes are frozen in the first."""
    # Local views of 8 px (half the side): the smallest conv4 takes.
    options = {"local_views": 2, "local_size_ratio": 0.5}
    options |= {"queue_size": 24, "queue_start_epoch": 1, "freeze_prototypes_epochs": 1} if name == "swav" else {}
    data = small_images.balanced_subset(64, seed=0)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    straight.mkdir(), resumed.mkdir()
    reference = small(name, **options)
    engine_for(reference, data, straight, epochs=2, batch=16).fit()

    plan = {"rolling_checkpoint": resumed / "last.tar"}
    stopped = engine_for(small(name, **options), data, resumed, epochs=2, batch=16, plan_options=plan)
    interrupt_at(stopped, 1)
    with pytest.raises(RunInterrupted):
        stopped.fit()
    state = load(resumed / "last.tar")
    assert state["interrupted"]["steps_done"] == 2 and state["steps"] == 2
    again = small(name, seed=5, **options)  # other initial weights: everything must come from the file
    again.load_checkpoint_state(state)
    engine_for(again, data, resumed, epochs=2, batch=16, plan_options=plan).fit(state["epoch"], state)

    assert again.steps == reference.steps == 8
    assert again.optimizer.param_groups[0]["lr"] == reference.optimizer.param_groups[0]["lr"]
    if name == "dino":
        assert again.momentum == reference.momentum > 0.9995
        assert reference.center.abs().sum() > 0
    else:
        assert reference.queue.abs().sum(dim=-1).gt(0).all()  # full: 24 projections of 4 steps
    for key, value in reference.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key
    assert torch.equal(
        reference.optimizer.state_dict()["state"][0]["momentum_buffer"],
        again.optimizer.state_dict()["state"][0]["momentum_buffer"],
    )
    strip = lambda rows: [{k: v for k, v in row.items() if k != "seconds"} for row in rows]  # noqa: E731
    assert strip(read_log(straight / "log.csv")) == strip(read_log(resumed / "log.csv"))
