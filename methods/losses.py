"""Loss functions of the methods, as pure functions; their unit tests are in tests/test_<method>.py."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def focal_loss(logits: torch.Tensor, targets: torch.Tensor, gamma: float = 2.0,
               alpha: float | None = 0.5) -> torch.Tensor:
    """Mean sigmoid focal loss (Lin et al. 2017), as the relation learner uses it.

    The modulating factor (1 - p_t)^gamma is not detached, as in the original code, so its
    gradient is part of the objective.
    """
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p = torch.sigmoid(logits)
    p_t = targets * p + (1 - targets) * (1 - p)
    loss = bce * (1 - p_t).pow(gamma)
    if alpha is not None:
        loss = loss * (targets * alpha + (1 - targets) * (1 - alpha))
    return loss.mean()


def cosine_similarity_matrix(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Cosine similarity of every pair of rows, dividing by max(|x_i| |x_j|, eps) as the
    original SimCLR code does (not by the product of separately clamped norms)."""
    norms = x.norm(dim=1, keepdim=True)
    return (x @ x.t()) / (norms * norms.t()).clamp(min=eps)


def view_partners(rows: int, device: torch.device) -> torch.Tensor:
    """For two views in view-major order (row v*B + n), the row of the other view of each row."""
    return torch.arange(rows, device=device).roll(rows // 2)


def simclr_original_loss(projections: torch.Tensor, temperature: float = 0.5,
                         eps: float = 1e-8) -> torch.Tensor:
    """The original code's SimCLR loss, -log(mean_i ratio_i), on view-major (2B, D) rows.

    With E = exp(S / t), ratio_i = E[p(i), i] / (sum_j E[j, i] - e^{1/t}): the self term is
    removed by subtracting its value at similarity exactly 1, as the original does. In
    float32 that subtraction loses digits below t ~ 0.07 and gives NaN near t = 0.03;
    `nt_xent_loss`, which masks the self term instead, stays accurate there.
    """
    rows = projections.shape[0]
    exp_similarity = torch.exp(cosine_similarity_matrix(projections, eps) / temperature)
    columns = torch.arange(rows, device=projections.device)
    positives = exp_similarity[view_partners(rows, projections.device), columns]
    ratios = positives / (exp_similarity.sum(dim=0) - math.exp(1.0 / temperature))
    return -torch.log(ratios.mean())


def nt_xent_loss(projections: torch.Tensor, temperature: float = 0.5,
                 eps: float = 1e-8) -> torch.Tensor:
    """Standard NT-Xent (Chen et al. 2020) on view-major (2B, D) rows: the mean over rows of
    -log softmax of the positive, with each row's self-similarity masked out."""
    rows = projections.shape[0]
    logits = cosine_similarity_matrix(projections, eps) / temperature
    self_pairs = torch.eye(rows, dtype=torch.bool, device=projections.device)
    logits = logits.masked_fill(self_pairs, float("-inf"))
    return F.cross_entropy(logits, view_partners(rows, projections.device))


def jsd_discriminator_loss(positive_scores: torch.Tensor, negative_scores: torch.Tensor
                           ) -> torch.Tensor:
    """mean softplus(-T(positive)) + mean softplus(T(negative)) for discriminator logits T.

    Deep InfoMax (Hjelm et al. 2019) uses it twice: as the negated Jensen-Shannon estimate of
    mutual information (positives: matching (y, M) pairs) and as the prior discriminator's
    loss -(E log D(u) + E log(1 - D(y))) with D = sigmoid(T) (positives: prior samples u).
    softplus keeps it finite and its gradient bounded for any logit, where log(sigmoid(T))
    gives log 0 = -inf once sigmoid saturates.
    """
    return F.softplus(-positive_scores).mean() + F.softplus(negative_scores).mean()
