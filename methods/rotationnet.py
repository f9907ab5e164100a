"""Rotation prediction (Gidaris et al. 2018), the pretext-task baseline of the paper.

Every image is shown at 0, 90, 180 and 270 degrees and a linear head on the backbone
predicts which rotation it sees.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from backbones import Backbone
from datasets.augment import CropFlipViews
from methods.base import Method, StepOutput, ViewGroup
from methods.config import MethodConfig
from methods.heads import accuracy_sums, backbone_and_head_adam

ROTATIONS = 4  # 0, 90, 180 and 270 degrees


def rotations(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(4B, C, H, W) images rotated by k * 90 degrees in the (H, W) plane, rotation-major
    (rows k*B .. k*B+B-1 hold rotation k), and their int64 labels k."""
    height, width = images.shape[-2:]
    if height != width:
        # A quarter turn swaps H and W, so the four rotations could not share a batch.
        raise ValueError(f"rotationnet needs square images, got {height}x{width}")
    rotated = torch.cat([torch.rot90(images, k, dims=(2, 3)) for k in range(ROTATIONS)])
    if images.is_contiguous(memory_format=torch.channels_last):
        # A turned channels-last batch is in neither layout; the backbone's convolutions
        # would copy it back themselves, step after step (--channels_last).
        rotated = rotated.contiguous(memory_format=torch.channels_last)
    labels = torch.arange(ROTATIONS, device=images.device).repeat_interleave(images.shape[0])
    return rotated, labels


class RotationNet(Method):
    name = "rotationnet"
    score_name = "accuracy"
    checkpoint_keys = {"classifier": "classifier", "backbone": "backbone", "optimizer": "optimizer"}
    per_view_batch_norm = False  # the original concatenates the four rotations into one batch
    normalises_inputs = True  # the original's Normalize with the data set's mean and std

    def __init__(
        self, backbone: Backbone, num_classes: int, config: MethodConfig | None = None, *, lr: float | None = None
    ):
        super().__init__(backbone, num_classes, config, lr=lr)
        self.classifier = nn.Linear(backbone.feature_size, ROTATIONS)
        self.optimizer = backbone_and_head_adam(self.backbone, self.classifier, self.lr)

    @property
    def view_groups(self) -> list[ViewGroup]:
        return [ViewGroup(1, CropFlipViews())]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.backbone(images))

    def training_step(self, views: list[torch.Tensor], labels: torch.Tensor, index: torch.Tensor) -> StepOutput:
        rotated, targets = rotations(views[0])
        logits = self.classifier(self.forward_views(self.backbone, rotated, ROTATIONS))
        loss = F.cross_entropy(logits, targets)
        correct, count = accuracy_sums(logits, targets)
        return StepOutput(loss=loss, loss_weight=targets.numel(), metrics={"accuracy": (100.0 * correct, count)})
