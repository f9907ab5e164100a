"""What swav and dino share: two global views of every image, optionally multi-crop's smaller
local views (Caron et al. 2020), each view through the backbone on its own as solo-learn
forwards them (so batch-norm statistics are per view), and prototypes whose gradient can be
held at zero for the first epochs.

Multi-crop is off by default, as in solo-learn's CIFAR configurations (`local_views` 0). The
local views are crops of a smaller scale resized to `local_size_ratio` of the images' side:
3/7 is the papers' 96 of 224 pixels, 13 pixels on CIFAR. Everything else (the optimizer, the
warm-up cosine learning rate, the step count in the checkpoint) is `TwoViewMethod`'s.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import torch

from backbones import Backbone
from datasets.augment import CropColorViews
from methods.base import ViewGroup
from methods.config import MethodConfig, option
from methods.siamese import TwoViewMethod

# Every view is a full augmented copy of the batch through the backbone; the papers use up to 10.
MAX_LOCAL_VIEWS = 32


def zero_gradient(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor`'s values, passing a zero gradient back to it. The references set a frozen
    layer's gradient to None; a zero keeps the parameter in the graph (DDP under torchrun
    expects a gradient for every parameter it holds) and steps it the same: LARS moves a weight
    matrix with a zero gradient by its momentum buffer alone, which stays 0, and applies no
    weight decay to it, so the buffer an unfrozen step starts from is the same as with None."""
    return tensor.detach() + 0.0 * tensor


class MultiCropMethod(TwoViewMethod):
    """The shared part; a subclass gives its two global views and the local views' crop scale."""

    # The two global views (solo-learn's CIFAR augmentation of the method).
    global_views: ClassVar[tuple[CropColorViews, CropColorViews]]
    # The local views' crop scale; their colour augmentation is the first global view's.
    local_crop_scale: ClassVar[tuple[float, float]]

    @dataclass(frozen=True)
    class Config(TwoViewMethod.Config):
        local_views: int = option(
            0,
            "multi-crop: smaller views per image, scored against the global views only (0: none, "
            "as solo-learn's CIFAR settings)",
            at_least=0,
            at_most=MAX_LOCAL_VIEWS,
        )
        local_size_ratio: float = option(
            3 / 7, "side of the local views over the images' side (3/7: the papers' 96 of 224 px)", above=0, at_most=1
        )

    config: Config

    def __init__(
        self, backbone: Backbone, num_classes: int, config: MethodConfig | None = None, *, lr: float | None = None
    ):
        super().__init__(backbone, num_classes, config, lr=lr)
        self.view_groups = [ViewGroup(1, views) for views in self.global_views]
        if self.config.local_views:
            local = dataclasses.replace(
                self.global_views[0], crop_scale=self.local_crop_scale, size_ratio=self.config.local_size_ratio
            )
            self.view_groups.append(ViewGroup(self.config.local_views, local))

    def each_view(self, views: list[torch.Tensor]) -> list[torch.Tensor]:
        """The views of a step, one (B, C, H, W) tensor each: the two global views, then the
        local ones (a group of V views is view-major, rows v*B .. v*B+B-1 are view v)."""
        return [view for group, batch in zip(self.view_groups, views) for view in batch.chunk(group.count)]
