"""Measures of an embedding that need no labels, so they judge a backbone on any images:

* `rankme`: the effective rank of the embedding (Garrido et al., "RankMe: Assessing the
  downstream performance of pretrained self-supervised representations by their rank",
  ICML 2023): exp of the entropy of its normalised singular values.
* `alignment` and `uniformity` (Wang and Isola, "Understanding contrastive representation
  learning through alignment and uniformity on the hypersphere", ICML 2020): how close the
  L2-normalised embeddings of two views of an image are, and how evenly the normalised
  embeddings spread over the sphere.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# RankMe adds this to every normalised singular value before the entropy (the paper's epsilon),
# so that the zero singular values of a collapsed embedding add nothing but a tiny constant.
RANKME_EPSILON = 1e-7


@torch.no_grad()
def rankme(embeddings: torch.Tensor) -> float:
    """The effective rank of `embeddings` (N, D): exp(-sum p_k log p_k) with p_k the k-th
    singular value over their sum (plus `RANKME_EPSILON`). It lies in [1, min(N, D)]: D for
    embeddings spread evenly over D directions, 1 for embeddings along a single direction."""
    if embeddings.dim() != 2 or min(embeddings.shape) == 0:
        raise ValueError(f"rankme: expected a non-empty (N, D) embedding, got shape {tuple(embeddings.shape)}")
    singular = torch.linalg.svdvals(embeddings.double())
    total = singular.sum()
    if total <= 0:  # every embedding is zero: no direction at all, the rank of a single point
        return 1.0
    shares = singular / total + RANKME_EPSILON
    return float(torch.exp(-(shares * shares.log()).sum()))


@torch.no_grad()
def alignment(first: torch.Tensor, second: torch.Tensor, alpha: float = 2.0) -> float:
    """Mean ||f(x) - f(y)||^alpha over the pairs of rows of `first` and `second` (two views of
    the same images, row for row), after L2 normalisation: 0 when the views agree, at most
    2^alpha. Wang and Isola's alignment loss, with their alpha 2."""
    if first.shape != second.shape or first.dim() != 2 or len(first) == 0:
        raise ValueError(
            f"alignment: expected two non-empty (N, D) embeddings of one shape, got "
            f"{tuple(first.shape)} and {tuple(second.shape)}"
        )
    difference = F.normalize(first.double(), dim=1) - F.normalize(second.double(), dim=1)
    return float(difference.norm(dim=1).pow(alpha).mean())


@torch.no_grad()
def uniformity(embeddings: torch.Tensor, t: float = 2.0) -> float:
    """The log of the mean of exp(-t ||f(x) - f(y)||^2) over the pairs of distinct rows, after L2
    normalisation: 0 for embeddings that all coincide, lower the more evenly they cover the
    sphere. Wang and Isola's uniformity loss, with their t 2."""
    if embeddings.dim() != 2 or len(embeddings) < 2:
        raise ValueError(f"uniformity: expected an (N, D) embedding of at least 2 rows, got {tuple(embeddings.shape)}")
    distances = torch.pdist(F.normalize(embeddings.double(), dim=1))
    return float(distances.pow(2).mul(-t).exp().mean().log())
