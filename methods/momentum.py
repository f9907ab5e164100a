"""A momentum (EMA) target network: copied, then moved towards the online one on a cosine
schedule, as relic-pytorch (and BYOL) update it. Pure functions over modules."""

from __future__ import annotations

import math
from typing import Iterator

import torch
from torch import nn

from backbones import Backbone

# A backbone or a head: what holds the parameters and buffers a target network copies.
Network = nn.Module | Backbone


def _pairs(target: Network, online: Network) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(target tensor, online tensor) for every parameter and buffer of two equal architectures."""
    return zip([*target.parameters(), *target.buffers()], [*online.parameters(), *online.buffers()])


@torch.no_grad()
def copy_online(target: Network, online: Network) -> None:
    """Every parameter and buffer of `target` set to `online`'s (the same architecture)."""
    for to, source in _pairs(target, online):
        to.copy_(source)


@torch.no_grad()
def momentum_update(target: Network, online: Network, gamma: float) -> None:
    """Target <- gamma target + (1 - gamma) online for every floating-point parameter and
    buffer (batch-norm running statistics too); integer buffers (batch counts) stay."""
    for to, source in _pairs(target, online):
        if to.is_floating_point():
            to.lerp_(source, 1.0 - gamma)


def cosine_momentum(step: int, total_steps: int, initial: float, final: float = 1.0) -> float:
    """gamma_k = final - (final - gamma_0) (cos(pi k / K) + 1) / 2: from `initial` at step 0 to
    `final` at K (solo-learn's MomentumUpdater: base_tau to final_tau)."""
    return final - (final - initial) * (math.cos(math.pi * step / total_steps) + 1.0) / 2.0
