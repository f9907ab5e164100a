"""What the suite needs of a backbone: the contract a new one fulfils.

A backbone is an `nn.Module` (a method registers it as a sub-module, saves its state dict
and may compile it) that maps a float batch (N, 3, H, W) to features (N, `feature_size`)
and can also return its first-layer feature map from the same pass (Deep InfoMax scores
features against it). `Backbone` states that contract as a `typing.Protocol`, so any
module with these members fits, derived from a class of this package or not. It lists
the `nn.Module` members the methods and the engine call on a backbone too: Python has no
type for "an `nn.Module` that also has `feature_size`", and the protocol is that type.
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping, Protocol, TypeVar

import torch
from torch import nn

# The type of the backbone a `train`, `eval`, `requires_grad_` or `to` call returns: the same one.
SameBackbone = TypeVar("SameBackbone", bound="Backbone")


class Backbone(Protocol):
    """A feature extractor: `backbone(images)` gives (N, `feature_size`) features."""

    feature_size: int
    training: bool

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...

    def forward_with_first_layer(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(features, first-layer map) from one pass."""
        ...

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]: ...

    def buffers(self, recurse: bool = True) -> Iterator[torch.Tensor]: ...

    def modules(self) -> Iterator[nn.Module]: ...

    def train(self: SameBackbone, mode: bool = True) -> SameBackbone: ...

    def eval(self: SameBackbone) -> SameBackbone: ...

    def requires_grad_(self: SameBackbone, requires_grad: bool = True) -> SameBackbone: ...

    def to(self: SameBackbone, device: torch.device | str) -> SameBackbone: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True) -> Any: ...
