"""Backbone registry: name -> zero-argument constructor of a feature extractor."""
from typing import Callable

from torch import nn

from backbones.conv4 import Conv4
from backbones.resnet_large import resnet34
from backbones.resnet_small import resnet8, resnet32, resnet56

BACKBONES: dict[str, Callable[[], nn.Module]] = {
    "conv4": Conv4,
    "resnet8": resnet8,
    "resnet32": resnet32,
    "resnet56": resnet56,
    "resnet34": resnet34,
}


def build_backbone(name: str) -> nn.Module:
    """Build a freshly initialised backbone by name."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone '{name}': choose one of {', '.join(BACKBONES)}")
    return BACKBONES[name]()
