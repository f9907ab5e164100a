"""VICReg (Bardes et al. 2022) with solo-learn's CIFAR configuration (scripts/pretrain/cifar/vicreg.yaml).

Backbone and projector F -> 2048 -> 2048 -> 2048; the loss weighs the invariance (mean
squared error between the views' projections, 25), the variance (a hinge keeping each
dimension's standard deviation over the batch at 1 or more, 25) and the covariance (the
squared off-diagonal covariances, 1). No predictor, no momentum network. LARS, learning rate
0.3, weight decay 1e-4, batch 256; BYOL's asymmetric views, as the VICReg paper uses them.
"""
from __future__ import annotations

import torch
from torch import nn

from methods.base import Option, StepOutput
from methods.heads import projection_mlp
from methods.losses import vicreg_loss
from methods.siamese import TwoViewMethod, check_training_options, training_options


class VICReg(TwoViewMethod):
    name = "vicreg"
    default_lr = 0.3
    options = (
        Option("vicreg_invariance", 25.0, "weight of the invariance (mean squared error) term"),
        Option("vicreg_variance", 25.0, "weight of the variance (standard-deviation hinge) term"),
        Option("vicreg_covariance", 1.0, "weight of the covariance term"),
        *training_options("vicreg", hidden=2048, projection=2048, weight_decay=1e-4),
    )

    def __init__(self, backbone: nn.Module, num_classes: int, lr: float | None = None,
                 vicreg_invariance: float = 25.0, vicreg_variance: float = 25.0, vicreg_covariance: float = 1.0,
                 vicreg_hidden: int = 2048, vicreg_projection: int = 2048, vicreg_weight_decay: float = 1e-4,
                 vicreg_warmup_epochs: float = 10):
        super().__init__(backbone, num_classes, lr, vicreg_invariance=vicreg_invariance,
                         vicreg_variance=vicreg_variance, vicreg_covariance=vicreg_covariance,
                         vicreg_hidden=vicreg_hidden, vicreg_projection=vicreg_projection,
                         vicreg_weight_decay=vicreg_weight_decay, vicreg_warmup_epochs=vicreg_warmup_epochs)
        self.weights = (vicreg_invariance, vicreg_variance, vicreg_covariance)
        self.projector = projection_mlp([backbone.feature_size, vicreg_hidden, vicreg_hidden, vicreg_projection])
        self.set_optimizer([{"params": [*backbone.parameters(), *self.projector.parameters()]}],
                           vicreg_weight_decay, vicreg_warmup_epochs)

    @classmethod
    def check_options(cls, options: dict) -> str | None:
        return check_training_options("vicreg", options,
                                      non_negative=("vicreg_invariance", "vicreg_variance", "vicreg_covariance"))

    def training_step(self, views: list[torch.Tensor], labels: torch.Tensor, index: torch.Tensor) -> StepOutput:
        first, second = (self.projector(features) for features in self.two_views(views))
        loss, invariance, variance, covariance = vicreg_loss(first, second, *self.weights)
        return StepOutput(loss=loss, loss_weight=views[0].shape[0], metrics=self.batch_metrics(
            first, second, invariance=invariance, variance=variance, covariance=covariance))
