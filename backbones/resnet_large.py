"""ImageNet-style ResNets without `fc` (ResNet-18, -34 and -50); keys equal torchvision's.

ResNet-18 and ResNet-50 come with either stem (`STEMS`): torchvision's ImageNet stem or the
CIFAR stem of relic-pytorch. ResNet-34 is the paper's and keeps the ImageNet stem only.
"""

from __future__ import annotations

import torch
from torch import nn

from backbones.init import init_weights
from backbones.resnet_small import BasicBlock, BlockClass, make_stage, projection_shortcut

STEMS = ("cifar", "imagenet")


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (x4) plus shortcut; key names match torchvision's Bottleneck.

    The stride sits on the 3x3 conv, as in torchvision (ResNet v1.5), so its weights load.
    """

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int = 1):
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = projection_shortcut(in_channels, out_channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNetLarge(nn.Module):
    """Stem, four stages of `block`s, global average pool.

    The ImageNet stem (7x7/2 conv + 3x3/2 max-pool) brings a 32 px input to layer4 as a 1x1
    map; the paper's ResNet-34 keeps it for every input size, as the original does. The CIFAR
    stem (3x3/1 conv, no max-pool) keeps 32 px images at 4x4 there; its max-pool is an
    identity, so the state-dict keys stay torchvision's.
    """

    name = "resnet_large"

    def __init__(self, blocks: list[int], block: BlockClass = BasicBlock, stem: str = "imagenet"):
        super().__init__()
        if stem not in STEMS:
            raise ValueError(f"unknown stem '{stem}': choose one of {', '.join(STEMS)}")
        widths = [64, 128, 256, 512]
        self.channels = [64] + [width * block.expansion for width in widths]
        self.feature_size = self.channels[-1]
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        else:
            self.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1) if stem == "imagenet" else nn.Identity()
        self.layer1 = make_stage(self.channels[0], widths[0], blocks[0], 1, block)
        self.layer2 = make_stage(self.channels[1], widths[1], blocks[1], 2, block)
        self.layer3 = make_stage(self.channels[2], widths[2], blocks[2], 2, block)
        self.layer4 = make_stage(self.channels[3], widths[3], blocks[3], 2, block)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        init_weights(self)

    def first_layer_features(self, x: torch.Tensor) -> torch.Tensor:
        """Stem map after ReLU, before max-pool: (N, 64, H/2, W/2), or (N, 64, H, W) with the
        CIFAR stem."""
        return self.relu(self.bn1(self.conv1(x)))

    def forward_with_first_layer(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(features, first-layer map) from one pass, for methods that need both (DIM)."""
        first = self.first_layer_features(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.maxpool(first)))))
        return torch.flatten(self.avgpool(x), 1), first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_first_layer(x)[0]


def resnet18(stem: str) -> ResNetLarge:
    return ResNetLarge([2, 2, 2, 2], BasicBlock, stem)


def resnet34() -> ResNetLarge:
    return ResNetLarge([3, 4, 6, 3])


def resnet50(stem: str) -> ResNetLarge:
    return ResNetLarge([3, 4, 6, 3], Bottleneck, stem)
