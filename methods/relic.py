"""ReLIC (Mitrovic et al., ICLR 2021) as the relic-pytorch package (0.4.1) trains it.

An online network (backbone + critic MLP) and its momentum copy, the target. Every image
gives global views (full size, through both networks) and local views (3/7 of the size,
online only). For every pair of a target view and an online view at another position, the
loss is instance discrimination over the batch plus alpha times the invariance term (a KL
divergence between the row and column softmax of the logits); the step's loss is the mean
over the pairs. After each optimizer step the target is copied (first steps) or moved
towards the online network on a cosine schedule of its momentum gamma.

As the package, each view is normalised by batch norm with its own statistics (it forwards
the views one by one; here one forward per group of views of a size, `per_view_batch_norm`)
and the views' pixels stay in [0, 1] (`normalises_inputs`), also in the later stages.
Differences from the package (docs/original-code.md): the local views are the views after
the globals (it took the first views again, R1, which `--relic_first_views_as_local` restores
for comparisons); seeds, resume and evaluation are the suite's (its R2, R3 and R4).
Stage 2 and test.py evaluate the target backbone, saved under `backbone`, as the package
evaluates the EMA weights.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn

from backbones import Backbone
from datasets.augment import CropColorViews
from methods.base import MAX_LAYER_WIDTH, EpochContext, Method, StepOutput, ViewGroup
from methods.config import ConfigError, MethodConfig, option
from methods.losses import relic_loss
from methods.momentum import copy_online, cosine_momentum, momentum_update

# (initial log-temperature, initial bias, largest temperature) of the package's two losses.
SOFTMAX_LOGITS = (0.0, 0.0, 5.0)
SIGLIP_LOGITS = (math.log(10.0), -10.0, 15.0)
LOCAL_SIZE_RATIO = 3 / 7


def critic(features: int, hidden: int, projection: int) -> nn.Sequential:
    """Linear(F, hidden, no bias) - ReLU - Linear(hidden, projection, no bias), no batch norm."""
    return nn.Sequential(nn.Linear(features, hidden, bias=False), nn.ReLU(), nn.Linear(hidden, projection, bias=False))


MAX_VIEWS = 64  # the package uses 6; every view is a full augmented copy of the batch


class ReLIC(Method):
    name = "relic"
    default_lr = 3e-4
    default_batch_size = 256
    drop_last = True  # as the package: every step contrasts a full batch
    min_batch_size = 2
    score_name = "accuracy"
    compiled_modules = ("backbone", "target_backbone")
    per_view_batch_norm = True  # the package forwards each view on its own
    normalises_inputs = False  # the package's views are ToTensor's [0, 1] pixels
    # `backbone` is the target's: what stage 2 and test.py evaluate. The rest is for resume.
    checkpoint_keys = {
        "backbone": "target_backbone",
        "online_backbone": "backbone",
        "critic": "critic",
        "target_critic": "target_critic",
        "log_temperature": "log_temperature",
        "logit_bias": "logit_bias",
        "optimizer": "optimizer",
        "gamma": "gamma",
        "momentum_steps": "momentum_steps",
    }
    optional_keys = frozenset()

    @dataclass(frozen=True)
    class Config(MethodConfig):
        flag_prefix = "relic_"
        alpha: float = option(1.0, "weight of the invariance (KL) term", at_least=0)
        siglip: bool = option(
            False,
            "the pairwise sigmoid loss of SigLIP instead of the softmax cross-entropy "
            "(other initial temperature and bias)",
        )
        global_views: int = option(
            2, "full-size views per image, through the online and the target network", at_least=1, at_most=MAX_VIEWS
        )
        local_views: int = option(
            4, "views at 3/7 of the size per image, online network only", at_least=0, at_most=MAX_VIEWS
        )
        gamma: float = option(
            0.995, "momentum of the target at the start of its cosine schedule to 1", at_least=0, at_most=1
        )
        copy_steps: int = option(1, "the target is copied from the online network until this step", at_least=0)
        update_every: int = option(1, "steps between momentum updates of the target", at_least=1)
        weight_decay: float = option(1e-5, "Adam weight decay", at_least=0)
        first_views_as_local: bool = option(
            False,
            "the package's defect R1, for side-by-side comparisons: the online views after the "
            "globals are the first local_views of all views (g0, g1, g0, g1, l0, l1 with the defaults), "
            "not the local views",
        )
        hidden: int = option(512, "hidden units of the critic", at_least=1, at_most=MAX_LAYER_WIDTH)
        projection: int = option(64, "output size of the critic", at_least=1, at_most=MAX_LAYER_WIDTH)

        def __post_init__(self) -> None:
            super().__post_init__()
            views = self.global_views + self.local_views
            if not 2 <= views <= MAX_VIEWS:
                raise ConfigError(
                    ("global_views", "local_views"),
                    f"{views} views in all, must be from 2 (fewer give no pair of views) to {MAX_VIEWS}",
                )

    config: Config

    def __init__(self, backbone: Backbone, num_classes: int, config: Config | None = None, *, lr: float | None = None):
        super().__init__(backbone, num_classes, config, lr=lr)
        config = self.config
        self.alpha, self.siglip = config.alpha, config.siglip
        self.global_views, self.local_views = config.global_views, config.local_views
        self.first_views_as_local = config.first_views_as_local
        self.initial_gamma, self.copy_steps, self.update_every = config.gamma, config.copy_steps, config.update_every
        self.critic = critic(backbone.feature_size, config.hidden, config.projection)
        self.target_backbone = copy.deepcopy(backbone).requires_grad_(False)
        self.target_critic = copy.deepcopy(self.critic).requires_grad_(False)
        log_temperature, bias, self.max_temperature = SIGLIP_LOGITS if config.siglip else SOFTMAX_LOGITS
        self.log_temperature = nn.Parameter(torch.tensor(log_temperature))
        self.logit_bias = nn.Parameter(torch.tensor(bias))
        self.optimizer = torch.optim.Adam(
            [*self.backbone.parameters(), *self.critic.parameters(), self.log_temperature, self.logit_bias],
            lr=self.lr,
            weight_decay=config.weight_decay,
        )
        self.gamma = config.gamma  # the momentum of the next update; in the checkpoint
        self.momentum_steps = 0  # optimizer steps the target has followed; in the checkpoint
        self.total_steps = 1  # of the schedule, set at every epoch start

    @property
    def view_groups(self) -> list[ViewGroup]:
        groups = [ViewGroup(self.global_views, CropColorViews(crop_scale=(0.1, 1.0), blur_p=1.0, solarize_p=0.2))]
        if self.local_views:
            local = CropColorViews(crop_scale=(0.05, 1.0), blur_p=1.0, size_ratio=LOCAL_SIZE_RATIO)
            groups.append(ViewGroup(self.local_views, local))
        return groups

    def checkpoint_ranges(self) -> dict[str, tuple[float, float]]:
        return {"gamma": (0, 1), "momentum_steps": (0, math.inf)}

    def on_epoch_start(self, context: EpochContext) -> None:
        # The package's schedule length: steps of (epochs + 2) epochs, less the copied steps.
        self.total_steps = max(context.steps_per_epoch * (context.total_epochs + 2) - self.copy_steps, 1)

    def project(self, views: torch.Tensor, count: int) -> torch.Tensor:
        """Online projections (count, B, d) of `count` view-major views of B images."""
        return self.critic(self.forward_views(self.backbone, views, count)).unflatten(0, (count, -1))

    def online_projections(self, views: list[torch.Tensor]) -> torch.Tensor:
        """Projections (V, B, d) of the online views: the globals, then the locals, or with
        `first_views_as_local` the package's list (R1): the globals, then the first
        `local_views` of globals and locals, each forwarded again as the package does."""
        online = [self.project(views[0], self.global_views)]
        if not self.local_views:
            return online[0]
        if not self.first_views_as_local:
            return torch.cat([*online, self.project(views[1], self.local_views)])
        images = views[0].shape[0] // self.global_views
        again = min(self.local_views, self.global_views)
        online.append(self.project(views[0][: again * images], again))
        if self.local_views > again:
            online.append(self.project(views[1][: (self.local_views - again) * images], self.local_views - again))
        return torch.cat(online)

    def training_step(self, views: list[torch.Tensor], labels: torch.Tensor, index: torch.Tensor) -> StepOutput:
        online = self.online_projections(views)
        with torch.no_grad():
            target_features = self.forward_views(self.target_backbone, views[0], self.global_views)
            target = self.target_critic(target_features).unflatten(0, (self.global_views, -1))
        # Every (target view t, online view o) pair at once: (G, V, B, d) against (G, 1, B, d).
        losses, invariances, logits = relic_loss(
            online.unsqueeze(0).expand(self.global_views, -1, -1, -1),
            target.unsqueeze(1),
            self.log_temperature,
            self.logit_bias,
            self.alpha,
            self.siglip,
            self.max_temperature,
        )
        # A weighted sum, not boolean indexing: selecting the pairs would wait for the GPU.
        other_position = 1.0 - torch.eye(self.global_views, len(online), device=losses.device)
        pairs = self.global_views * (len(online) - 1)
        loss = (losses * other_position).sum() / pairs
        # The package's diagnostic: online view 0 against target view 1 (or 0 with one global).
        watched = logits[min(1, self.global_views - 1), 0 if self.global_views > 1 else 1].detach()
        correct = (watched.argmax(dim=1) == torch.arange(len(watched), device=watched.device)).sum().float()
        images = torch.full((), float(len(watched)), device=loss.device)
        one = torch.ones((), device=loss.device)
        temperature = self.log_temperature.detach().exp().clamp(max=self.max_temperature)
        return StepOutput(
            loss=loss,
            loss_weight=len(watched) * pairs,
            metrics={
                "invariance": ((invariances.detach() * other_position).sum() / pairs * images, images),
                "temperature": (temperature * images, images),
                "bias": (self.logit_bias.detach() * images, images),
                "gamma": (one * self.gamma * images, images),
                "accuracy": (100.0 * correct, images),
            },
        )

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        """The package's update after its optimizer step number k = step - 1: copy while
        k <= copy_steps, else every update_every steps move the target with gamma, then
        advance gamma on the schedule."""
        k = step - 1
        if k > self.copy_steps and k % self.update_every == 0:
            momentum_update(self.target_backbone, self.backbone, self.gamma)
            momentum_update(self.target_critic, self.critic, self.gamma)
            self.gamma = cosine_momentum(k, self.total_steps, self.initial_gamma)
        if k <= self.copy_steps:
            copy_online(self.target_backbone, self.backbone)
            copy_online(self.target_critic, self.critic)
        self.momentum_steps = step
