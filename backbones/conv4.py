"""Conv4: four conv-BN-ReLU-pool blocks (3->8->16->32->64 channels), 64-d features."""

from collections import OrderedDict

import torch
from torch import nn

from backbones.init import init_weights


def _block(in_channels: int, out_channels: int, pool: str) -> nn.Sequential:
    # `pool` doubles as the sub-module name ("avgpool" / "glbpool") to keep the original layout.
    pooling = nn.AvgPool2d(2, stride=2) if pool == "avgpool" else nn.AdaptiveAvgPool2d(1)
    return nn.Sequential(
        OrderedDict(
            [
                ("conv", nn.Conv2d(in_channels, out_channels, 3, stride=1, padding=1, bias=False)),
                ("bn", nn.BatchNorm2d(out_channels)),
                ("relu", nn.ReLU(inplace=True)),
                (pool, pooling),
            ]
        )
    )


class Conv4(nn.Module):
    """Four-block CNN; blocks 1-3 halve the resolution, block 4 pools globally."""

    name = "conv4"
    feature_size = 64

    def __init__(self):
        super().__init__()
        self.layer1 = _block(3, 8, "avgpool")
        self.layer2 = _block(8, 16, "avgpool")
        self.layer3 = _block(16, 32, "avgpool")
        self.layer4 = _block(32, 64, "glbpool")
        self.flatten = nn.Flatten()
        init_weights(self)

    def first_layer_features(self, x: torch.Tensor) -> torch.Tensor:
        """Block-1 map after ReLU, before pooling: (N, 8, H, W)."""
        return self.layer1.relu(self.layer1.bn(self.layer1.conv(x)))

    def forward_with_first_layer(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(features, first-layer map) from one pass, for methods that need both (DIM)."""
        first = self.first_layer_features(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1.avgpool(first))))
        return self.flatten(x), first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_first_layer(x)[0]
