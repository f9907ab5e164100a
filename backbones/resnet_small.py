"""CIFAR-style ResNet (3 stages, widths 16/32/64, no max-pool), 64-d features."""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from backbones.init import init_weights


def projection_shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Sequential | None:
    """1x1 conv + BN where a block changes stride or width (torchvision's `downsample`), else None.

    Option B of the ResNet paper, not the zero-padding option A of its CIFAR models."""
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
    )


class BasicBlock(nn.Module):
    """Two 3x3 convs plus shortcut; key names match torchvision's BasicBlock."""

    expansion = 1

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample = projection_shortcut(in_channels, out_channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class BlockClass(Protocol):
    """A residual block's class (`BasicBlock`, `Bottleneck`): its constructor and how many times
    its width a block's output channels are."""

    expansion: int

    def __call__(self, in_channels: int, width: int, stride: int = 1, /) -> nn.Module: ...


def make_stage(in_channels: int, width: int, blocks: int, stride: int, block: BlockClass = BasicBlock) -> nn.Sequential:
    """`blocks` blocks of `width` (each outputs width x block.expansion channels); only the
    first one changes stride/width."""
    out_channels = width * block.expansion
    layers = [block(in_channels, width, stride)]
    layers += [block(out_channels, width) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class ResNetSmall(nn.Module):
    """3x3 stem, three stages of BasicBlocks, global average pool."""

    name = "resnet"

    def __init__(self, blocks: list[int]):
        super().__init__()
        self.channels = [16, 32, 64]
        self.feature_size = 64
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = make_stage(16, 16, blocks[0], stride=1)
        self.layer2 = make_stage(16, 32, blocks[1], stride=2)
        self.layer3 = make_stage(32, 64, blocks[2], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        init_weights(self)

    def first_layer_features(self, x: torch.Tensor) -> torch.Tensor:
        """Stem map after ReLU: (N, 16, H, W)."""
        return self.relu(self.bn1(self.conv1(x)))

    def forward_with_first_layer(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(features, first-layer map) from one pass, for methods that need both (DIM)."""
        first = self.first_layer_features(x)
        x = self.layer3(self.layer2(self.layer1(first)))
        return torch.flatten(self.avgpool(x), 1), first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_first_layer(x)[0]


def resnet8() -> ResNetSmall:
    return ResNetSmall([1, 1, 1])


def resnet32() -> ResNetSmall:
    return ResNetSmall([5, 5, 5])


def resnet56() -> ResNetSmall:
    return ResNetSmall([9, 9, 9])
