"""A state dict's backbone and stem are told from its weights, and a mismatch is refused with the fix."""

from __future__ import annotations

import pytest

from backbones import build_backbone
from backbones.identify import check_backbone_identity, identify_backbone
from utils.errors import UserError


def backbone_state(name: str, stem: str | None = None) -> dict:
    """The state dict of backbone `name`, freshly initialised."""
    return build_backbone(name, stem).state_dict()


def refusal(*args) -> str:
    with pytest.raises(UserError) as error:
        check_backbone_identity(*args)
    message = str(error.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    "name,stem",
    [
        ("conv4", None),
        ("resnet34", None),
        ("resnet18", "cifar"),
        ("resnet18", "imagenet"),
        ("resnet50", "cifar"),
        ("resnet50", "imagenet"),
    ],
)
def test_the_backbone_and_stem_of_a_checkpoint_are_told_from_its_weights(name, stem):
    state = backbone_state(name, stem)
    assert identify_backbone(state) == (name, stem)
    assert check_backbone_identity(state, name, "c.tar") == stem  # --stem auto takes the checkpoint's
    assert check_backbone_identity(state, name, "c.tar", stem) == stem


def test_a_checkpoint_of_another_stem_or_backbone_is_refused_with_the_fix():
    cifar = backbone_state("resnet18", "cifar")
    assert (
        refusal(cifar, "resnet18", "c.tar", "imagenet")
        == "checkpoint c.tar holds a resnet18 backbone with the cifar stem, not the imagenet stem: pass --stem cifar"
    )
    assert (
        refusal(cifar, "resnet50", "c.tar")
        == "checkpoint c.tar holds a resnet18 backbone with the cifar stem, not resnet50: pass --backbone resnet18"
    )
    assert refusal(cifar, "resnet50", "c.tar", "imagenet").endswith("pass --backbone resnet18 --stem cifar")
    assert (
        refusal(backbone_state("conv4"), "resnet18", "c.tar", "cifar")
        == "checkpoint c.tar holds a conv4 backbone, not resnet18: pass --backbone conv4"
    )
    assert refusal(backbone_state("resnet50", "imagenet"), "resnet34", "c.tar").endswith("pass --backbone resnet50")


def test_a_stem_for_a_single_stem_backbone_is_refused_before_the_weights_are_compared():
    assert refusal(backbone_state("resnet34"), "resnet34", "c.tar", "imagenet").startswith(
        "--stem imagenet: backbone resnet34 has a single stem; drop --stem"
    )
