"""SwAV (Caron et al. 2020) with solo-learn's CIFAR configuration (scripts/pretrain/cifar/swav.yaml).

Every view goes through the backbone and the projector (F -> 2048 -> 128) on its own; its
L2-normalised projection is scored against 3,000 unit-length prototypes. For each global view,
the Sinkhorn-Knopp algorithm (3 iterations, epsilon 0.05) turns the detached scores into
codes that share the batch out evenly among the prototypes; the loss is the cross-entropy
between one view's code and the softmax (temperature 0.1) of another view's scores, averaged
over every (coded view, other view) pair: the swapped prediction.

- The queue keeps the latest `queue_size` (3,840) projections of each global view, newest
  first, filled from the first step; from epoch `queue_start_epoch` (50, 0-based) their scores
  join the batch's in Sinkhorn-Knopp, so codes are shared out over more images than one batch.
- The prototypes get a zero gradient for the first `freeze_prototypes_epochs` (2) epochs.
  After every optimizer step they are scaled back to unit length, as SwAV's own code does
  (solo-learn keeps them at unit length by a weight norm whose gain is fixed at 1, which also
  passes its gradient through the normalisation).
- Multi-crop (`local_views`, off by default as in solo-learn's CIFAR settings): the local views
  get no code; their scores are trained to predict both global views' codes.

Views: solo-learn's symmetric CIFAR augmentation, the same for both global views (crop scale
0.08 to 1, colour jitter 0.8, 0.8, 0.8, 0.2 with p 0.8, grey 0.2, blur 0.5); local views crop
0.05 to 0.14 of the image (the SwAV paper's). LARS, learning rate 0.6, weight decay 1e-6,
batch 256, 10 warm-up epochs then a cosine. Stage 2 and test.py evaluate the backbone.
The queue and the step count are in the checkpoint, so a run resumes exactly inside an epoch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from backbones import Backbone
from datasets.augment import CropColorViews
from methods.base import MAX_LAYER_WIDTH, EpochContext, StepOutput
from methods.config import option, with_default
from methods.heads import projection_mlp
from methods.losses import in_float32
from methods.multicrop import MultiCropMethod, zero_gradient
from utils.checkpoint_fields import check_tensor

SYMMETRIC_VIEW = CropColorViews(blur_p=0.5)
# The queue holds unit vectors (or zeros before it fills); the margin is rounding in half precision.
UNIT_RANGE = (-1.01, 1.01)
# The largest queue: 2 x 2**20 projections of 128 floats take 1 GiB.
MAX_QUEUE = 2**20


@torch.no_grad()
def sinkhorn_knopp(scores: torch.Tensor, iterations: int, epsilon: float) -> torch.Tensor:
    """Codes (N x P) from scores (N samples x P prototypes): exp(scores / epsilon) scaled so that
    every prototype gets 1/P of the total and every sample 1/N, alternately, `iterations`
    times, then each sample's row scaled to sum to 1 (solo-learn's SinkhornKnopp on one process)."""
    q = torch.exp(scores.float() / epsilon).t()
    prototypes, samples = q.shape
    q /= q.sum()
    for _ in range(iterations):
        q /= q.sum(dim=1, keepdim=True)
        q /= prototypes
        q /= q.sum(dim=0, keepdim=True)
        q /= samples
    q *= samples
    return q.t()


@in_float32
def swapped_prediction_loss(scores: torch.Tensor, codes: torch.Tensor, temperature: float) -> torch.Tensor:
    """The mean, over every pair of a coded view a (the first len(codes) views) and another view b,
    of the cross-entropy between a's code and the softmax of b's scores over `temperature`.
    `scores` (V, N, P) and `codes` (C, N, P) are per view."""
    log_predictions = F.log_softmax(scores / temperature, dim=-1)
    losses = [
        -(code * log_predictions[b]).sum(dim=-1).mean()
        for a, code in enumerate(codes)
        for b in range(len(scores))
        if b != a
    ]
    return torch.stack(losses).mean()


class SwAV(MultiCropMethod):
    name = "swav"
    default_lr = 0.6
    global_views = (SYMMETRIC_VIEW, SYMMETRIC_VIEW)
    local_crop_scale = (0.05, 0.14)
    checkpoint_keys = {**MultiCropMethod.checkpoint_keys, "prototypes": "prototypes", "queue": "queue"}

    @dataclass(frozen=True)
    class Config(MultiCropMethod.Config):
        flag_prefix = "swav_"
        projection: int = with_default(MultiCropMethod.Config, "projection", 128)
        weight_decay: float = with_default(MultiCropMethod.Config, "weight_decay", 1e-6)
        prototypes: int = option(3000, "number of prototypes", at_least=1, at_most=MAX_LAYER_WIDTH)
        temperature: float = option(0.1, "temperature of the softmax of a view's scores", above=0)
        sinkhorn_iterations: int = option(3, "Sinkhorn-Knopp iterations of the codes", at_least=1, at_most=1000)
        sinkhorn_epsilon: float = option(
            0.05,
            "entropy weight of Sinkhorn-Knopp: the codes are exp(score / epsilon) rescaled "
            "(from 0.025: smaller ones overflow float32)",
            at_least=0.025,
        )
        queue_size: int = option(
            3840, "projections of each global view the queue keeps (0: no queue)", at_least=0, at_most=MAX_QUEUE
        )
        queue_start_epoch: int = option(
            50, "the epoch (0-based) from which the queue's scores join Sinkhorn-Knopp", at_least=0
        )
        freeze_prototypes_epochs: int = option(2, "epochs during which the prototypes are not trained", at_least=0)

    config: Config

    def __init__(self, backbone: Backbone, num_classes: int, config: Config | None = None, *, lr: float | None = None):
        super().__init__(backbone, num_classes, config, lr=lr)
        config = self.config
        self.projector = projection_mlp([backbone.feature_size, config.hidden, config.projection])
        self.prototypes = nn.Linear(config.projection, config.prototypes, bias=False)
        self.normalise_prototypes()
        self.register_buffer("queue", torch.zeros(2, config.queue_size, config.projection))
        self.queue: torch.Tensor
        self.epoch = 0  # set at every epoch start
        self.set_optimizer(
            [{"params": [*self.backbone.parameters(), *self.projector.parameters(), self.prototypes.weight]}]
        )

    def checkpoint_ranges(self) -> dict[str, tuple[float, float]]:
        return {**super().checkpoint_ranges(), "queue": UNIT_RANGE}

    def check_checkpoint_state(self, state: dict, path: str | Path | None = None) -> None:
        super().check_checkpoint_state(state, path)
        check_tensor(state["queue"], self.queue, path, "queue")  # its shape too: the queue's size

    def on_epoch_start(self, context: EpochContext) -> None:
        super().on_epoch_start(context)
        self.epoch = context.epoch

    @torch.no_grad()
    def normalise_prototypes(self) -> None:
        self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))

    @torch.no_grad()
    def codes(self, scores: torch.Tensor, view: int) -> torch.Tensor:
        """Sinkhorn-Knopp codes of the batch's scores of global view `view`, shared out together
        with the queue's projections of that view once the queue is on."""
        images = len(scores)
        if self.config.queue_size and self.epoch >= self.config.queue_start_epoch:
            scores = torch.cat([scores, self.prototypes(self.queue[view]).to(scores.dtype)])
        return sinkhorn_knopp(scores, self.config.sinkhorn_iterations, self.config.sinkhorn_epsilon)[:images]

    def training_step(self, views: list[torch.Tensor], labels: torch.Tensor, index: torch.Tensor) -> StepOutput:
        projections = [F.normalize(self.projector(self.backbone(view)), dim=1) for view in self.each_view(views)]
        prototypes = self.prototypes.weight
        if self.epoch < self.config.freeze_prototypes_epochs:
            prototypes = zero_gradient(prototypes)
        scores = torch.stack([F.linear(projection, prototypes) for projection in projections])
        images = len(views[0])
        codes = torch.stack([self.codes(score.detach(), view) for view, score in enumerate(scores[:2])])
        loss = swapped_prediction_loss(scores, codes, self.config.temperature)
        if self.config.queue_size:
            with torch.no_grad():
                newest = torch.stack(projections[:2]).to(self.queue.dtype)
                self.queue.copy_(torch.cat([newest, self.queue], dim=1)[:, : self.config.queue_size])
        return StepOutput(loss=loss, loss_weight=images, metrics=self.batch_metrics(projections[0], projections[1]))

    def after_step(self, step: int) -> None:
        super().after_step(step)
        self.normalise_prototypes()
