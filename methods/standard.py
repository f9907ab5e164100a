"""Supervised training of backbone + linear classifier: the upper bound of the paper's tables.

The same model, with its checkpoint of five keys (`classifier`, `backbone`, `optimizer`,
`optimizer_lineval`, `optimizer_finetune`), is what linear evaluation and fine-tuning produce
and what `test.py` scores, as in the original code.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from backbones import Backbone
from datasets.augment import named_views
from methods.base import EpochContext, EpochNotes, Method, StepOutput, ViewGroup
from methods.config import MethodConfig, option
from methods.heads import accuracy_sums


def step_decay(optimizer: torch.optim.Optimizer, epoch: int, total_epochs: int) -> bool:
    """Set every group's learning rate to its initial value x0.1 per milestone passed, the
    milestones being epochs int(0.5 E) and int(0.75 E) as in the original code.

    Keyed to the run's real epoch count (the original tied fine-tuning to a fixed 200, so the
    decay never happened with the default 100 epochs). Setting rather than multiplying keeps
    the schedule right when a run resumes. Returns whether a rate changed.
    """
    passed = sum(1 for m in {int(0.5 * total_epochs), int(0.75 * total_epochs)} if 0 < m <= epoch)
    changed = False
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])
        lr = group["initial_lr"]
        for _ in range(passed):  # repeated x0.1, bit-identical to the original's in-place decay
            lr *= 0.1
        changed |= lr != group["lr"]
        group["lr"] = lr
    return changed


class Standard(Method):
    name = "standard"
    # One view per image and step: its batch statistics are that view's, as in the original's
    # single forward, so per view and pooled coincide.
    per_view_batch_norm = True
    normalises_inputs = True  # the original's Normalize with the data set's mean and std
    needs_labels = True
    scores_test_split = True
    score_name = "accuracy"
    default_lr = 0.1
    # The original StandardModel's three optimizers: supervised SGD (stage 1), linear
    # evaluation and fine-tuning; `active_optimizer` is the one this stage steps.
    checkpoint_keys = {
        "classifier": "classifier",
        "backbone": "backbone",
        "optimizer": "supervised_optimizer",
        "optimizer_lineval": "lineval_optimizer",
        "optimizer_finetune": "finetune_optimizer",
    }
    optional_keys = frozenset({"optimizer", "optimizer_lineval", "optimizer_finetune"})
    active_optimizer = "supervised_optimizer"

    @dataclass(frozen=True)
    class Config(MethodConfig):
        augmentation: str = option(
            "pad_crop_flip",
            "augmentation pipeline of the training images (stage 1: by data set; stage 2: --augmentation)",
            stage=None,
        )
        lr_backbone: float = option(1e-4, "fine-tuning: backbone learning rate", above=0, stage=2)
        lr_classifier: float = option(1e-3, "fine-tuning: classifier learning rate", above=0, stage=2)

    config: Config

    def __init__(self, backbone: Backbone, num_classes: int, config: Config | None = None, *, lr: float | None = None):
        super().__init__(backbone, num_classes, config, lr=lr)
        self.augmentation = self.config.augmentation
        self.classifier = nn.Linear(backbone.feature_size, num_classes)
        self.supervised_optimizer = torch.optim.SGD(
            [
                {"params": self.backbone.parameters(), "lr": self.lr, "momentum": 0.9},
                {"params": self.classifier.parameters(), "lr": self.lr, "momentum": 0.9},
            ]
        )
        self.lineval_optimizer = torch.optim.Adam([{"params": self.classifier.parameters(), "lr": 1e-3}])
        self.finetune_optimizer = torch.optim.Adam(
            [
                {"params": self.backbone.parameters(), "weight_decay": 1e-5, "lr": self.config.lr_backbone},
                {"params": self.classifier.parameters(), "weight_decay": 1e-5, "lr": self.config.lr_classifier},
            ]
        )
        # The one the engine steps; the other two stay in the checkpoint under their keys.
        self.optimizer = getattr(self, self.active_optimizer)

    @property
    def view_groups(self) -> list[ViewGroup]:
        return [ViewGroup(1, named_views(self.augmentation))]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.backbone(images))

    def on_epoch_start(self, context: EpochContext) -> EpochNotes | None:
        if step_decay(self.optimizer, context.epoch, context.total_epochs):
            return {"learning_rates": [group["lr"] for group in self.optimizer.param_groups]}
        return None

    def training_step(self, views: list[torch.Tensor], labels: torch.Tensor, index: torch.Tensor) -> StepOutput:
        logits = self(views[0])
        loss = F.cross_entropy(logits, labels)
        correct, count = accuracy_sums(logits, labels)
        return StepOutput(loss=loss, loss_weight=labels.numel(), metrics={"accuracy": (100.0 * correct, count)})


class Finetune(Standard):
    """Stage 2 with `--finetune`: backbone and classifier trained together with Adam."""

    name = "finetune"
    active_optimizer = "finetune_optimizer"
