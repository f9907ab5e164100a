"""The contract between a training method and the shared engine (`utils/engine.py`).

A method is an `nn.Module` holding a backbone, its own head(s) and its optimizer. The engine
owns everything else: the data order, augmentation on the device, precision, the loop,
logging, checkpoints and resume. A method therefore only says what it needs and how one step
turns augmented images into a loss:

Class attributes
    name            registry name, also the first part of every output file name.
    augmentation    kind of `utils.augment` pipeline applied to every view.
    needs_labels    True for supervised training (the engine then refuses unlabelled data).
    default_lr      learning rate when `--lr` is not given.
    score_name      what the `score` column of the per-epoch CSV log holds.
    trains          False for methods that are saved untrained (randomweights).
    drop_last       skip the last, smaller batch of an epoch.

Instance interface
    views_per_image           augmented views of each image per step (K for relationnet).
    optimizer                 a `torch.optim.Optimizer`, created in `__init__`.
    training_step(views, labels, index) -> StepOutput
        `views` is float (V*B, C, H, W), view-major: rows v*B .. v*B+B-1 are view v of the
        B images of the batch; `labels` is int64 (B,) (-1 where unlabelled) and `index` (B,)
        the images' positions in the training set. It returns the loss to back-propagate and
        metric sums; it must not call `.item()` nor make tensors from Python numbers with
        `torch.tensor(..., device=...)` (on a GPU both wait for the device; `torch.full` does
        not). The engine runs it under autocast when `--precision` asks for it, then zeroes
        the gradients, back-propagates and steps `optimizer`.
    on_epoch_start(epoch, total_epochs, engine)  hook for schedules and per-epoch work such
        as clustering; `engine` gives `images` (uint8 training set, on the device when it
        fits), `labels`, `data` (the ImageSet: mean, std, classes), `device` and `plan.seed`.
    on_epoch_resume(epoch, total_epochs, engine)  the same, when a run continues inside an
        interrupted epoch (default: on_epoch_start).
    epoch_order(epoch, generator) -> index tensor or None   the order in which the epoch
        visits the training images; None (default) lets the engine draw a permutation.
    head_step_bytes(batch_size)   memory of the head in one step, when it is large.
    checkpoint_state() / load_checkpoint_state(state)   the original code's checkpoint keys.

Method classes never override `nn.Module.train`; the engine calls `method.train()` and
`method.eval()` with their usual meaning.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class StepOutput:
    """Result of one training step.

    `metrics` maps a name to a pair of tensors (sum, count); the engine accumulates both over
    the epoch and logs sum/count, so metrics weight correctly across uneven batches.
    `loss_weight` is how many samples the loss averages over (pairs, views, images), so the
    epoch loss is a weighted mean like the original's meters.
    """

    loss: torch.Tensor
    loss_weight: int = 1
    metrics: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)


class Method(nn.Module):
    name: str = ""
    augmentation: str = "standard"
    needs_labels: bool = False
    score_name: str = "neg_loss"
    trains: bool = True
    drop_last: bool = False
    default_lr: float = 1e-3

    def __init__(self, backbone: nn.Module, num_classes: int, args: argparse.Namespace):
        super().__init__()
        self.backbone = backbone
        self.num_classes = num_classes
        self.views_per_image = 1
        self.lr = getattr(args, "lr", None) or self.default_lr

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Register the method's own flags on the stage-1 parser (names must be unique)."""

    @classmethod
    def check_arguments(cls, args: argparse.Namespace) -> str | None:
        """Return a one-line problem with the method's flags, or None when they are valid."""
        return None

    def training_step(self, views: torch.Tensor, labels: torch.Tensor,
                      index: torch.Tensor) -> StepOutput:
        raise NotImplementedError

    def on_epoch_start(self, epoch: int, total_epochs: int, engine) -> None:
        """Called before every epoch, also the first epoch after a resume."""

    def on_epoch_resume(self, epoch: int, total_epochs: int, engine) -> None:
        """Called instead of `on_epoch_start` when a run resumes inside an interrupted epoch;
        per-epoch work whose result is in the checkpoint must not be redone."""
        self.on_epoch_start(epoch, total_epochs, engine)

    def epoch_order(self, epoch: int, generator: torch.Generator) -> torch.Tensor | None:
        return None

    def head_step_bytes(self, batch_size: int) -> int:
        """Memory the head needs in one step beyond the backbone's (for the engine's check
        that a step can fit); methods whose head grows faster than the batch override it."""
        return 0

    def checkpoint_state(self) -> dict:
        raise NotImplementedError

    def load_checkpoint_state(self, state: dict) -> None:
        raise NotImplementedError

    def score(self, metrics: dict[str, float], loss: float) -> float:
        """The CSV `score` of an epoch, from its averaged metrics."""
        return metrics.get(self.score_name, -loss)
