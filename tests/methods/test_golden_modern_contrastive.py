"""The contrastive losses (MoCo v2+, MoCo v3, NNCLR) and the losses of the four two-view
baselines against solo-learn's own loss code run on the same inputs (`tests/golden/modern.pt`):
the loss and the gradient of every input that gets one. The tolerances absorb another CPU's
rounding of float32 reductions over a few dozen terms, nothing more."""

from __future__ import annotations

import pytest
import torch

from methods.losses import (
    barlow_twins_loss,
    moco_queue_loss,
    mocov3_loss,
    nearest_neighbours,
    negative_cosine_loss,
    nnclr_loss,
    normalised_mse_loss,
    vicreg_loss,
)
from tests.helpers import modern_golden

GOLDEN = modern_golden()
TOLERANCE = {"rtol": 1e-5, "atol": 1e-7}


def loss_and_gradients(loss_function, *inputs: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
    """The loss of `inputs` (copies that require a gradient) and each input's gradient."""
    leaves = [value.clone().requires_grad_(True) for value in inputs]
    loss = loss_function(*leaves)
    loss.backward()
    return loss.detach(), [leaf.grad for leaf in leaves]


@pytest.mark.parametrize("case", GOLDEN["mocov2plus"], ids=lambda case: f"T{case['temperature']}")
def test_moco_queue_loss_matches_solo_learn(case):
    # solo-learn keeps the queue as columns (D x K); this suite keeps rows (K x D).
    negatives = case["queue"].t()
    loss, (grad_query, grad_key) = loss_and_gradients(
        lambda query, key: moco_queue_loss(query, key, negatives, case["temperature"]), case["query"], case["key"]
    )
    torch.testing.assert_close(loss, case["loss"], **TOLERANCE)
    torch.testing.assert_close(grad_query, case["grad_query"], **TOLERANCE)
    assert grad_key is None  # the key network's output takes no gradient


@pytest.mark.parametrize("case", GOLDEN["mocov3"], ids=lambda case: f"T{case['temperature']}")
def test_mocov3_loss_matches_solo_learn(case):
    loss, (grad_query, grad_key) = loss_and_gradients(
        lambda query, key: mocov3_loss(query, key, case["temperature"]), case["query"], case["key"]
    )
    torch.testing.assert_close(loss, case["loss"], **TOLERANCE)
    torch.testing.assert_close(grad_query, case["grad_query"], **TOLERANCE)
    assert grad_key is None


def test_mocov3_loss_finds_each_rank_s_positives_by_the_key_offset():
    # Under torchrun the keys of all ranks are gathered: rank r's positives start at r * n.
    case = GOLDEN["mocov3"][0]
    other_rank = torch.randn_like(case["key"])
    gathered = torch.cat([other_rank, case["key"]])
    loss = mocov3_loss(case["query"], gathered, case["temperature"], key_offset=case["key"].shape[0])
    alone = mocov3_loss(case["query"], case["key"], case["temperature"])
    assert loss > alone  # the other rank's keys are extra negatives
    unrelated = mocov3_loss(case["query"], gathered, case["temperature"], key_offset=0)
    assert not torch.isclose(loss, unrelated)


def test_nnclr_neighbours_and_loss_match_solo_learn():
    (case,) = GOLDEN["nnclr"]
    index, neighbours = nearest_neighbours(case["z"], case["queue"])
    assert torch.equal(index, case["nn_index"]) and torch.equal(neighbours, case["neighbours"])
    loss, (grad_prediction,) = loss_and_gradients(
        lambda prediction: nnclr_loss(neighbours, prediction, case["temperature"]), case["prediction"]
    )
    torch.testing.assert_close(loss, case["loss"], **TOLERANCE)
    torch.testing.assert_close(grad_prediction, case["grad_prediction"], **TOLERANCE)


TWO_VIEW_LOSSES = {
    "byol": normalised_mse_loss,
    "simsiam": negative_cosine_loss,
    "barlowtwins": lambda first, second: barlow_twins_loss(
        first,
        second,
        off_diagonal_weight=GOLDEN["two_view"]["barlowtwins"]["lamb"],
        scale=GOLDEN["two_view"]["barlowtwins"]["scale_loss"],
    )[0],
    "vicreg": lambda first, second: vicreg_loss(
        first,
        second,
        GOLDEN["two_view"]["vicreg"]["sim_weight"],
        GOLDEN["two_view"]["vicreg"]["var_weight"],
        GOLDEN["two_view"]["vicreg"]["cov_weight"],
    )[0],
}


@pytest.mark.parametrize("name", list(TWO_VIEW_LOSSES))
def test_two_view_baseline_losses_match_solo_learn(name):
    case = GOLDEN["two_view"][name]
    loss, gradients = loss_and_gradients(TWO_VIEW_LOSSES[name], case["first"], case["second"])
    torch.testing.assert_close(loss, case["loss"], **TOLERANCE)
    for gradient, expected in zip(gradients, (case["grad_first"], case["grad_second"])):
        if expected is None:  # solo-learn detaches the target
            assert gradient is None
        else:
            torch.testing.assert_close(gradient, expected, **TOLERANCE)
