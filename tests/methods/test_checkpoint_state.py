"""A method's checkpoint state is checked against what the method built before any of it is
loaded: every refusal is one line naming the file and the entry, and leaves the method as it was."""

from __future__ import annotations

import math

import pytest
import torch

from tests.helpers import build_method, one_line
from utils.errors import UserError

CASES = [
    ("relic", "gamma", "x"),
    ("relic", "gamma", 1.5),
    ("relic", "gamma", math.nan),
    ("relic", "gamma", True),
    ("relic", "momentum_steps", -1),
    ("relic", "momentum_steps", 2.0),
    ("relic", "log_temperature", torch.tensor(1.0, dtype=torch.float64)),
    ("relic", "logit_bias", torch.zeros(2)),
    ("byol", "momentum", -0.5),
    ("byol", "steps", "3"),
    ("mocov2plus", "queue_pointer", 32768),
    ("mocov2plus", "queue_pointer", 1.0),
    ("mocov2plus", "queue", {"rows": torch.zeros(2, 1024, 256)}),
    ("mocov3", "momentum", 1.01),
    ("nnclr", "queue_pointer", -1),
    ("nnclr", "queue", {"rows": torch.full((1, 65536, 256), math.nan)}),
    ("deepcluster", "cluster_assignments", torch.tensor([0, 1, 1000])),
    ("deepcluster", "cluster_assignments", torch.zeros(4)),
    ("deepcluster", "cluster_nmi", "0.5"),
    ("relationnet", "optimizer", {"state": {}, "param_groups": []}),
    ("relationnet", "relation", {}),
]


@pytest.mark.parametrize("method_name, key, value", CASES)
def test_a_field_that_does_not_fit_is_refused_in_one_line_and_nothing_is_loaded(method_name, key, value):
    method = build_method(method_name)
    state = method.checkpoint_state()
    untouched = {name: tensor.clone() for name, tensor in method.state_dict().items()}
    with pytest.raises(UserError) as refusal:
        method.load_checkpoint_state({**state, key: value}, "crafted.tar")
    message = one_line(refusal.value)
    assert "crafted.tar" in message and f"'{key}" in message
    assert all(torch.equal(tensor, untouched[name]) for name, tensor in method.state_dict().items())


@pytest.mark.parametrize("method_name", ["relic", "byol", "deepcluster", "relationnet", "simsiam"])
def test_a_state_the_method_wrote_loads(method_name):
    method = build_method(method_name)
    build_method(method_name, 2).load_checkpoint_state(method.checkpoint_state(), "own.tar")


def test_a_nan_that_is_not_known_yet_is_kept():
    """Deepcluster's NMI is NaN before its second clustering: a state saved then loads."""
    method = build_method("deepcluster")
    assert math.isnan(method.checkpoint_state()["cluster_nmi"])
    method.load_checkpoint_state(method.checkpoint_state())


@pytest.mark.parametrize(
    "method,attribute", [("relic", "target_backbone"), ("byol", "backbone"), ("standard", "backbone")]
)
def test_the_evaluated_backbone_is_the_one_saved_as_backbone(method, attribute):
    built = build_method(method)
    assert built.evaluated_backbone is getattr(built, attribute)
    assert built.evaluated_backbone.state_dict().keys() == built.checkpoint_state()["backbone"].keys()
