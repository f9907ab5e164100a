"""SimSiam (Chen and He 2021) with solo-learn's CIFAR configuration (scripts/pretrain/cifar/simsiam.yaml).

Backbone, projector F -> 2048 -> 2048 -> 2048 (batch norm after every layer, the last without
affine parameters) and predictor 2048 -> 512 -> 2048; each view's prediction is pulled
towards the other view's projection, which gets no gradient (stop-gradient), by the negative
cosine similarity, symmetrised. No momentum network. SGD, learning rate 0.5 (the predictor's
kept fixed, not scheduled), weight decay 1e-5, batch 256; both views with colour jitter
(0.4, 0.4, 0.4, 0.1) and blur with p 0.5 (solo-learn's symmetric_weak augmentations).
"""
from __future__ import annotations

import torch
from torch import nn

from methods.base import Option, StepOutput, ViewGroup
from methods.heads import projection_mlp
from methods.losses import negative_cosine_loss
from methods.siamese import TwoViewMethod, check_training_options, training_options


class SimSiam(TwoViewMethod):
    name = "simsiam"
    default_lr = 0.5
    lars = False
    view_groups = [ViewGroup(1, "crop_softcolor_gray_halfblur"), ViewGroup(1, "crop_softcolor_gray_halfblur")]
    options = (
        Option("simsiam_predictor_hidden", 512, "hidden units of the predictor"),
        *training_options("simsiam", hidden=2048, projection=2048, weight_decay=1e-5),
    )
    checkpoint_keys = {**TwoViewMethod.checkpoint_keys, "predictor": "predictor"}

    def __init__(self, backbone: nn.Module, num_classes: int, lr: float | None = None,
                 simsiam_predictor_hidden: int = 512, simsiam_hidden: int = 2048, simsiam_projection: int = 2048,
                 simsiam_weight_decay: float = 1e-5, simsiam_warmup_epochs: float = 10):
        super().__init__(backbone, num_classes, lr, simsiam_predictor_hidden=simsiam_predictor_hidden,
                         simsiam_hidden=simsiam_hidden, simsiam_projection=simsiam_projection,
                         simsiam_weight_decay=simsiam_weight_decay, simsiam_warmup_epochs=simsiam_warmup_epochs)
        self.projector = projection_mlp([backbone.feature_size, simsiam_hidden, simsiam_hidden, simsiam_projection],
                                        hidden_bias=False, output_norm=True)
        self.predictor = projection_mlp([simsiam_projection, simsiam_predictor_hidden, simsiam_projection],
                                        hidden_bias=False)
        self.set_optimizer([{"params": [*backbone.parameters(), *self.projector.parameters()]},
                            {"params": self.predictor.parameters(), "static_lr": True}],
                           simsiam_weight_decay, simsiam_warmup_epochs)

    @classmethod
    def check_options(cls, options: dict) -> str | None:
        return check_training_options("simsiam", options, positive=("simsiam_predictor_hidden",))

    def training_step(self, views: list[torch.Tensor], labels: torch.Tensor, index: torch.Tensor) -> StepOutput:
        first, second = (self.projector(features) for features in self.two_views(views))
        loss = (negative_cosine_loss(self.predictor(first), second)
                + negative_cosine_loss(self.predictor(second), first)) / 2
        return StepOutput(loss=loss, loss_weight=views[0].shape[0], metrics=self.batch_metrics(first, second))
