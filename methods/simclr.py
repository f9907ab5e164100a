"""SimCLR (Chen et al. 2020), the contrastive baseline, as the original code trains it.

Two augmented views of each image go through the backbone and a projection head; the loss
pulls the two projections of an image together against those of the other images.
"""
from __future__ import annotations

import argparse
import math

import torch
from torch import nn

from methods.base import Method, StepOutput
from methods.heads import backbone_and_head_adam, mlp_head
from methods.losses import nt_xent_loss, simclr_original_loss
from utils.distributed import gather_with_gradient

# `original` is the -log(mean ratio) form of the original code, `ntxent` the usual mean of logs.
SIMCLR_LOSSES = {"original": simclr_original_loss, "ntxent": nt_xent_loss}


class SimCLR(Method):
    name = "simclr"
    augmentation = "relationnet"  # the original's simclr pipeline is the relationnet one

    def __init__(self, backbone: nn.Module, num_classes: int, args: argparse.Namespace):
        super().__init__(backbone, num_classes, args)
        self.views_per_image = 2
        self.temperature = args.temperature
        self.loss_function = SIMCLR_LOSSES[args.simclr_loss]
        self.gather = getattr(args, "simclr_gather", False)
        self.head = mlp_head(backbone.feature_size, 64)
        self.optimizer = backbone_and_head_adam(self.backbone, self.head, self.lr)

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--temperature", type=float, default=0.5,
                            help="simclr: softmax temperature of the loss (default 0.5)")
        parser.add_argument("--simclr_loss", default="original",
                            help="simclr: 'original' (-log of the mean ratio, as the original "
                                 "code) or 'ntxent' (mean of -log ratios)")
        parser.add_argument("--simclr_gather", action="store_true",
                            help="simclr under torchrun: contrast each image with the images of "
                                 "all ranks, not only those of its own rank's batch")

    @classmethod
    def check_arguments(cls, args: argparse.Namespace) -> str | None:
        if not (args.temperature > 0 and math.isfinite(args.temperature)):
            return f"--temperature {args.temperature}: must be a positive number"
        if args.simclr_loss not in SIMCLR_LOSSES:
            return f"--simclr_loss {args.simclr_loss}: choose one of {', '.join(SIMCLR_LOSSES)}"
        return None

    def training_step(self, views: torch.Tensor, labels: torch.Tensor,
                      index: torch.Tensor) -> StepOutput:
        projections = self.head(self.backbone(views))
        if self.gather:  # keep view-major order over the global batch: all first views, then all second
            first, second = projections.chunk(2)
            projections = torch.cat([gather_with_gradient(first), gather_with_gradient(second)])
        loss = self.loss_function(projections, self.temperature)
        return StepOutput(loss=loss, loss_weight=views.shape[0])

    def checkpoint_state(self) -> dict:
        return {"backbone": self.backbone.state_dict(),
                "head": self.head.state_dict(),
                "optimizer": self.optimizer.state_dict()}

    def load_checkpoint_state(self, state: dict) -> None:
        self.backbone.load_state_dict(state["backbone"])
        self.head.load_state_dict(state["head"])
        # The original always saves the optimizer; also accept files stripped to the weights.
        if "optimizer" in state:
            self.optimizer.load_state_dict(state["optimizer"])
