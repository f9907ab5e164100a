"""Evaluation by nearest neighbours in representation space: kNN accuracy and image retrieval.

Both use cosine similarity of the frozen backbone's features; neither trains anything, so
they score a backbone checkpoint of any stage.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Query rows per similarity block: 512 queries x 50,000 training images = 100 MB of float32.
_QUERY_BLOCK = 512


def _normalised(features: torch.Tensor) -> torch.Tensor:
    return F.normalize(features.float(), dim=1)


@torch.no_grad()
def knn_accuracy(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    k: int,
    temperature: float = 0.07,
) -> dict:
    """Top-1 and top-5 accuracy (%) of a weighted k-nearest-neighbour classifier.

    As in Wu et al. (2018), the protocol most self-supervised papers report: each of the k
    most cosine-similar training images votes for its class with weight exp(similarity / T).
    """
    if not 0 < k <= len(train_features):
        raise ValueError(f"k must be in 1..{len(train_features)}, got {k}")
    train = _normalised(train_features)
    test = _normalised(test_features)
    classes = int(max(train_labels.max(), test_labels.max())) + 1
    top1 = top5 = 0
    for start in range(0, len(test), _QUERY_BLOCK):
        similarity, index = (test[start : start + _QUERY_BLOCK] @ train.T).topk(k, dim=1)
        votes = torch.zeros(len(index), classes, device=test.device)
        votes.scatter_add_(1, train_labels[index], (similarity / temperature).exp())
        ranked = votes.topk(min(5, classes), dim=1).indices
        target = test_labels[start : start + _QUERY_BLOCK, None]
        top1 += int((ranked[:, :1] == target).sum())
        top5 += int((ranked == target).any(dim=1).sum())
    return {"knn_accuracy": 100.0 * top1 / len(test), "knn_top5": 100.0 * top5 / len(test)}


@torch.no_grad()
def nearest_neighbours(features: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (N, k) of each row's k most cosine-similar other rows, most similar first."""
    if not 0 < k < len(features):
        raise ValueError(f"k must be in 1..{len(features) - 1}, got {k}")
    normalised = _normalised(features)
    blocks = []
    for start in range(0, len(normalised), _QUERY_BLOCK):
        similarity = normalised[start : start + _QUERY_BLOCK] @ normalised.T
        rows = torch.arange(len(similarity), device=similarity.device)
        similarity[rows, rows + start] = -float("inf")  # a query does not retrieve itself
        blocks.append(similarity.topk(k, dim=1).indices)
    return torch.cat(blocks)


@torch.no_grad()
def retrieval_precision(neighbours: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean share (%) of each query's retrieved images that are of the query's class (the
    paper's top-k retrieval accuracy, appendix B.10)."""
    return 100.0 * (labels[neighbours] == labels[:, None]).double().mean().item()
