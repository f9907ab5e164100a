"""mocov2plus, mocov3 and nnclr: the feature queue, the reference settings, what a step does
to the queue and the momentum, learning on real images, and exact resume inside an epoch
(queue, pointer, momentum and step count included). Their losses are checked against
solo-learn's in test_golden_modern_contrastive.py."""

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
from methods.base import ViewGroup
from methods.config import ConfigError
from methods.momentum import cosine_momentum
from methods.optimizers import LARS
from methods.queues import FeatureQueue
from tests.helpers import engine_for, interrupt_at, load, read_log

CONTRASTIVE = ("mocov2plus", "mocov3", "nnclr")


def small(name: str, seed: int = 0, **options):
    """A seeded method on Conv-4 with small heads and queues (the tests' cost, not the method);
    `options` are fields of its config."""
    torch.manual_seed(seed)
    sizes = {"hidden": 128, "projection": 32, "warmup_epochs": 1}
    extra = {"mocov2plus": {"queue_size": 64}, "mocov3": {"predictor_hidden": 128}}.get(
        name, {"queue_size": 64, "predictor_hidden": 128}
    )
    method_class = METHODS[name]
    return method_class(build_backbone("conv4"), 10, method_class.Config(**{**sizes, **extra, **options}))


# --- the queue ------------------------------------------------------------------------------------


def test_queue_starts_with_unit_rows_and_overwrites_the_oldest_wrapping_round():
    queue = FeatureQueue(size=5, dim=3, lists=2)
    torch.testing.assert_close(queue.rows.norm(dim=-1), torch.ones(2, 5))
    first = torch.arange(2 * 3 * 3, dtype=torch.float).reshape(2, 3, 3)
    assert queue.push(first, 0) == 3 and torch.equal(queue.rows[:, :3], first)
    second = -first
    assert queue.push(second, 3) == 1  # rows 3, 4, then 0
    assert torch.equal(queue.rows[:, 3:], second[:, :2]) and torch.equal(queue.rows[:, 0], second[:, 2])
    assert torch.equal(queue.rows[:, 1:3], first[:, 1:])  # not yet overwritten
    many = torch.randn(2, 7, 3)  # more rows than the queue holds: the last five stay
    assert queue.push(many, 1) == 3
    assert torch.equal(queue.rows[:, [3, 4, 0, 1, 2]], many[:, 2:])


# --- settings and options -------------------------------------------------------------------------


def test_reference_settings_views_and_checkpoint_keys():
    expected = {  # solo-learn's scripts/pretrain/cifar/{mocov2plus,mocov3,nnclr}.yaml
        "mocov2plus": (0.3, torch.optim.SGD, 1e-4, [512, 2048, 256], {"target", "momentum", "queue", "queue_pointer"}),
        "mocov3": (0.3, LARS, 1e-6, [512, 4096, 256], {"target", "momentum", "predictor"}),
        "nnclr": (0.4, LARS, 1e-5, [512, 2048, 2048, 256], {"predictor", "queue", "queue_pointer"}),
    }
    for name, (lr, optimizer, decay, sizes, extra_keys) in expected.items():
        method = METHODS[name](build_backbone("resnet18", "cifar"), 10)
        linears = [layer for layer in method.projector if isinstance(layer, torch.nn.Linear)]
        assert [linears[0].in_features] + [layer.out_features for layer in linears] == sizes, name
        assert (method.lr, type(method.optimizer), method.optimizer.defaults["weight_decay"]) == (lr, optimizer, decay)
        assert method.default_batch_size == 256 and method.optimizer.defaults["momentum"] == 0.9
        assert method.warmup_epochs == 10 and method.drop_last
        assert set(method.checkpoint_state()) == {"backbone", "projector", "optimizer", "steps"} | extra_keys
        assert method.config.temperature == 0.2
    mocov2plus, mocov3, nnclr = (METHODS[name](build_backbone("conv4"), 10) for name in CONTRASTIVE)
    assert mocov2plus.view_groups == [ViewGroup(1, CropColorViews(jitter=(0.4, 0.4, 0.4, 0.1), blur_p=0.5))] * 2
    # solo-learn's CIFAR asymmetric.yaml: BYOL's jitter, no blur, solarize p 0.2 in the second view.
    asymmetric = [
        ViewGroup(1, CropColorViews(jitter=(0.4, 0.4, 0.2, 0.1))),
        ViewGroup(1, CropColorViews(jitter=(0.4, 0.4, 0.2, 0.1), solarize_p=0.2)),
    ]
    assert mocov3.view_groups == nnclr.view_groups == asymmetric
    # MoCo v2+: no batch norm in the projector; 32,768 keys per view.
    assert not any(isinstance(layer, torch.nn.BatchNorm1d) for layer in mocov2plus.projector)
    assert mocov2plus.queue.rows.shape == (2, 32768, 256) and mocov2plus.queue_pointer == 0
    assert (mocov2plus.momentum, mocov2plus.config.final_momentum) == (0.99, 0.999)
    # MoCo v3: no biases; the projector ends in a batch norm without affine parameters.
    assert all(
        layer.bias is None for layer in [*mocov3.projector, *mocov3.predictor] if isinstance(layer, torch.nn.Linear)
    )
    assert not mocov3.projector[-1].affine and not isinstance(mocov3.predictor[-1], torch.nn.BatchNorm1d)
    assert mocov3.predictor[0].out_features == 4096 and (mocov3.momentum, mocov3.config.final_momentum) == (0.99, 1.0)
    # NNCLR: the projector ends in an affine batch norm; 65,536 projections in the support set.
    assert nnclr.projector[-1].affine and nnclr.predictor[0].out_features == 4096
    assert nnclr.queue.rows.shape == (1, 65536, 256)


@pytest.mark.parametrize(
    "name,options,fields",
    [
        ("mocov2plus", {"queue_size": 0}, ("queue_size",)),
        ("mocov2plus", {"temperature": 0.0}, ("temperature",)),
        ("mocov2plus", {"final_momentum": 0.9}, ("momentum", "final_momentum")),
        ("mocov3", {"momentum": 0.995, "final_momentum": 0.99}, ("momentum", "final_momentum")),
        ("mocov3", {"predictor_hidden": 2**17}, ("predictor_hidden",)),
        ("nnclr", {"queue_size": 2**21}, ("queue_size",)),
    ],
)
def test_bad_options_are_named(name, options, fields):
    with pytest.raises(ConfigError) as raised:
        METHODS[name].Config(**options)
    assert raised.value.fields == fields


# --- a step ---------------------------------------------------------------------------------------


def step(method, views):
    out = method.training_step(views, torch.zeros(len(views[0]), dtype=torch.long), torch.arange(len(views[0])))
    method.optimizer.zero_grad()
    out.loss.backward()
    method.optimizer.step()
    return out


@pytest.mark.parametrize("name", ("mocov2plus", "nnclr"))
def test_a_step_puts_its_projections_into_the_queue(name):
    method = small(name).train()
    views = [torch.randn(8, 3, 32, 32), torch.randn(8, 3, 32, 32)]
    # What goes in: the key network's unit projections of both views (mocov2plus), the
    # first view's unit projections (nnclr), as the step computes them (batch statistics).
    with torch.no_grad():
        if name == "mocov2plus":
            expected = torch.stack([F.normalize(method.target(view), dim=-1) for view in views])
        else:
            expected = F.normalize(method.projector(method.backbone(views[0])), dim=-1)[None]
    before = method.queue.rows.clone()
    method.queue_pointer = 60  # the eight new rows go to 60..63 and 0..3
    step(method, views)
    assert method.queue_pointer == 4
    torch.testing.assert_close(method.queue.rows[:, [60, 61, 62, 63, 0, 1, 2, 3]], expected)
    assert torch.equal(method.queue.rows[:, 4:60], before[:, 4:60])


@pytest.mark.parametrize("name", ("mocov2plus", "mocov3"))
def test_the_target_follows_on_the_schedule_from_base_to_final_momentum(name):
    method = small(name, momentum=0.9, final_momentum=0.99)
    method.total_steps = 10
    before = method.target[0].layer1.conv.weight.clone()
    with torch.no_grad():
        method.backbone.layer1.conv.weight.add_(1.0)
    method.after_step(1)
    torch.testing.assert_close(
        method.target[0].layer1.conv.weight, 0.9 * before + 0.1 * method.backbone.layer1.conv.weight
    )
    assert method.momentum == pytest.approx(cosine_momentum(1, 10, 0.9, 0.99)) and method.steps == 1
    method.after_step(10)
    assert method.momentum == pytest.approx(0.99)


def test_cosine_momentum_runs_from_base_to_final():
    assert cosine_momentum(0, 100, 0.99, 0.999) == pytest.approx(0.99)
    assert cosine_momentum(50, 100, 0.99, 0.999) == pytest.approx(0.9945)
    assert cosine_momentum(100, 100, 0.99, 0.999) == pytest.approx(0.999)
    # Without a final momentum the schedule ends at 1, as BYOL's and ReLIC's.
    assert cosine_momentum(37, 100, 0.9) == pytest.approx(1 - 0.1 * (math.cos(math.pi * 0.37) + 1) / 2)


# --- through the engine, on real images -----------------------------------------------------------


@pytest.fixture(scope="module")
def small_images(cifar10_root):
    """320 real CIFAR-10 images shrunk to 16 px: the same code path at a quarter of the cost."""
    data = load_dataset("cifar10", "train", cifar10_root, download=False).balanced_subset(320, seed=0)
    return dataclasses.replace(
        data, images=F.interpolate(data.images.float(), size=16, mode="area").round().to(torch.uint8)
    )


@pytest.mark.parametrize("name", CONTRASTIVE)
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
    if "queue_pointer" in state:
        assert state["queue_pointer"] == 32
    again = small(name, seed=5)  # other initial weights and queue: everything must come from the file
    again.load_checkpoint_state(state)
    engine_for(again, data, resumed, epochs=2, batch=16, plan_options=plan).fit(state["epoch"], state)

    assert again.steps == reference.steps == 8
    assert again.optimizer.param_groups[0]["lr"] == reference.optimizer.param_groups[0]["lr"]
    assert getattr(again, "queue_pointer", None) == getattr(reference, "queue_pointer", None)
    assert getattr(again, "momentum", None) == getattr(reference, "momentum", None)
    for key, value in reference.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key
    strip = lambda rows: [{k: v for k, v in row.items() if k != "seconds"} for row in rows]  # noqa: E731
    assert strip(read_log(straight / "log.csv")) == strip(read_log(resumed / "log.csv"))
