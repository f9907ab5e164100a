"""Batch-norm statistics per view in one batched forward (`methods/view_statistics.py`), and the
methods' declared view statistics and input range."""

from __future__ import annotations

import copy
from unittest import mock

import pytest
import torch
from torch import nn

import methods.base
from backbones import build_backbone
from methods import METHODS
from methods.view_statistics import batch_norm_per_view, forward_views


def one_by_one(network, views: torch.Tensor, count: int, per_view: bool) -> torch.Tensor:
    """What `forward_views` must equal: each view through the network on its own."""
    return torch.cat([network(view) for view in views.chunk(count)])


def batch_norms(network: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [module for module in network.modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)]


def assert_gradients_close(network: nn.Module, reference: nn.Module) -> None:
    """Gradients equal up to float rounding: the batched convolutions sum their weight gradients
    over the views in another order than separate forwards (2e-6 of a gradient's norm here)."""
    for (name, parameter), (_, expected) in zip(network.named_parameters(), reference.named_parameters()):
        error = (parameter.grad - expected.grad).norm() / expected.grad.norm().clamp(min=1e-12)
        assert error < 1e-5, (name, error.item())


def assert_running_statistics_equal(network: nn.Module, reference: nn.Module) -> None:
    for layer, expected in zip(batch_norms(network), batch_norms(reference)):
        assert layer.num_batches_tracked == expected.num_batches_tracked
        torch.testing.assert_close(layer.running_mean, expected.running_mean, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(layer.running_var, expected.running_var, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    "name,stem,momentum,steps", [("conv4", None, 0.1, 2), ("conv4", None, None, 2), ("resnet18", "cifar", 0.1, 1)]
)
def test_per_view_statistics_equal_forwarding_the_views_one_by_one(name, stem, momentum, steps):
    """Outputs, gradients and running statistics (moved once per view, in order, also with
    the cumulative average of momentum None), in train mode; views of 16 px keep it fast."""
    torch.manual_seed(0)
    network = build_backbone(name, stem)
    for layer in batch_norms(network):
        layer.momentum = momentum
    reference = copy.deepcopy(network)
    for step in range(steps):
        # Views of other scales and offsets, so pooled statistics differ from each view's.
        views = torch.randn(3 * 4, 3, 16, 16) * (step + 1) + torch.arange(3).repeat_interleave(4).view(-1, 1, 1, 1)
        out = forward_views(network, views, 3, per_view=True)
        expected = one_by_one(reference, views, 3, True)
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
        (out.square().sum() + out[:4].sum()).backward()
        (expected.square().sum() + expected[:4].sum()).backward()
        assert_gradients_close(network, reference)
        assert_running_statistics_equal(network, reference)
    assert batch_norms(network)[0].num_batches_tracked == 3 * steps
    # Pooled statistics normalise the three views together: other outputs, one batch counted.
    pooled = forward_views(network, views, 3, per_view=False)
    assert not torch.allclose(pooled, out, atol=1e-3)
    assert batch_norms(network)[0].num_batches_tracked == 3 * steps + 1
    torch.testing.assert_close(pooled, reference(views), rtol=1e-5, atol=1e-6)


def test_eval_mode_and_plain_calls_are_unaffected():
    torch.manual_seed(0)
    network = build_backbone("conv4")
    views = torch.randn(2 * 5, 3, 16, 16)
    network(views)  # running statistics away from their initial values
    network.eval()
    reference = copy.deepcopy(network)
    torch.testing.assert_close(forward_views(network, views, 2, per_view=True), reference(views), rtol=0, atol=0)
    assert_running_statistics_equal(network, reference)
    # Out of the block the layers are the plain ones again, in train mode too.
    network.train(), reference.train()
    torch.testing.assert_close(network(views), reference(views), rtol=0, atol=0)
    assert_running_statistics_equal(network, reference)
    # A copy of a network that went through the block is independent of the original.
    twin = copy.deepcopy(network)
    with batch_norm_per_view(twin, 2):
        twin(views)
    assert_running_statistics_equal(network, reference)


def test_rows_that_are_not_whole_views_are_refused():
    network = build_backbone("conv4")
    with pytest.raises(ValueError, match="7 rows cannot be split into 2 views"):
        forward_views(network, torch.randn(7, 3, 16, 16), 2, per_view=True)


def training_step_state(method, views: list[torch.Tensor]) -> tuple[torch.Tensor, dict, dict]:
    """A step's loss, the gradient of every parameter and the state dict after it."""
    out = method.training_step(views, torch.zeros(len(views[0]), dtype=torch.long), torch.arange(len(views[0])))
    out.loss.backward()
    gradients = {name: p.grad.clone() for name, p in method.named_parameters() if p.grad is not None}
    return out.loss.detach(), gradients, copy.deepcopy(method.state_dict())


@pytest.mark.parametrize(
    "name,options,shapes",
    [
        ("relic", {"local_views": 2}, [(2, 32), (2, 13)]),
        ("byol", {"hidden": 64, "projection": 32, "predictor_hidden": 64}, [(1, 32), (1, 32)]),
        ("barlowtwins", {"hidden": 64, "projection": 32}, [(1, 32), (1, 32)]),
    ],
)
def test_a_steps_loss_gradients_and_statistics_equal_forwarding_views_one_by_one(name, options, shapes):
    """The method's step (online and target networks, batch norm of heads included) against
    the same step with every view forwarded on its own."""
    torch.manual_seed(0)
    method = METHODS[name](build_backbone("conv4"), 10, METHODS[name].Config(**options))
    reference = copy.deepcopy(method)
    views = [torch.randn(count * 8, 3, side, side) for count, side in shapes]
    loss, gradients, state = training_step_state(method, views)
    with mock.patch.object(methods.base, "forward_views", one_by_one):
        expected_loss, expected_gradients, expected_state = training_step_state(reference, views)
    torch.testing.assert_close(loss, expected_loss, rtol=1e-5, atol=1e-6)
    assert gradients.keys() == expected_gradients.keys()
    for key, gradient in gradients.items():
        error = (gradient - expected_gradients[key]).norm() / expected_gradients[key].norm().clamp(min=1e-12)
        assert error < 1e-4, (key, error.item())
    for key, value in state.items():
        torch.testing.assert_close(value, expected_state[key], rtol=1e-5, atol=1e-6, msg=key)
    moved = [key for key in state if key.endswith("num_batches_tracked") and state[key] > 1]
    assert moved, "no batch norm counted a view"


def test_relic_can_take_the_packages_local_views():
    """R1 behind its switch: the online views are g0, g1, g0, g1, l0, l1 with 2 + 4 views."""
    torch.manual_seed(0)
    method = METHODS["relic"](build_backbone("conv4"), 10)
    views = [torch.randn(2 * 4, 3, 32, 32), torch.randn(4 * 4, 3, 13, 13)]
    corrected = method.online_projections(views)
    method.first_views_as_local = True
    package = method.online_projections(views)
    assert corrected.shape == package.shape == (6, 4, 64)
    torch.testing.assert_close(package[:2], corrected[:2])
    torch.testing.assert_close(package[2:4], corrected[:2])
    torch.testing.assert_close(package[4:], corrected[2:4])
    assert not torch.allclose(package[4:], corrected[4:])
    assert not METHODS["relic"].Config().first_views_as_local


# What each method's reference does: (batch-norm statistics per view, views normalised).
REFERENCE_VIEWS = {
    "relic": (True, False),  # relic-pytorch: one view per forward, [0, 1] pixels
    "byol": (True, True),  # solo-learn: one view per forward, normalised
    "simsiam": (True, True),
    "barlowtwins": (True, True),
    "vicreg": (True, True),
    "relationnet": (False, True),  # the original code: the views concatenated, normalised
    "simclr": (False, True),
    "rotationnet": (False, True),
    "deepcluster": (True, True),  # one view per image: per view and pooled coincide
    "deepinfomax": (True, True),
    "standard": (True, True),
}


@pytest.mark.parametrize("name", REFERENCE_VIEWS)
def test_each_method_declares_its_references_views(name):
    assert (METHODS[name].per_view_batch_norm, METHODS[name].normalises_inputs) == REFERENCE_VIEWS[name]
