"""DeepCluster (Caron et al., ECCV 2018) as the baseline of the paper's original code.

Every epoch the backbone's features of the whole training set are PCA-whitened and
clustered with k-means; the cluster indices become the pseudo-labels of a classification
head trained with the backbone for one epoch. Fixes of the original (D3 in docs/original-code.md): features
come from un-augmented images, k-means is seeded from the run seed, the re-initialised
output layer also loses its stale Adam moments, and training images are augmented once.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F

from backbones import Backbone
from backbones.features import extract_features
from datasets.augment import CropFlipViews
from methods.base import EpochContext, EpochNotes, Method, StepOutput, ViewGroup
from methods.clustering import kmeans, normalized_mutual_info, pca_whiten
from methods.config import MethodConfig, option
from methods.heads import accuracy_sums, backbone_and_head_adam, mlp_head
from utils.errors import UserError
from utils.runtime import single_threaded
from utils.seeds import SeedPurpose, derived_seed

KMEANS_ITERATIONS = 30  # the original's max_iter


# Bounds of typos rather than of sense: k-means holds a (images x clusters) distance matrix.
MAX_CLUSTERS = 2**16
MAX_RESTARTS = 1000


class DeepCluster(Method):
    name = "deepcluster"
    # One view per image and step: its batch statistics are that view's, as in the original's
    # single forward, so per view and pooled coincide.
    per_view_batch_norm = True
    normalises_inputs = True  # the original's Normalize with the data set's mean and std
    score_name = "accuracy"

    @dataclass(frozen=True)
    class Config(MethodConfig):
        num_clusters: int = option(0, "k-means clusters (0 = 10 x classes)", at_least=0, at_most=MAX_CLUSTERS)
        kmeans_restarts: int = option(5, "k-means++ restarts per epoch, best kept", at_least=1, at_most=MAX_RESTARTS)
        sampling: Literal["weighted", "uniform"] = option(
            "weighted",
            "weighted (class-weighted loss, as the original) or uniform (equal images per cluster, as "
            "the DeepCluster paper)",
            flag="deepcluster_sampling",
        )

    # This suite's additions: the NMI of the next epoch needs the clustering, and a run
    # resumed inside an epoch trains on it and logs its NMI.
    checkpoint_keys = {
        "classifier": "classifier",
        "backbone": "backbone",
        "optimizer": "optimizer",
        "cluster_assignments": "assignments",
        "cluster_nmi": "nmi",
    }
    optional_keys = frozenset({"cluster_assignments", "cluster_nmi"})

    config: Config

    def __init__(self, backbone: Backbone, num_classes: int, config: Config | None = None, *, lr: float | None = None):
        super().__init__(backbone, num_classes, config, lr=lr)
        self.num_clusters = self.config.num_clusters or 10 * num_classes
        if self.num_clusters == 0:
            raise UserError(
                "--num_clusters: the training images have no labels, so the default "
                "10 x classes is unknown; pass --num_clusters N"
            )
        self.restarts = self.config.kmeans_restarts
        self.sampling = self.config.sampling
        self.classifier = mlp_head(backbone.feature_size, self.num_clusters)
        self.optimizer = backbone_and_head_adam(self.backbone, self.classifier, self.lr)
        # This epoch's clustering (empty before the first) and the quantities derived from it.
        self.assignments = torch.empty(0, dtype=torch.long)
        self.class_weights: torch.Tensor | None = None
        self.nmi = math.nan

    @property
    def view_groups(self) -> list[ViewGroup]:
        return [ViewGroup(1, CropFlipViews())]

    def on_epoch_start(self, context: EpochContext) -> EpochNotes:
        start = time.time()
        features = extract_features(self.backbone, context.data, context.device, desc="Clustering features")
        dim = features.shape[1]
        generator = torch.Generator(device=context.device)
        generator.manual_seed(derived_seed(context.seed, context.epoch, SeedPurpose.CLUSTERING))
        # Thousands of small ops: on a busy CPU, waiting for a second thread at each of them
        # made k-means 200x slower (20 s instead of 0.1 s for 1,000 points).
        with single_threaded(context.device):
            features = F.normalize(pca_whiten(features, dim if dim < 512 else dim // 2), dim=1)
            labels, _, inertia = kmeans(features, self.num_clusters, generator, self.restarts, KMEANS_ITERATIONS)
        previous = self.assignments.to(labels.device)
        # A checkpoint of another training set (--checkpoint) has no comparable clustering.
        self.nmi = normalized_mutual_info(labels, previous) if len(previous) == len(labels) else math.nan
        self.assignments = labels
        counts = torch.bincount(labels, minlength=self.num_clusters)
        # Uniform sampling balances the clusters itself and keeps the plain loss, as in the
        # original's commented-out alternative; otherwise its weights 1 - frequency.
        if self.sampling == "weighted":
            self.class_weights = 1.0 - counts.float() / len(labels)
        self._reset_output_layer(generator)
        return {
            "non_empty_clusters": int((counts > 0).sum()),
            "inertia": float(inertia),
            "NMI_with_the_previous_epoch": self.nmi,
            "clustering_seconds": time.time() - start,
        }

    def on_epoch_resume(self, context: EpochContext) -> None:
        """Inside an interrupted epoch the clustering, the new output layer and the NMI are in
        the checkpoint: only the loss weights are derived again."""
        self.assignments = self.assignments.to(context.device)
        if self.sampling == "weighted":
            counts = torch.bincount(self.assignments, minlength=self.num_clusters)
            self.class_weights = (1.0 - counts.float() / len(self.assignments)).to(context.device)

    def _reset_output_layer(self, generator: torch.Generator) -> None:
        """New pseudo-labels mean a new output layer: N(0, 0.01) weights, zero bias and no
        Adam moments (the original kept the old layer's: D3 in docs/original-code.md)."""
        layer = self.classifier.linear2
        with torch.no_grad():
            layer.weight.normal_(0.0, 0.01, generator=generator)
            layer.bias.zero_()
        for parameter in (layer.weight, layer.bias):
            self.optimizer.state.pop(parameter, None)

    def epoch_order(self, epoch: int, generator: torch.Generator) -> torch.Tensor | None:
        """Uniform sampling: N indices, the non-empty clusters taking turns of N // m or one more
        images each. A cluster cycles through a random permutation of its members, so a small
        one repeats each image as evenly as possible (the original drew with replacement)."""
        if self.sampling != "uniform":
            return None
        labels = self.assignments.cpu()
        total = len(labels)
        counts = torch.bincount(labels, minlength=self.num_clusters)
        clusters = (counts > 0).nonzero().squeeze(1)
        quota = torch.full((len(clusters),), total // len(clusters), dtype=torch.long)
        quota[torch.randperm(len(clusters), generator=generator)[: total % len(clusters)]] += 1
        shuffled = torch.randperm(total, generator=generator)
        members = shuffled[labels[shuffled].argsort(stable=True)]  # grouped by cluster, shuffled within
        first_member = (torch.cumsum(counts, 0) - counts)[clusters]
        slot_cluster = torch.repeat_interleave(torch.arange(len(clusters)), quota)
        slot_rank = torch.arange(total) - torch.repeat_interleave(torch.cumsum(quota, 0) - quota, quota)
        order = members[first_member[slot_cluster] + slot_rank % counts[clusters][slot_cluster]]
        return order[torch.randperm(total, generator=generator)]

    def training_step(self, views: list[torch.Tensor], labels: torch.Tensor, index: torch.Tensor) -> StepOutput:
        targets = self.assignments.index_select(0, index)
        logits = self.classifier(self.backbone(views[0]))
        loss = F.cross_entropy(logits, targets, weight=self.class_weights)
        correct, count = accuracy_sums(logits, targets)
        one = torch.ones((), device=logits.device)
        return StepOutput(
            loss=loss,
            loss_weight=targets.numel(),
            metrics={
                "accuracy": (100.0 * correct, count),
                "nmi": (one * self.nmi, one),  # the same value every step: the epoch mean is the NMI
            },
        )

    def checkpoint_ranges(self) -> dict[str, tuple[float, float]]:
        return {"cluster_assignments": (0, self.num_clusters - 1)}

    def check_checkpoint_state(self, state: dict, path: str | Path | None = None) -> None:
        stored = state.get("classifier", {}).get("linear2.weight")
        if isinstance(stored, torch.Tensor) and stored.dim() == 2 and stored.shape[0] != self.num_clusters:
            raise UserError(
                f"--num_clusters: the checkpoint's head has {stored.shape[0]} clusters, this run "
                f"{self.num_clusters}; pass --num_clusters {stored.shape[0]}"
            )
        super().check_checkpoint_state(state, path)
