"""NNCLR (Dwibedi et al. 2021) with solo-learn's CIFAR configuration
(scripts/pretrain/cifar/nnclr.yaml).

Backbone, projector F -> 2048 -> 2048 -> 256 (batch norm after every layer, the output's
with affine parameters) and predictor 256 -> 4096 -> 256. Each view goes through the
backbone on its own. Each view's L2-normalised projection is replaced by its nearest
neighbour in a support set of 65,536 projections of earlier batches (`nearest_neighbours`),
which is contrasted with the predictions of the other view over the batch (`nnclr_loss`,
temperature 0.2), both directions averaged; then the first view's projections replace the
oldest in the support set. No momentum network. LARS, learning rate 0.4, weight decay 1e-5,
batch 256, solo-learn's asymmetric CIFAR views (BYOL's colour jitter, no blur, solarize with
p 0.2 in the second view). The support set, its pointer and the step count are in the
checkpoint, so a run resumes exactly inside an epoch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from backbones import Backbone
from datasets.augment import CropColorViews
from methods.base import MAX_LAYER_WIDTH, StepOutput, ViewGroup
from methods.config import option, with_default
from methods.heads import projection_mlp
from methods.losses import nearest_neighbours, nnclr_loss
from methods.queues import MAX_QUEUE_SIZE, FeatureQueue
from methods.siamese import BYOL_JITTER, TwoViewMethod
from utils.distributed import gather_with_gradient


class NNCLR(TwoViewMethod):
    name = "nnclr"
    default_lr = 0.4
    # solo-learn's CIFAR pair (asymmetric.yaml): BYOL's colour jitter, no blur, solarize in the second view.
    view_groups = [
        ViewGroup(1, CropColorViews(jitter=BYOL_JITTER)),
        ViewGroup(1, CropColorViews(jitter=BYOL_JITTER, solarize_p=0.2)),
    ]
    checkpoint_keys = {
        **TwoViewMethod.checkpoint_keys,
        "predictor": "predictor",
        "queue": "queue",
        "queue_pointer": "queue_pointer",
    }

    @dataclass(frozen=True)
    class Config(TwoViewMethod.Config):
        flag_prefix = "nnclr_"
        projection: int = with_default(TwoViewMethod.Config, "projection", 256)
        weight_decay: float = with_default(TwoViewMethod.Config, "weight_decay", 1e-5)
        predictor_hidden: int = option(4096, "hidden units of the predictor", at_least=1, at_most=MAX_LAYER_WIDTH)
        queue_size: int = option(
            65536,
            "projections of earlier batches in the support set the neighbours come from",
            at_least=1,
            at_most=MAX_QUEUE_SIZE,
        )
        temperature: float = option(0.2, "temperature of the contrastive softmax", above=0)

    config: Config

    def __init__(self, backbone: Backbone, num_classes: int, config: Config | None = None, *, lr: float | None = None):
        super().__init__(backbone, num_classes, config, lr=lr)
        config = self.config
        self.projector = nn.Sequential(
            *projection_mlp([backbone.feature_size, config.hidden, config.hidden, config.projection]),
            nn.BatchNorm1d(config.projection),
        )
        self.predictor = projection_mlp([config.projection, config.predictor_hidden, config.projection])
        self.queue = FeatureQueue(config.queue_size, config.projection)
        self.queue_pointer = 0  # where the next projections go; in the checkpoint
        self.set_optimizer(
            [{"params": [*backbone.parameters(), *self.projector.parameters(), *self.predictor.parameters()]}]
        )

    def checkpoint_ranges(self) -> dict[str, tuple[float, float]]:
        return {**super().checkpoint_ranges(), "queue_pointer": (0, self.config.queue_size - 1)}

    def training_step(self, views: list[torch.Tensor], labels: torch.Tensor, index: torch.Tensor) -> StepOutput:
        first, second = (self.projector(features) for features in self.two_views(views))
        prediction_first, prediction_second = self.predictor(first), self.predictor(second)
        support = self.queue.rows[0]
        unit_first, unit_second = F.normalize(first.detach(), dim=-1), F.normalize(second.detach(), dim=-1)
        _, neighbours_first = nearest_neighbours(unit_first, support)
        _, neighbours_second = nearest_neighbours(unit_second, support)
        temperature = self.config.temperature
        loss = (
            nnclr_loss(neighbours_first, prediction_second, temperature)
            + nnclr_loss(neighbours_second, prediction_first, temperature)
        ) / 2
        self.queue_pointer = self.queue.push(gather_with_gradient(unit_first)[None], self.queue_pointer)
        return StepOutput(loss=loss, loss_weight=views[0].shape[0], metrics=self.batch_metrics(first, second))
