"""MoCo v3 (Chen, Xie and He 2021) with solo-learn's CIFAR configuration
(scripts/pretrain/cifar/mocov3.yaml).

An online network (backbone, projector F -> 4096 -> 256 and predictor 256 -> 4096 -> 256,
their linear layers without bias, batch norm after each hidden layer and, in the projector,
a batch norm without affine parameters at the output) and a momentum copy of backbone and
projector, the target. Each view goes through the backbone on its own; the prediction of
each view is contrasted with the target's projections of the other view over the batch
(`mocov3_loss`: temperature 0.2, scaled by 2 * temperature), both directions summed. The
target follows with momentum tau, on a cosine from 0.99 to 1 over the run. LARS, learning
rate 0.3, weight decay 1e-6, batch 256, solo-learn's asymmetric CIFAR views (BYOL's colour
jitter, no blur, solarize with p 0.2 in the second view). solo-learn gives non-ResNet
backbones (its ViTs) a three-layer projector; this suite's backbones are all convolutional
and take the two-layer one.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from backbones import Backbone
from datasets.augment import CropColorViews
from methods.base import MAX_LAYER_WIDTH, StepOutput, ViewGroup
from methods.config import ConfigError, option, with_default
from methods.losses import mocov3_loss
from methods.momentum import cosine_momentum, momentum_update
from methods.siamese import BYOL_JITTER, TwoViewMethod
from utils.distributed import current_rank, gather_with_gradient


def bias_free_mlp(sizes: list[int], output_norm: bool) -> nn.Sequential:
    """Linear (no bias) - BatchNorm1d - ReLU for each hidden size of `sizes`, then a Linear (no
    bias) to the output, followed with `output_norm` by a batch norm without affine parameters:
    MoCo v3's projector and predictor."""
    layers: list[nn.Module] = []
    for inputs, outputs in zip(sizes[:-2], sizes[1:-1]):
        layers += [nn.Linear(inputs, outputs, bias=False), nn.BatchNorm1d(outputs), nn.ReLU()]
    layers.append(nn.Linear(sizes[-2], sizes[-1], bias=False))
    if output_norm:
        layers.append(nn.BatchNorm1d(sizes[-1], affine=False))
    return nn.Sequential(*layers)


class MoCoV3(TwoViewMethod):
    name = "mocov3"
    default_lr = 0.3
    # solo-learn's CIFAR pair (asymmetric.yaml): BYOL's colour jitter, no blur, solarize in the second view.
    view_groups = [
        ViewGroup(1, CropColorViews(jitter=BYOL_JITTER)),
        ViewGroup(1, CropColorViews(jitter=BYOL_JITTER, solarize_p=0.2)),
    ]
    checkpoint_keys = {
        **TwoViewMethod.checkpoint_keys,
        "predictor": "predictor",
        "target": "target",
        "momentum": "momentum",
    }

    @dataclass(frozen=True)
    class Config(TwoViewMethod.Config):
        flag_prefix = "mocov3_"
        hidden: int = with_default(TwoViewMethod.Config, "hidden", 4096)
        projection: int = with_default(TwoViewMethod.Config, "projection", 256)
        weight_decay: float = with_default(TwoViewMethod.Config, "weight_decay", 1e-6)
        predictor_hidden: int = option(4096, "hidden units of the predictor", at_least=1, at_most=MAX_LAYER_WIDTH)
        temperature: float = option(0.2, "temperature of the contrastive softmax", above=0)
        momentum: float = option(
            0.99, "momentum of the target at the start of its cosine schedule", at_least=0, at_most=1
        )
        final_momentum: float = option(1.0, "momentum of the target at the last step", at_least=0, at_most=1)

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
        self.momentum = config.momentum  # of the next target update; in the checkpoint
        self.projector = bias_free_mlp([backbone.feature_size, config.hidden, config.projection], output_norm=True)
        self.predictor = bias_free_mlp(
            [config.projection, config.predictor_hidden, config.projection], output_norm=False
        )
        self.target = copy.deepcopy(self.online).requires_grad_(False)
        self.set_optimizer([{"params": [*self.online.parameters(), *self.predictor.parameters()]}])

    @property
    def online(self) -> nn.Sequential:
        """Backbone and projector: the network the target follows."""
        return nn.Sequential(self.get_submodule("backbone"), self.projector)

    def checkpoint_ranges(self) -> dict[str, tuple[float, float]]:
        return {**super().checkpoint_ranges(), "momentum": (0, 1)}

    def training_step(self, views: list[torch.Tensor], labels: torch.Tensor, index: torch.Tensor) -> StepOutput:
        first, second = (self.projector(features) for features in self.two_views(views))
        with torch.no_grad():
            # Under torchrun every rank contrasts its predictions with the keys of all ranks.
            key_first, key_second = (gather_with_gradient(self.target(view)) for view in views)
        offset = current_rank() * first.shape[0]
        temperature = self.config.temperature
        loss = mocov3_loss(self.predictor(first), key_second, temperature, offset) + mocov3_loss(
            self.predictor(second), key_first, temperature, offset
        )
        momentum = torch.full((), self.momentum, device=loss.device)
        return StepOutput(
            loss=loss, loss_weight=views[0].shape[0], metrics=self.batch_metrics(first, second, momentum=momentum)
        )

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        """Move the target with the current momentum, then advance the momentum on its schedule
        (solo-learn's order)."""
        super().after_step(step)
        momentum_update(self.target, self.online, self.momentum)
        self.momentum = cosine_momentum(
            min(step, self.total_steps), self.total_steps, self.config.momentum, self.config.final_momentum
        )
