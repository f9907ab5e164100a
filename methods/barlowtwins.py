"""Barlow Twins (Zbontar et al. 2021) with solo-learn's CIFAR configuration
(scripts/pretrain/cifar/barlow.yaml).

Backbone and projector F -> 2048 -> 2048 -> 2048; the cross-correlation matrix of the two
views' batch-normalised projections is pulled towards the identity: (1 - C_ii)^2 on the
diagonal plus lambda (0.0051) times C_ij^2 off it, the sum scaled by 0.1. No predictor, no
momentum network. LARS, learning rate 0.3, weight decay 1e-4, batch 256; BYOL's asymmetric
views, as the Barlow Twins paper uses them.
"""
from __future__ import annotations

import torch
from torch import nn

from methods.base import Option, StepOutput
from methods.heads import projection_mlp
from methods.losses import barlow_twins_loss
from methods.siamese import TwoViewMethod, check_training_options, training_options


class BarlowTwins(TwoViewMethod):
    name = "barlowtwins"
    default_lr = 0.3
    options = (
        Option("barlowtwins_lambda", 0.0051, "weight of the off-diagonal terms of the cross-correlation"),
        Option("barlowtwins_scale", 0.1, "factor of the whole loss (solo-learn's scale_loss)"),
        *training_options("barlowtwins", hidden=2048, projection=2048, weight_decay=1e-4),
    )

    def __init__(self, backbone: nn.Module, num_classes: int, lr: float | None = None,
                 barlowtwins_lambda: float = 0.0051, barlowtwins_scale: float = 0.1, barlowtwins_hidden: int = 2048,
                 barlowtwins_projection: int = 2048, barlowtwins_weight_decay: float = 1e-4,
                 barlowtwins_warmup_epochs: float = 10):
        super().__init__(backbone, num_classes, lr, barlowtwins_lambda=barlowtwins_lambda,
                         barlowtwins_scale=barlowtwins_scale, barlowtwins_hidden=barlowtwins_hidden,
                         barlowtwins_projection=barlowtwins_projection,
                         barlowtwins_weight_decay=barlowtwins_weight_decay,
                         barlowtwins_warmup_epochs=barlowtwins_warmup_epochs)
        self.off_diagonal_weight, self.scale = barlowtwins_lambda, barlowtwins_scale
        self.projector = projection_mlp([backbone.feature_size, barlowtwins_hidden, barlowtwins_hidden,
                                         barlowtwins_projection])
        self.set_optimizer([{"params": [*backbone.parameters(), *self.projector.parameters()]}],
                           barlowtwins_weight_decay, barlowtwins_warmup_epochs)

    @classmethod
    def check_options(cls, options: dict) -> str | None:
        return check_training_options("barlowtwins", options, non_negative=("barlowtwins_lambda", "barlowtwins_scale"))

    def training_step(self, views: list[torch.Tensor], labels: torch.Tensor, index: torch.Tensor) -> StepOutput:
        first, second = (self.projector(features) for features in self.two_views(views))
        loss, on_diagonal, off_diagonal = barlow_twins_loss(first, second, self.off_diagonal_weight, self.scale)
        return StepOutput(loss=loss, loss_weight=views[0].shape[0], metrics=self.batch_metrics(
            first, second, on_diagonal=on_diagonal, off_diagonal=off_diagonal))
