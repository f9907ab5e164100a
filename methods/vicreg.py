"""VICReg (Bardes et al. 2022) with solo-learn's CIFAR configuration (scripts/pretrain/cifar/vicreg.yaml).

Backbone and projector F -> 2048 -> 2048 -> 2048; the loss weighs the invariance (mean
squared error between the views' projections, 25), the variance (a hinge keeping each
dimension's standard deviation over the batch at 1 or more, 25) and the covariance (the
squared off-diagonal covariances, 1). No predictor, no momentum network. LARS, learning rate
0.3, weight decay 1e-4, batch 256; BYOL's asymmetric views, as the VICReg paper uses them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from backbones import Backbone
from methods.base import StepOutput
from methods.config import option
from methods.heads import projection_mlp
from methods.losses import vicreg_loss
from methods.siamese import TwoViewMethod


class VICReg(TwoViewMethod):
    name = "vicreg"
    default_lr = 0.3

    @dataclass(frozen=True)
    class Config(TwoViewMethod.Config):
        flag_prefix = "vicreg_"
        invariance: float = option(25.0, "weight of the invariance (mean squared error) term", at_least=0)
        variance: float = option(25.0, "weight of the variance (standard-deviation hinge) term", at_least=0)
        covariance: float = option(1.0, "weight of the covariance term", at_least=0)

    config: Config

    def __init__(self, backbone: Backbone, num_classes: int, config: Config | None = None, *, lr: float | None = None):
        super().__init__(backbone, num_classes, config, lr=lr)
        config = self.config
        self.weights = (config.invariance, config.variance, config.covariance)
        self.projector = projection_mlp([backbone.feature_size, config.hidden, config.hidden, config.projection])
        self.set_optimizer([{"params": [*backbone.parameters(), *self.projector.parameters()]}])

    def training_step(self, views: list[torch.Tensor], labels: torch.Tensor, index: torch.Tensor) -> StepOutput:
        first, second = (self.projector(features) for features in self.two_views(views))
        loss, invariance, variance, covariance = vicreg_loss(first, second, *self.weights)
        return StepOutput(
            loss=loss,
            loss_weight=views[0].shape[0],
            metrics=self.batch_metrics(first, second, invariance=invariance, variance=variance, covariance=covariance),
        )
