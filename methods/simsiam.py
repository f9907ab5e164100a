"""SimSiam (Chen and He 2021) with solo-learn's CIFAR configuration (scripts/pretrain/cifar/simsiam.yaml).

Backbone, projector F -> 2048 -> 2048 -> 2048 (batch norm after every layer, the last without
affine parameters) and predictor 2048 -> 512 -> 2048; each view's prediction is pulled
towards the other view's projection, which gets no gradient (stop-gradient), by the negative
cosine similarity, symmetrised. No momentum network. SGD, learning rate 0.5 (the predictor's
kept fixed, not scheduled), weight decay 1e-5, batch 256; both views with colour jitter
(0.4, 0.4, 0.4, 0.1) and blur with p 0.5 (solo-learn's symmetric_weak augmentations).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from backbones import Backbone
from datasets.augment import CropColorViews
from methods.base import MAX_LAYER_WIDTH, StepOutput, ViewGroup
from methods.config import option, with_default
from methods.heads import projection_mlp
from methods.losses import negative_cosine_loss
from methods.siamese import TwoViewMethod


class SimSiam(TwoViewMethod):
    name = "simsiam"
    default_lr = 0.5
    lars = False
    view_groups = [ViewGroup(1, CropColorViews(jitter=(0.4, 0.4, 0.4, 0.1), blur_p=0.5))] * 2
    checkpoint_keys = {**TwoViewMethod.checkpoint_keys, "predictor": "predictor"}

    @dataclass(frozen=True)
    class Config(TwoViewMethod.Config):
        flag_prefix = "simsiam_"
        weight_decay: float = with_default(TwoViewMethod.Config, "weight_decay", 1e-5)
        predictor_hidden: int = option(512, "hidden units of the predictor", at_least=1, at_most=MAX_LAYER_WIDTH)

    config: Config

    def __init__(self, backbone: Backbone, num_classes: int, config: Config | None = None, *, lr: float | None = None):
        super().__init__(backbone, num_classes, config, lr=lr)
        config = self.config
        self.projector = projection_mlp(
            [backbone.feature_size, config.hidden, config.hidden, config.projection],
            hidden_bias=False,
            output_norm=True,
        )
        self.predictor = projection_mlp(
            [config.projection, config.predictor_hidden, config.projection], hidden_bias=False
        )
        self.set_optimizer(
            [
                {"params": [*backbone.parameters(), *self.projector.parameters()]},
                {"params": self.predictor.parameters(), "static_lr": True},
            ]
        )

    def training_step(self, views: list[torch.Tensor], labels: torch.Tensor, index: torch.Tensor) -> StepOutput:
        first, second = (self.projector(features) for features in self.two_views(views))
        loss = (
            negative_cosine_loss(self.predictor(first), second) + negative_cosine_loss(self.predictor(second), first)
        ) / 2
        return StepOutput(loss=loss, loss_weight=views[0].shape[0], metrics=self.batch_metrics(first, second))
