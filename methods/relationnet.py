"""Self-supervised relational reasoning (Patacchiola and Storkey, NeurIPS 2020).

K augmented views of each image go through the backbone; a relation head scores pairs of
representations as "same image" (positive) or "different images" (negative), trained with a
focal loss (or, as the paper's essential notebook, plain binary cross-entropy).
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import torch
import torch.nn.functional as F

from backbones import Backbone
from datasets.augment import CropColorViews
from methods.base import Method, StepOutput, ViewGroup
from methods.config import MethodConfig, option
from methods.heads import backbone_and_head_adam, mlp_head
from methods.losses import binary_cross_entropy, focal_loss

Aggregation = Literal["cat", "sum", "mean", "max"]
AGGREGATIONS = typing.get_args(Aggregation)
# The paper's code trains with the focal loss (gamma 2, alpha 0.5); its essential notebook with BCE.
RELATION_LOSSES = {
    "focal": lambda logits, targets: focal_loss(logits, targets, gamma=2.0, alpha=0.5),
    "bce": binary_cross_entropy,
}


@lru_cache(maxsize=16)
def _pair_indices(K: int, B: int, device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Row indices (first, second) and targets of every pair, in the original code's order.

    The original loops over view blocks (i, j), i < j, lexicographically; for each it emits
    B positives (view i and view j of the same image) then B negatives (view j rolled along
    the batch by a shift that starts at 1, grows by one per block pair and wraps back to 1
    when it reaches B, so the roll is never the identity). `torch.roll(x, s)[n]` is
    `x[(n - s) mod B]`.
    """
    blocks = torch.triu_indices(K, K, offset=1)  # lexicographic (i, j), i < j
    num_blocks = blocks.shape[1]
    shifts = torch.arange(num_blocks) % max(B - 1, 1) + 1
    n = torch.arange(B)
    first = (blocks[0][:, None] * B + n).repeat_interleave(2, dim=0)  # P and N share view i
    positive_second = blocks[1][:, None] * B + n
    negative_second = blocks[1][:, None] * B + (n - shifts[:, None]) % B
    second = torch.stack([positive_second, negative_second], dim=1).reshape(-1, B)
    targets = torch.tensor([1.0, 0.0]).repeat(num_blocks).repeat_interleave(B)
    return first.reshape(-1).to(device), second.reshape(-1).to(device), targets.to(device)


def aggregate(features: torch.Tensor, K: int, aggregation: Aggregation = "cat") -> tuple[torch.Tensor, torch.Tensor]:
    """All K(K-1)B relation pairs and their targets from view-major features (K*B, F)."""
    B = features.shape[0] // K
    first, second, targets = _pair_indices(K, B, str(features.device))
    a = features.index_select(0, first)
    b = features.index_select(0, second)
    if aggregation == "cat":
        pairs = torch.cat([a, b], dim=1)
    elif aggregation == "sum":
        pairs = a + b
    elif aggregation == "mean":
        pairs = (a + b) / 2.0
    elif aggregation == "max":
        pairs = torch.maximum(a, b)
    else:
        raise ValueError(f"unknown aggregation '{aggregation}': choose one of {', '.join(AGGREGATIONS)}")
    return pairs, targets


class RelationNet(Method):
    name = "relationnet"
    score_name = "accuracy"
    checkpoint_keys = {"backbone": "backbone", "relation": "relation_module", "optimizer": "optimizer"}
    per_view_batch_norm = False  # the original concatenates the K views into one batch
    normalises_inputs = True  # the original's Normalize with the data set's mean and std

    @dataclass(frozen=True)
    class Config(MethodConfig):
        K: int = option(32, "augmented views per image", at_least=2)
        aggregation: Aggregation = option("cat", "how pairs are combined: cat, sum, mean, max")
        relation_loss: Literal["focal", "bce"] = option(
            "focal",
            "loss of the relation head: focal (the paper's code) or bce (plain binary cross-entropy, "
            "as the paper's essential notebook)",
        )

    config: Config

    def __init__(self, backbone: Backbone, num_classes: int, config: Config | None = None, *, lr: float | None = None):
        super().__init__(backbone, num_classes, config, lr=lr)
        self.K = self.config.K
        self.aggregation = self.config.aggregation
        self.relation_loss = self.config.relation_loss
        width = backbone.feature_size * (2 if self.aggregation == "cat" else 1)
        self.relation_module = mlp_head(width, 1)
        self.optimizer = backbone_and_head_adam(self.backbone, self.relation_module, self.lr)

    @property
    def view_groups(self) -> list[ViewGroup]:
        return [ViewGroup(self.K, CropColorViews())]

    def relation_logits(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The head's scores of all K(K-1)B pairs of view-major features, and their targets.

        With `cat`, `sum` and `mean` the head's first layer is linear in each member of a
        pair, W [a; b] + c = W_a a + (W_b b + c), so it is applied to the K*B features once
        and the pairs are formed from its outputs: the (pairs x 2F) input and its gradient
        are never built, which saves a third of the head's time and equals building the pairs
        first up to float rounding. `max` is not linear and builds them.
        """
        head = self.relation_module
        if self.aggregation == "max":
            pairs, targets = aggregate(features, self.K, self.aggregation)
            return head(pairs).squeeze(1), targets
        first, second, targets = _pair_indices(self.K, features.shape[0] // self.K, str(features.device))
        weight, bias = head.linear1.weight, head.linear1.bias
        if self.aggregation == "cat":
            weight_first, weight_second = weight.split(features.shape[1], dim=1)
            of_first = F.linear(features, weight_first)
            of_second = F.linear(features, weight_second, bias)
        else:
            of_first = F.linear(features, weight) * (0.5 if self.aggregation == "mean" else 1.0)
            of_second = of_first + bias
        hidden = of_first.index_select(0, first)
        hidden += of_second.index_select(0, second)
        # In place: batch norm's backward does not need its output, so one (pairs x 256)
        # tensor fewer is kept for the backward pass.
        activated = F.leaky_relu(head.bn1(hidden), head.relu.negative_slope, inplace=True)
        return head.linear2(activated).squeeze(1), targets

    def training_step(self, views: list[torch.Tensor], labels: torch.Tensor, index: torch.Tensor) -> StepOutput:
        logits, targets = self.relation_logits(self.forward_views(self.backbone, views[0], self.K))
        loss = RELATION_LOSSES[self.relation_loss](logits, targets)
        correct = ((logits > 0).float() == targets).float()
        positives = targets.sum()
        pair_count = torch.full((), float(targets.numel()), device=logits.device)
        return StepOutput(
            loss=loss,
            loss_weight=targets.numel(),
            metrics={
                "accuracy": (100.0 * correct.sum(), pair_count),
                "accuracy_positive": (100.0 * (correct * targets).sum(), positives),
                "accuracy_negative": (100.0 * (correct * (1 - targets)).sum(), pair_count - positives),
            },
        )

    def head_step_bytes(self, batch_size: int) -> int:
        # K(K-1)B pairs, each holding its aggregated input and the 256-unit hidden layer
        # (linear, batch norm, activation) in float32, forward and backward.
        pairs = self.K * (self.K - 1) * batch_size
        width = self.relation_module.linear1.in_features
        return pairs * (width + 3 * 256) * 4 * 2
