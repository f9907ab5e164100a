"""MoCo v2+ (Chen, Fan, Girshick and He 2020, with the improvements solo-learn adopts) with
solo-learn's CIFAR configuration (scripts/pretrain/cifar/mocov2plus.yaml).

A query network (backbone, projector F -> 2048 -> ReLU -> 256, no batch norm) and its
momentum copy, the key network, see two views of every image, each view through the backbone
on its own. The query of each view is contrasted with the key of the other view and with a
queue of 32,768 keys of earlier batches per view (`moco_queue_loss`, temperature 0.2), the
two directions averaged; then both views' keys replace the oldest in their queues. The key
network follows with momentum tau, on a cosine from 0.99 to 0.999 over the run. SGD,
learning rate 0.3, weight decay 1e-4, batch 256, the same symmetric views as SimSiam
(solo-learn's symmetric_weak). The queues, their pointer, tau and the step count are in the
checkpoint, so a run resumes exactly inside an epoch.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from backbones import Backbone
from datasets.augment import CropColorViews
from methods.base import StepOutput, ViewGroup
from methods.config import ConfigError, option, with_default
from methods.losses import moco_queue_loss
from methods.momentum import cosine_momentum, momentum_update
from methods.queues import MAX_QUEUE_SIZE, FeatureQueue
from methods.siamese import TwoViewMethod
from utils.distributed import gather_with_gradient


class MoCoV2Plus(TwoViewMethod):
    name = "mocov2plus"
    default_lr = 0.3
    lars = False
    view_groups = [ViewGroup(1, CropColorViews(jitter=(0.4, 0.4, 0.4, 0.1), blur_p=0.5))] * 2
    checkpoint_keys = {
        **TwoViewMethod.checkpoint_keys,
        "target": "target",
        "momentum": "momentum",
        "queue": "queue",
        "queue_pointer": "queue_pointer",
    }

    @dataclass(frozen=True)
    class Config(TwoViewMethod.Config):
        flag_prefix = "mocov2plus_"
        projection: int = with_default(TwoViewMethod.Config, "projection", 256)
        queue_size: int = option(
            32768, "keys of earlier batches kept per view as negatives", at_least=1, at_most=MAX_QUEUE_SIZE
        )
        temperature: float = option(0.2, "temperature of the contrastive softmax", above=0)
        momentum: float = option(
            0.99, "momentum of the key network at the start of its cosine schedule", at_least=0, at_most=1
        )
        final_momentum: float = option(0.999, "momentum of the key network at the last step", at_least=0, at_most=1)

        def __post_init__(self) -> None:
            super().__post_init__()
            if self.final_momentum < self.momentum:
                raise ConfigError(
                    ("momentum", "final_momentum"),
                    f"the schedule rises from momentum {self.momentum} to final_momentum "
                    f"{self.final_momentum}: give a final_momentum of at least the momentum",
                )

    config: Config

    def __init__(self, backbone: Backbone, num_classes: int, config: Config | None = None, *, lr: float | None = None):
        super().__init__(backbone, num_classes, config, lr=lr)
        config = self.config
        self.momentum = config.momentum  # of the next key-network update; in the checkpoint
        self.projector = nn.Sequential(
            nn.Linear(backbone.feature_size, config.hidden), nn.ReLU(), nn.Linear(config.hidden, config.projection)
        )
        self.target = copy.deepcopy(self.online).requires_grad_(False)
        self.queue = FeatureQueue(config.queue_size, config.projection, lists=2)
        self.queue_pointer = 0  # where the next keys go; in the checkpoint
        self.set_optimizer([{"params": self.online.parameters()}])

    @property
    def online(self) -> nn.Sequential:
        """Backbone and projector: the query network, which the key network follows."""
        return nn.Sequential(self.get_submodule("backbone"), self.projector)

    def checkpoint_ranges(self) -> dict[str, tuple[float, float]]:
        return {
            **super().checkpoint_ranges(),
            "momentum": (0, 1),
            "queue_pointer": (0, self.config.queue_size - 1),
        }

    def training_step(self, views: list[torch.Tensor], labels: torch.Tensor, index: torch.Tensor) -> StepOutput:
        first, second = (self.projector(features) for features in self.two_views(views))
        query_first, query_second = F.normalize(first, dim=-1), F.normalize(second, dim=-1)
        with torch.no_grad():
            key_first, key_second = (F.normalize(self.target(view), dim=-1) for view in views)
        # A copy: the queue is overwritten below, and the loss's backward needs the keys it saw.
        negatives = self.queue.rows.clone()
        temperature = self.config.temperature
        loss = (
            moco_queue_loss(query_first, key_second, negatives[1], temperature)
            + moco_queue_loss(query_second, key_first, negatives[0], temperature)
        ) / 2
        keys = torch.stack([gather_with_gradient(key_first), gather_with_gradient(key_second)])
        self.queue_pointer = self.queue.push(keys, self.queue_pointer)
        momentum = torch.full((), self.momentum, device=loss.device)
        return StepOutput(
            loss=loss, loss_weight=views[0].shape[0], metrics=self.batch_metrics(first, second, momentum=momentum)
        )

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        """Move the key network with the current momentum, then advance the momentum on its
        schedule (solo-learn's order)."""
        super().after_step(step)
        momentum_update(self.target, self.online, self.momentum)
        self.momentum = cosine_momentum(
            min(step, self.total_steps), self.total_steps, self.config.momentum, self.config.final_momentum
        )
