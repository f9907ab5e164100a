"""Frozen-backbone features, linear evaluation on them, and test-set scoring."""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn

from backbones import Backbone
from backbones.features import extract_features
from datasets import ImageSet
from utils.runtime import single_threaded
from utils.seeds import SeedPurpose, derived_seed


def train_linear_epoch(
    classifier: nn.Linear,
    optimizer: torch.optim.Optimizer,
    features: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    seed: int,
    epoch: int,
) -> tuple[float, float]:
    """One epoch of the linear classifier over precomputed features: (mean loss, accuracy %).

    The frozen backbone in eval mode without augmentation gives the same features every
    epoch, so this is the original protocol at a fraction of its cost.
    """
    classifier.train()
    with single_threaded(features.device):
        return _train_linear_epoch(classifier, optimizer, features, labels, batch_size, seed, epoch)


def _train_linear_epoch(classifier, optimizer, features, labels, batch_size, seed, epoch):
    generator = torch.Generator().manual_seed(derived_seed(seed, epoch, SeedPurpose.LINEAR_ORDER))
    order = torch.randperm(len(features), generator=generator).to(features.device)
    loss_sum = torch.zeros((), device=features.device)
    correct = torch.zeros((), device=features.device, dtype=torch.float64)
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        logits = classifier(features.index_select(0, index))
        target = labels.index_select(0, index)
        loss = F.cross_entropy(logits, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach() * len(index)
        correct += (logits.argmax(1) == target).sum()
    return (loss_sum / len(order)).item(), (100.0 * correct / len(order)).item()


@torch.no_grad()
def score_logits(logits: torch.Tensor, labels: torch.Tensor) -> dict:
    """Top-1 and top-5 accuracy (%) and mean cross-entropy over a whole split."""
    top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
    return {
        "accuracy": 100.0 * (top5[:, 0] == labels).double().mean().item(),
        "top5": 100.0 * (top5 == labels[:, None]).any(dim=1).double().mean().item(),
        "loss": F.cross_entropy(logits.float(), labels).item(),
        "images": len(labels),
    }


@torch.no_grad()
def evaluate(
    backbone: Backbone, classifier: nn.Linear, data: ImageSet, device: torch.device, batch_size: int = 256
) -> dict:
    start = time.time()
    features = extract_features(backbone, data, device, batch_size, desc="Test")
    classifier.eval()
    result = score_logits(classifier(features), data.labels.to(device))
    result["seconds"] = round(time.time() - start, 3)
    return result
