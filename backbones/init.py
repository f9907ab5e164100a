"""The initialisation every backbone of the paper's code shares."""

from torch import nn


def init_weights(model: nn.Module) -> None:
    """He-normal convs (std sqrt(2 / (k*k*out_channels))), BN weight 1 and bias 0.

    This is the original init of every backbone; with the same seed it reproduces the
    original Conv4 and small-ResNet initial weights bit for bit.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)
