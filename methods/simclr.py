"""SimCLR (Chen et al. 2020), the contrastive baseline, as the original code trains it.

Two augmented views of each image go through the backbone and a projection head; the loss
pulls the two projections of an image together against those of the other images.
"""
from __future__ import annotations

import torch
from torch import nn

from methods.base import Method, Option, StepOutput, ViewGroup
from methods.heads import backbone_and_head_adam, mlp_head
from methods.losses import nt_xent_loss, simclr_original_loss
from utils.distributed import gather_with_gradient

# `original` is the -log(mean ratio) form of the original code, `ntxent` the usual mean of logs.
SIMCLR_LOSSES = {"original": simclr_original_loss, "ntxent": nt_xent_loss}


# The original loss sums exp(similarity / T) directly: exp(50) is still far from float32's limit
# (about exp(88)), exp(1/1e-30) overflows. NT-Xent works on the logits, which stay finite far lower.
MIN_TEMPERATURE = {"original": 0.02, "ntxent": 1e-3}
MAX_TEMPERATURE = 100.0


class SimCLR(Method):
    name = "simclr"
    options = (
        Option("temperature", 0.5, "softmax temperature of the loss"),
        Option("simclr_loss", "original", "'original' (-log of the mean ratio, as the original code) "
                                          "or 'ntxent' (mean of -log ratios)"),
        Option("simclr_gather", False, "under torchrun: contrast each image with the images of all "
                                       "ranks, not only those of its own rank's batch", switch=True),
    )
    checkpoint_keys = {"backbone": "backbone", "head": "head", "optimizer": "optimizer"}

    def __init__(self, backbone: nn.Module, num_classes: int, lr: float | None = None,
                 temperature: float = 0.5, simclr_loss: str = "original", simclr_gather: bool = False):
        super().__init__(backbone, num_classes, lr, temperature=temperature, simclr_loss=simclr_loss)
        self.temperature = temperature
        self.loss_function = SIMCLR_LOSSES[simclr_loss]
        self.gather = simclr_gather
        self.head = mlp_head(backbone.feature_size, 64)
        self.optimizer = backbone_and_head_adam(self.backbone, self.head, self.lr)

    @property
    def view_groups(self) -> list[ViewGroup]:
        return [ViewGroup(2, "crop_color_gray")]  # the original's simclr pipeline is relationnet's

    @classmethod
    def check_options(cls, options: dict) -> str | None:
        if options["simclr_loss"] not in SIMCLR_LOSSES:
            return f"--simclr_loss {options['simclr_loss']}: choose one of {', '.join(SIMCLR_LOSSES)}"
        loss, lowest = options["simclr_loss"], MIN_TEMPERATURE[options["simclr_loss"]]
        if not (lowest <= options["temperature"] <= MAX_TEMPERATURE):
            why = " (exp(1/T) overflows below; ntxent takes smaller ones)" if loss == "original" else ""
            return (f"--temperature {options['temperature']}: must be between {lowest:g} and {MAX_TEMPERATURE:g} "
                    f"with --simclr_loss {loss}{why}")
        return None

    def training_step(self, views: list[torch.Tensor], labels: torch.Tensor,
                      index: torch.Tensor) -> StepOutput:
        projections = self.head(self.backbone(views[0]))
        if self.gather:  # keep view-major order over the global batch: all first views, then all second
            first, second = projections.chunk(2)
            projections = torch.cat([gather_with_gradient(first), gather_with_gradient(second)])
        loss = self.loss_function(projections, self.temperature)
        return StepOutput(loss=loss, loss_weight=views[0].shape[0])
