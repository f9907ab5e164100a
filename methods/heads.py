"""Heads and optimizer layouts the methods share, with the original code's key names."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from backbones import Backbone


class MLPHead(nn.Sequential):
    """The layers of `mlp_head`, by name: relationnet and deepcluster reach into them."""

    linear1: nn.Linear
    bn1: nn.BatchNorm1d
    relu: nn.LeakyReLU
    linear2: nn.Linear


def mlp_head(in_features: int, out_features: int) -> MLPHead:
    """Linear(in, 256) - BatchNorm1d - LeakyReLU - Linear(256, out), the head shape the original
    code gives relationnet, simclr and deepcluster, with its state-dict key names."""
    return MLPHead(
        OrderedDict(
            [
                ("linear1", nn.Linear(in_features, 256)),
                ("bn1", nn.BatchNorm1d(256)),
                ("relu", nn.LeakyReLU()),
                ("linear2", nn.Linear(256, out_features)),
            ]
        )
    )


def backbone_and_head_adam(backbone: Backbone, head: nn.Module, lr: float) -> torch.optim.Adam:
    """Adam with the original's two parameter groups (backbone first, then the head), so its
    optimizer state dicts load into this suite's methods."""
    return torch.optim.Adam([{"params": backbone.parameters(), "lr": lr}, {"params": head.parameters(), "lr": lr}])


def accuracy_sums(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(number correct as float, count) for arg-max predictions, without a host sync."""
    correct = (logits.argmax(dim=1) == target).sum().float()
    return correct, torch.full((), float(target.numel()), device=logits.device)


def projection_mlp(sizes: list[int], hidden_bias: bool = True, output_norm: bool = False) -> nn.Sequential:
    """Linear - BatchNorm1d - ReLU for each hidden size of `sizes` (input, hidden..., output),
    then a Linear to the output: the projectors and predictors of BYOL, SimSiam, Barlow Twins
    and VICReg. `output_norm`: the last Linear has no bias and is followed by a batch norm
    without affine parameters (SimSiam's projector; a bias before it would cancel)."""
    layers: list[nn.Module] = []
    for inputs, outputs in zip(sizes[:-2], sizes[1:-1]):
        layers += [nn.Linear(inputs, outputs, bias=hidden_bias), nn.BatchNorm1d(outputs), nn.ReLU()]
    layers.append(nn.Linear(sizes[-2], sizes[-1], bias=not output_norm))
    if output_norm:
        layers.append(nn.BatchNorm1d(sizes[-1], affine=False))
    return nn.Sequential(*layers)
