"""SimCLR (Chen et al. 2020), the contrastive baseline, as the original code trains it.

Two augmented views of each image go through the backbone and a projection head; the loss
pulls the two projections of an image together against those of the other images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from backbones import Backbone
from datasets.augment import CropColorViews
from methods.base import Method, StepOutput, ViewGroup
from methods.config import ConfigError, MethodConfig, option
from methods.heads import backbone_and_head_adam, mlp_head
from methods.losses import nt_xent_loss, simclr_original_loss
from utils.distributed import gather_with_gradient

# `original` is the -log(mean ratio) form of the original code, `ntxent` the usual mean of logs.
SIMCLR_LOSSES = {"original": simclr_original_loss, "ntxent": nt_xent_loss}


# The original loss sums exp(similarity / T) directly: exp(50) is still far from float32's limit
# (about exp(88)), exp(1/1e-30) overflows. NT-Xent works on the logits, which stay finite far lower.
MIN_TEMPERATURE = {"original": 0.02, "ntxent": 1e-3}
MAX_TEMPERATURE = 100.0


class SimCLR(Method):
    name = "simclr"
    checkpoint_keys = {"backbone": "backbone", "head": "head", "optimizer": "optimizer"}
    per_view_batch_norm = False  # the original stacks the two views into one batch
    normalises_inputs = True  # the original's Normalize with the data set's mean and std

    @dataclass(frozen=True)
    class Config(MethodConfig):
        temperature: float = option(
            0.5, "softmax temperature of the loss", at_least=MIN_TEMPERATURE["ntxent"], at_most=MAX_TEMPERATURE
        )
        loss: Literal["original", "ntxent"] = option(
            "original",
            "'original' (-log of the mean ratio, as the original code) or 'ntxent' (mean of -log ratios)",
            flag="simclr_loss",
        )
        gather: bool = option(
            False,
            "under torchrun: contrast each image with the images of all ranks, not only those of its own rank's batch",
            flag="simclr_gather",
        )

        def __post_init__(self) -> None:
            super().__post_init__()
            lowest = MIN_TEMPERATURE[self.loss]
            if self.temperature < lowest:
                why = " (exp(1/T) overflows below; ntxent takes smaller ones)" if self.loss == "original" else ""
                raise ConfigError(
                    ("temperature", "loss"),
                    f"a temperature of {self.temperature} is below "
                    f"{lowest:g}, the least with the {self.loss} loss{why}",
                )

    config: Config

    def __init__(self, backbone: Backbone, num_classes: int, config: Config | None = None, *, lr: float | None = None):
        super().__init__(backbone, num_classes, config, lr=lr)
        self.temperature = self.config.temperature
        self.loss_function = SIMCLR_LOSSES[self.config.loss]
        self.gather = self.config.gather
        self.head = mlp_head(backbone.feature_size, 64)
        self.optimizer = backbone_and_head_adam(self.backbone, self.head, self.lr)

    @property
    def view_groups(self) -> list[ViewGroup]:
        return [ViewGroup(2, CropColorViews())]  # the original's simclr pipeline is relationnet's

    def training_step(self, views: list[torch.Tensor], labels: torch.Tensor, index: torch.Tensor) -> StepOutput:
        projections = self.head(self.forward_views(self.backbone, views[0], 2))
        if self.gather:  # keep view-major order over the global batch: all first views, then all second
            first, second = projections.chunk(2)
            projections = torch.cat([gather_with_gradient(first), gather_with_gradient(second)])
        loss = self.loss_function(projections, self.temperature)
        return StepOutput(loss=loss, loss_weight=views[0].shape[0])
