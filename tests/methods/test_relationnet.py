"""Relation pairs, focal loss and a real training run of the relationnet method."""

from __future__ import annotations

import pytest
import torch

from methods.config import ConfigError
from methods.losses import binary_cross_entropy, focal_loss
from methods.relationnet import AGGREGATIONS, RelationNet, aggregate
from tests.helpers import GOLDEN as GOLDEN_DIR

GOLDEN = GOLDEN_DIR / "relationnet.pt"


def loop_aggregate(features: torch.Tensor, K: int, aggregation: str):
    """The original code's pair construction, written as its plain double loop."""
    size = features.shape[0] // K
    pairs, targets, shift = [], [], 1
    combine = {
        "cat": lambda a, b: torch.cat([a, b], 1),
        "sum": lambda a, b: a + b,
        "mean": lambda a, b: (a + b) / 2.0,
        "max": lambda a, b: torch.stack([a, b], 2).max(2)[0],
    }[aggregation]
    for i in range(0, size * K, size):
        for j in range(i + size, size * K, size):
            first, second = features[i : i + size], features[j : j + size]
            pairs += [combine(first, second), combine(first, torch.roll(second, shifts=shift, dims=0))]
            targets += [torch.ones(size), torch.zeros(size)]
            shift += 1
            if shift >= size:
                shift = 1
    return torch.cat(pairs), torch.cat(targets)


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
@pytest.mark.parametrize("K,B", [(2, 1), (2, 2), (4, 5), (5, 7), (8, 3), (6, 16)])
def test_pairs_equal_the_plain_loop(K, B, aggregation):
    features = torch.randn(K * B, 6)
    pairs, targets = aggregate(features, K, aggregation)
    expected_pairs, expected_targets = loop_aggregate(features, K, aggregation)
    assert pairs.shape[0] == K * (K - 1) * B
    assert torch.equal(pairs, expected_pairs)
    assert torch.equal(targets, expected_targets)


def test_pairs_and_focal_loss_match_the_original_code():
    golden = torch.load(GOLDEN, weights_only=True)
    cases = [key for key in golden if key.startswith("K")]
    assert len(cases) == 12
    for key in cases:
        case = golden[key]
        pairs, targets = aggregate(case["features"], case["K"], key.rsplit("_", 1)[1])
        assert torch.equal(pairs, case["pairs"]), key
        assert torch.equal(targets, case["target"]), key
    focal = golden["focal_loss"]
    value = focal_loss(focal["logits"], focal["targets"], focal["gamma"], focal["alpha"])
    torch.testing.assert_close(value, focal["value"], rtol=1e-6, atol=1e-7)


def test_focal_loss_on_known_values():
    # z = 0: p = 0.5, BCE = log 2, (1 - p_t)^2 = 0.25, alpha factor 0.5 for both classes.
    zero = focal_loss(torch.zeros(4), torch.tensor([1.0, 0.0, 1.0, 0.0]))
    assert zero.item() == pytest.approx(0.5 * 0.25 * torch.log(torch.tensor(2.0)).item(), rel=1e-6)
    # A confident correct prediction costs almost nothing, a confident wrong one a lot.
    right = focal_loss(torch.tensor([8.0]), torch.tensor([1.0]))
    wrong = focal_loss(torch.tensor([-8.0]), torch.tensor([1.0]))
    assert right.item() < 1e-8 and wrong.item() > 3.9
    # gamma 0 and alpha None reduce it to plain BCE.
    logits, targets = torch.randn(50), torch.randint(0, 2, (50,)).float()
    torch.testing.assert_close(
        focal_loss(logits, targets, gamma=0.0, alpha=None),
        torch.nn.functional.binary_cross_entropy_with_logits(logits, targets),
    )


def _config(**overrides):
    return RelationNet.Config(**{"K": 4, "aggregation": "cat", "relation_loss": "focal", **overrides})


def test_positive_and_negative_accuracies_are_separate():
    from backbones import build_backbone

    torch.manual_seed(0)
    method = RelationNet(build_backbone("conv4"), 10, _config())
    # A head that always says "same image": every positive right, every negative wrong.
    with torch.no_grad():
        method.relation_module.linear2.weight.zero_()
        method.relation_module.linear2.bias.fill_(5.0)
    out = method.training_step([torch.randn(4 * 3, 3, 32, 32)], torch.zeros(3, dtype=torch.long), torch.arange(3))
    value = {k: (s / c).item() for k, (s, c) in out.metrics.items()}
    assert value == {"accuracy": 50.0, "accuracy_positive": 100.0, "accuracy_negative": 0.0}
    assert out.loss_weight == 4 * 3 * 3


def test_binary_cross_entropy_on_known_values():
    # z = 0 costs log 2 whatever the target; z = log 3 gives p = 3/4: -log(3/4) for a positive.
    assert binary_cross_entropy(torch.zeros(4), torch.tensor([1.0, 0.0, 1.0, 0.0])).item() == pytest.approx(
        torch.log(torch.tensor(2.0)).item(), rel=1e-6
    )
    positive = binary_cross_entropy(torch.log(torch.tensor([3.0])), torch.tensor([1.0]))
    assert positive.item() == pytest.approx(-torch.log(torch.tensor(0.75)).item(), rel=1e-6)
    assert binary_cross_entropy(torch.zeros(2, dtype=torch.bfloat16), torch.ones(2)).dtype == torch.float32


def test_relation_loss_bce_trains_the_head_with_plain_cross_entropy():
    from backbones import build_backbone

    views, labels, index = [torch.randn(4 * 3, 3, 32, 32)], torch.zeros(3, dtype=torch.long), torch.arange(3)
    losses = {}
    for name in ("focal", "bce"):
        torch.manual_seed(0)
        method = RelationNet(build_backbone("conv4"), 10, _config(relation_loss=name))
        method.train()
        losses[name] = method.training_step(views, labels, index).loss.item()
        logits, targets = method.relation_logits(method.backbone(views[0]))
        if name == "bce":
            assert losses[name] == pytest.approx(binary_cross_entropy(logits, targets).item(), rel=1e-5)
    # The focal factor (1 - p_t)^2 times alpha 0.5 makes the focal loss far smaller.
    assert losses["focal"] < losses["bce"] / 4


@pytest.mark.parametrize("overrides", [{"K": 1}, {"aggregation": "prod"}, {"relation_loss": "mse"}])
def test_bad_options_are_named(overrides):
    with pytest.raises(ConfigError) as raised:
        _config(**overrides)
    assert raised.value.fields == tuple(overrides) and str(raised.value).startswith(f"{next(iter(overrides))} ")
    assert "\n" not in str(raised.value)


def test_checkpoint_keys_are_the_original_ones():
    from backbones import build_backbone

    method = RelationNet(build_backbone("conv4"), 10, _config())
    state = method.checkpoint_state()
    assert set(state) == {"backbone", "relation", "optimizer"}
    assert set(state["relation"]) == {
        "linear1.weight",
        "linear1.bias",
        "bn1.weight",
        "bn1.bias",
        "bn1.running_mean",
        "bn1.running_var",
        "bn1.num_batches_tracked",
        "linear2.weight",
        "linear2.bias",
    }
    released = {"backbone": state["backbone"], "relation": state["relation"]}  # no optimizer
    RelationNet(build_backbone("conv4"), 10, _config()).load_checkpoint_state(released)


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_the_head_applied_before_pairing_equals_pairing_first(aggregation):
    """The step applies the head's first layer to the K*B features and then forms the pairs;
    logits and gradients must equal those of the head on the built pairs."""
    from backbones import build_backbone

    torch.manual_seed(0)
    model = RelationNet(build_backbone("conv4"), 10, RelationNet.Config(K=3, aggregation=aggregation))
    features = torch.randn(3 * 5, 64, requires_grad=True)
    logits, targets = model.relation_logits(features)
    pairs, expected_targets = aggregate(features, 3, aggregation)
    expected = model.relation_module(pairs).squeeze(1)
    assert torch.equal(targets, expected_targets)
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
    (grad,) = torch.autograd.grad(logits.square().sum(), features)
    (expected_grad,) = torch.autograd.grad(expected.square().sum(), features)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-4, atol=1e-5)
