"""Supervised training of backbone + linear classifier: the upper bound of the paper's tables.

The same model, with its checkpoint of five keys (`classifier`, `backbone`, `optimizer`,
`optimizer_lineval`, `optimizer_finetune`), is what linear evaluation and fine-tuning produce
and what `test.py` scores, as in the original code.
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import nn

from methods.base import Method, StepOutput
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
    augmentation = "standard"
    needs_labels = True
    score_name = "accuracy"
    default_lr = 0.1

    # Which of the three optimizers of the original StandardModel this stage steps.
    active_optimizer = "optimizer"

    def __init__(self, backbone: nn.Module, num_classes: int, args: argparse.Namespace):
        super().__init__(backbone, num_classes, args)
        # The original supervised STL-10 baseline trained with affine + erasing (D4).
        if getattr(args, "dataset", None) == "stl10":
            self.augmentation = "finetune"
        self.classifier = nn.Linear(backbone.feature_size, num_classes)
        lr = self.lr
        self.optimizers = {
            "optimizer": torch.optim.SGD([
                {"params": self.backbone.parameters(), "lr": lr, "momentum": 0.9},
                {"params": self.classifier.parameters(), "lr": lr, "momentum": 0.9}]),
            "optimizer_lineval": torch.optim.Adam([{"params": self.classifier.parameters(), "lr": 1e-3}]),
            "optimizer_finetune": torch.optim.Adam([
                {"params": self.backbone.parameters(), "weight_decay": 1e-5,
                 "lr": getattr(args, "lr_backbone", None) or 1e-4},
                {"params": self.classifier.parameters(), "weight_decay": 1e-5,
                 "lr": getattr(args, "lr_classifier", None) or 1e-3}]),
        }

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.optimizers[self.active_optimizer]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.backbone(images))

    def on_epoch_start(self, epoch: int, total_epochs: int, engine) -> None:
        if step_decay(self.optimizer, epoch, total_epochs):
            print("[INFO] Learning rates: " + ", ".join(f"{g['lr']:g}" for g in self.optimizer.param_groups))

    def training_step(self, views: torch.Tensor, labels: torch.Tensor,
                      index: torch.Tensor) -> StepOutput:
        logits = self(views)
        loss = F.cross_entropy(logits, labels)
        correct, count = accuracy_sums(logits, labels)
        return StepOutput(loss=loss, loss_weight=labels.numel(),
                          metrics={"accuracy": (100.0 * correct, count)})

    def checkpoint_state(self) -> dict:
        return {"classifier": self.classifier.state_dict(),
                "backbone": self.backbone.state_dict(),
                **{key: opt.state_dict() for key, opt in self.optimizers.items()}}

    def load_checkpoint_state(self, state: dict) -> None:
        self.classifier.load_state_dict(state["classifier"])
        self.backbone.load_state_dict(state["backbone"])
        for key, opt in self.optimizers.items():
            if key in state:
                opt.load_state_dict(state[key])


class Finetune(Standard):
    """Stage 2 with `--finetune`: backbone and classifier trained together with Adam."""

    name = "finetune"
    active_optimizer = "optimizer_finetune"

    def __init__(self, backbone: nn.Module, num_classes: int, args: argparse.Namespace):
        super().__init__(backbone, num_classes, args)
        self.augmentation = args.augmentation
