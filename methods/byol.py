"""BYOL (Grill et al. 2020) with solo-learn's CIFAR configuration (scripts/pretrain/cifar/byol.yaml).

An online network (backbone, projector F -> 4096 -> 256, predictor 256 -> 4096 -> 256) predicts
the projection that a momentum copy of backbone and projector, the target, gives the other
view; the loss is the normalised MSE of both directions. The views are asymmetric: blur
always in the first, with p 0.1 and solarize with p 0.2 in the second. After every step the
target moves towards the online network with momentum tau, which follows a cosine from
`byol_momentum` (0.99) to 1 over the run. LARS, learning rate 1.0, weight decay 1e-5, batch 256.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from backbones import Backbone
from methods.base import MAX_LAYER_WIDTH, StepOutput
from methods.config import option, with_default
from methods.heads import projection_mlp
from methods.losses import normalised_mse_loss
from methods.momentum import cosine_momentum, momentum_update
from methods.siamese import TwoViewMethod


class BYOL(TwoViewMethod):
    name = "byol"
    default_lr = 1.0
    checkpoint_keys = {
        **TwoViewMethod.checkpoint_keys,
        "predictor": "predictor",
        "target": "target",
        "momentum": "momentum",
    }

    @dataclass(frozen=True)
    class Config(TwoViewMethod.Config):
        flag_prefix = "byol_"
        hidden: int = with_default(TwoViewMethod.Config, "hidden", 4096)
        projection: int = with_default(TwoViewMethod.Config, "projection", 256)
        weight_decay: float = with_default(TwoViewMethod.Config, "weight_decay", 1e-5)
        momentum: float = option(
            0.99, "momentum of the target at the start of its cosine schedule to 1", at_least=0, at_most=1
        )
        predictor_hidden: int = option(4096, "hidden units of the predictor", at_least=1, at_most=MAX_LAYER_WIDTH)

    config: Config

    def __init__(self, backbone: Backbone, num_classes: int, config: Config | None = None, *, lr: float | None = None):
        super().__init__(backbone, num_classes, config, lr=lr)
        config = self.config
        self.initial_momentum = config.momentum
        self.momentum = config.momentum  # of the next target update; in the checkpoint
        self.projector = projection_mlp([backbone.feature_size, config.hidden, config.projection])
        self.predictor = projection_mlp([config.projection, config.predictor_hidden, config.projection])
        self.target = copy.deepcopy(self.online).requires_grad_(False)
        self.set_optimizer([{"params": [*self.online.parameters(), *self.predictor.parameters()]}])

    @property
    def online(self) -> nn.Sequential:
        """Backbone and projector: the network the target follows."""
        # The backbone as the registered sub-module it is: `nn.Sequential` takes modules, and
        # the `Backbone` protocol cannot say that it is one.
        return nn.Sequential(self.get_submodule("backbone"), self.projector)

    def checkpoint_ranges(self) -> dict[str, tuple[float, float]]:
        return {**super().checkpoint_ranges(), "momentum": (0, 1)}

    def training_step(self, views: list[torch.Tensor], labels: torch.Tensor, index: torch.Tensor) -> StepOutput:
        first, second = (self.projector(features) for features in self.two_views(views))
        with torch.no_grad():
            target_first, target_second = self.two_views(views, self.target)
        loss = normalised_mse_loss(self.predictor(first), target_second) + normalised_mse_loss(
            self.predictor(second), target_first
        )
        momentum = torch.full((), self.momentum, device=loss.device)
        return StepOutput(
            loss=loss, loss_weight=views[0].shape[0], metrics=self.batch_metrics(first, second, momentum=momentum)
        )

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        """Move the target with the current momentum, then advance the momentum on its schedule
        (solo-learn's order)."""
        super().after_step(step)
        momentum_update(self.target, self.online, self.momentum)
        self.momentum = cosine_momentum(min(step, self.total_steps), self.total_steps, self.initial_momentum)
