"""What the four two-view baselines share (byol, simsiam, barlowtwins, vicreg), as solo-learn
trains them on CIFAR (its scripts/pretrain/cifar/*.yaml): two views of every image, each
normalised by batch norm with its own statistics (`per_view_batch_norm`), a projector, and
SGD or LARS (momentum 0.9) whose learning rate warms up linearly for `warmup_epochs` (10)
and then follows a cosine to 0, set before every optimizer step.

Stage 2 and test.py evaluate the online backbone, saved under `backbone`, as solo-learn's
linear evaluation does. The optimizer step count is in the checkpoint (`steps`), so the
schedule resumes exactly, also inside an epoch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from backbones import Backbone
from datasets.augment import CropColorViews
from methods.base import MAX_LAYER_WIDTH, EpochContext, Method, ViewGroup
from methods.config import MethodConfig, option
from methods.optimizers import LARS, warmup_cosine_lr

# BYOL's colour jitter (brightness, contrast, saturation, hue), milder than SimCLR's (0.8, 0.8, 0.8, 0.2).
BYOL_JITTER = (0.4, 0.4, 0.2, 0.1)
# BYOL's asymmetric views (blur p 1 / 0.1, solarize p 0 / 0.2), which Barlow Twins and VICReg adopt.
BYOL_VIEWS = (
    ViewGroup(1, CropColorViews(jitter=BYOL_JITTER, blur_p=1.0)),
    ViewGroup(1, CropColorViews(jitter=BYOL_JITTER, blur_p=0.1, solarize_p=0.2)),
)


def feature_spread(projections: torch.Tensor) -> torch.Tensor:
    """Mean over dimensions of the batch standard deviation of L2-normalised rows: 0 for a
    collapsed batch, about 1/sqrt(d) for well-spread features (solo-learn's `z_std`)."""
    return F.normalize(projections.detach().float(), dim=-1).std(dim=0).mean()


class TwoViewMethod(Method):
    """The shared part; a subclass builds its heads, then calls `set_optimizer`."""

    default_batch_size = 256
    drop_last = True  # as solo-learn's loader; the batch statistics need full batches
    min_batch_size = 2
    lars = True  # LARS (byol, barlowtwins, vicreg) or SGD (simsiam)
    checkpoint_keys = {"backbone": "backbone", "projector": "projector", "optimizer": "optimizer", "steps": "steps"}
    optional_keys = frozenset()
    view_groups = list(BYOL_VIEWS)
    per_view_batch_norm = True  # solo-learn forwards each view on its own
    normalises_inputs = True  # with the data set's mean and std, as solo-learn

    @dataclass(frozen=True)
    class Config(MethodConfig):
        """The options every two-view baseline has; a subclass's config sets `flag_prefix` and
        may change their defaults (`methods.config.with_default`)."""

        hidden: int = option(2048, "hidden units of the projector", at_least=1, at_most=MAX_LAYER_WIDTH)
        projection: int = option(2048, "output size of the projector", at_least=1, at_most=MAX_LAYER_WIDTH)
        weight_decay: float = option(1e-4, "weight decay of the optimizer", at_least=0)
        warmup_epochs: int = option(
            10,
            "epochs of linear learning-rate warm-up from 3e-5, then a cosine to 0 "
            "(short runs: lower it, or the run is all warm-up)",
            at_least=0,
        )

    config: Config

    def set_optimizer(self, groups: list[dict]) -> None:
        """`groups`: parameter groups; one with `static_lr` keeps the base learning rate."""
        optimizer = LARS if self.lars else torch.optim.SGD
        self.optimizer = optimizer(groups, lr=self.lr, momentum=0.9, weight_decay=self.config.weight_decay)
        self.warmup_epochs = self.config.warmup_epochs
        self.steps = 0  # optimizer steps done; in the checkpoint
        self.total_steps = 1  # of the schedule, set at every epoch start
        self.warmup_steps = 0

    def checkpoint_ranges(self) -> dict[str, tuple[float, float]]:
        return {"steps": (0, math.inf)}

    def on_epoch_start(self, context: EpochContext) -> None:
        self.total_steps = context.total_epochs * context.steps_per_epoch
        self.warmup_steps = self.warmup_epochs * context.steps_per_epoch
        self.schedule_learning_rate()

    def after_step(self, step: int) -> None:
        self.steps = step
        self.schedule_learning_rate()

    def schedule_learning_rate(self) -> None:
        """Set the learning rate of the next optimizer step."""
        lr = warmup_cosine_lr(self.steps, self.total_steps, self.warmup_steps, self.lr)
        for group in self.optimizer.param_groups:
            if not group.get("static_lr"):
                group["lr"] = lr

    def two_views(
        self, views: list[torch.Tensor], network: nn.Module | Backbone | None = None
    ) -> tuple[torch.Tensor, ...]:
        """`network`'s (default: the backbone's) outputs of the two views, in one forward with
        batch-norm statistics per view (`Method.forward_views`)."""
        outputs = self.forward_views(self.backbone if network is None else network, torch.cat(views), len(views))
        return outputs.chunk(len(views))

    @staticmethod
    def batch_metrics(
        first: torch.Tensor, second: torch.Tensor, **values: torch.Tensor
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Metrics of a step for the log, each counted once per image: `feature_std`, the
        spread of the two views' projections `first` and `second`, and `values`."""
        images = torch.full((), float(first.shape[0]), device=first.device)
        values["feature_std"] = (feature_spread(first) + feature_spread(second)) / 2
        return {name: (value.detach() * images, images) for name, value in values.items()}
