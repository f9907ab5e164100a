"""Barlow Twins (Zbontar et al. 2021) with solo-learn's CIFAR configuration
(scripts/pretrain/cifar/barlow.yaml).

Backbone and projector F -> 2048 -> 2048 -> 2048; the cross-correlation matrix of the two
views' batch-normalised projections is pulled towards the identity: (1 - C_ii)^2 on the
diagonal plus lambda (0.0051) times C_ij^2 off it, the sum scaled by 0.1. No predictor, no
momentum network. LARS, learning rate 0.3, weight decay 1e-4, batch 256; BYOL's asymmetric
views, as the Barlow Twins paper uses them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from backbones import Backbone
from methods.base import StepOutput
from methods.config import option
from methods.heads import projection_mlp
from methods.losses import barlow_twins_loss
from methods.siamese import TwoViewMethod


class BarlowTwins(TwoViewMethod):
    name = "barlowtwins"
    default_lr = 0.3

    @dataclass(frozen=True)
    class Config(TwoViewMethod.Config):
        flag_prefix = "barlowtwins_"
        off_diagonal_weight: float = option(
            0.0051, "weight of the off-diagonal terms of the cross-correlation", at_least=0, flag="barlowtwins_lambda"
        )
        scale: float = option(0.1, "factor of the whole loss (solo-learn's scale_loss)", at_least=0)

    config: Config

    def __init__(self, backbone: Backbone, num_classes: int, config: Config | None = None, *, lr: float | None = None):
        super().__init__(backbone, num_classes, config, lr=lr)
        config = self.config
        self.off_diagonal_weight, self.scale = config.off_diagonal_weight, config.scale
        self.projector = projection_mlp([backbone.feature_size, config.hidden, config.hidden, config.projection])
        self.set_optimizer([{"params": [*backbone.parameters(), *self.projector.parameters()]}])

    def training_step(self, views: list[torch.Tensor], labels: torch.Tensor, index: torch.Tensor) -> StepOutput:
        first, second = (self.projector(features) for features in self.two_views(views))
        loss, on_diagonal, off_diagonal = barlow_twins_loss(first, second, self.off_diagonal_weight, self.scale)
        return StepOutput(
            loss=loss,
            loss_weight=views[0].shape[0],
            metrics=self.batch_metrics(first, second, on_diagonal=on_diagonal, off_diagonal=off_diagonal),
        )
