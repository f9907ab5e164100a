"""ImageNet-style ResNet-34 without `fc`, 512-d features; keys equal torchvision's resnet34."""
import torch
from torch import nn

from backbones.init import init_weights
from backbones.resnet_small import make_stage


class ResNetLarge(nn.Module):
    """7x7/2 stem + max-pool, four stages of BasicBlocks, global average pool.

    The ImageNet stem is kept for every input size, as in the original: a 32 px input
    reaches layer4 as a 1x1 map.
    """

    name = "resnet_large"

    def __init__(self, blocks: list[int]):
        super().__init__()
        self.channels = [64, 64, 128, 256, 512]
        self.feature_size = self.channels[-1]
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = make_stage(64, 64, blocks[0], stride=1)
        self.layer2 = make_stage(64, 128, blocks[1], stride=2)
        self.layer3 = make_stage(128, 256, blocks[2], stride=2)
        self.layer4 = make_stage(256, 512, blocks[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        init_weights(self)

    def first_layer_features(self, x: torch.Tensor) -> torch.Tensor:
        """Stem map after ReLU, before max-pool: (N, 64, H/2, W/2)."""
        return self.relu(self.bn1(self.conv1(x)))

    def forward_with_first_layer(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(features, first-layer map) from one pass, for methods that need both (DIM)."""
        first = self.first_layer_features(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.maxpool(first)))))
        return torch.flatten(self.avgpool(x), 1), first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_first_layer(x)[0]


def resnet34() -> ResNetLarge:
    return ResNetLarge([3, 4, 6, 3])
