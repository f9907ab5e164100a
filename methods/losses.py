"""Loss functions of the methods, as pure functions; their unit tests are in tests/methods/."""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

_HALF = (torch.float16, torch.bfloat16)


def in_float32(loss_function):
    """Compute a loss in float32 also inside a bfloat16/float16 autocast region: sums over
    thousands of terms and the subtraction in the original SimCLR loss need float32's digits.
    Half-precision tensors passed in are cast to float32; other inputs are left alone."""

    @functools.wraps(loss_function)
    def float32_loss(*args, **kwargs):
        first = args[0]
        args = [a.float() if isinstance(a, torch.Tensor) and a.dtype in _HALF else a for a in args]
        with torch.autocast(first.device.type, enabled=False):
            return loss_function(*args, **kwargs)

    return float32_loss


@in_float32
def focal_loss(
    logits: torch.Tensor, targets: torch.Tensor, gamma: float = 2.0, alpha: float | None = 0.5
) -> torch.Tensor:
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


@in_float32
def binary_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy of logits: the relation loss of the paper's essential
    notebook (`BCEWithLogitsLoss`), the focal loss without its modulating factor."""
    return F.binary_cross_entropy_with_logits(logits, targets)


def cosine_similarity_matrix(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Cosine similarity of every pair of rows, dividing by max(|x_i| |x_j|, eps) as the
    original SimCLR code does (not by the product of separately clamped norms)."""
    norms = x.norm(dim=1, keepdim=True)
    return (x @ x.t()) / (norms * norms.t()).clamp(min=eps)


def view_partners(rows: int, device: torch.device) -> torch.Tensor:
    """For two views in view-major order (row v*B + n), the row of the other view of each row."""
    return torch.arange(rows, device=device).roll(rows // 2)


@in_float32
def simclr_original_loss(projections: torch.Tensor, temperature: float = 0.5, eps: float = 1e-8) -> torch.Tensor:
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


@in_float32
def nt_xent_loss(projections: torch.Tensor, temperature: float = 0.5, eps: float = 1e-8) -> torch.Tensor:
    """Standard NT-Xent (Chen et al. 2020) on view-major (2B, D) rows: the mean over rows of
    -log softmax of the positive, with each row's self-similarity masked out."""
    rows = projections.shape[0]
    logits = cosine_similarity_matrix(projections, eps) / temperature
    self_pairs = torch.eye(rows, dtype=torch.bool, device=projections.device)
    logits = logits.masked_fill(self_pairs, float("-inf"))
    return F.cross_entropy(logits, view_partners(rows, projections.device))


@in_float32
def jsd_discriminator_loss(positive_scores: torch.Tensor, negative_scores: torch.Tensor) -> torch.Tensor:
    """Mean softplus(-T(positive)) + mean softplus(T(negative)) for discriminator logits T.

    Deep InfoMax (Hjelm et al. 2019) uses it twice: as the negated Jensen-Shannon estimate of
    mutual information (positives: matching (y, M) pairs) and as the prior discriminator's
    loss -(E log D(u) + E log(1 - D(y))) with D = sigmoid(T) (positives: prior samples u).
    softplus keeps it finite and its gradient bounded for any logit, where log(sigmoid(T))
    gives log 0 = -inf once sigmoid saturates.
    """
    return F.softplus(-positive_scores).mean() + F.softplus(negative_scores).mean()


@in_float32
def relic_loss(
    online: torch.Tensor,
    target: torch.Tensor,
    log_temperature: torch.Tensor,
    bias: torch.Tensor,
    alpha: float = 1.0,
    siglip: bool = False,
    max_temperature: float = 5.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ReLIC's loss of (online, target) projection pairs, as relic-pytorch computes it.

    `online` and `target` are (..., n, d) projections of the same n images (any leading
    dimensions index pairs of views); they are L2-normalised, and the logits are
    x x'^T * clamp(exp(log_temperature), max_temperature) + bias. Per pair: instance
    discrimination (cross-entropy with the diagonal as the class, or with `siglip` the
    pairwise sigmoid loss -sum log sigmoid((2I - 1) * logits) / n) plus `alpha` times the
    invariance term KL(p2 || p1) / n, p1 the row-wise log-softmax of the logits and p2 their
    column-wise softmax, transposed. Returns (loss, invariance, logits), the first two of
    shape (...).
    """
    x, x_target = F.normalize(online, dim=-1), F.normalize(target, dim=-1)
    temperature = log_temperature.exp().clamp(max=max_temperature)
    logits = x @ x_target.transpose(-1, -2) * temperature + bias
    n = logits.shape[-1]
    rows = logits.log_softmax(dim=-1)
    if siglip:
        signs = 2 * torch.eye(n, device=logits.device, dtype=logits.dtype) - 1
        instance = -F.logsigmoid(signs * logits).sum((-2, -1)) / n
    else:
        instance = -torch.diagonal(rows, dim1=-2, dim2=-1).mean(-1)
    columns = logits.log_softmax(dim=-2).transpose(-1, -2)
    invariance = (columns.exp() * (columns - rows)).sum((-2, -1)) / n
    return instance + alpha * invariance, invariance, logits


@in_float32
def negative_cosine_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """SimSiam's loss (Chen and He 2021): -cos(prediction, target) averaged over the rows, the
    target without gradient (the stop-gradient that keeps SimSiam from collapsing)."""
    return -F.cosine_similarity(prediction, target.detach(), dim=-1).mean()


def normalised_mse_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BYOL's loss (Grill et al. 2020): the squared distance of the L2-normalised rows,
    |p/|p| - z/|z||^2 = 2 - 2 cos(p, z), averaged over the rows, the target without gradient."""
    return 2 + 2 * negative_cosine_loss(prediction, target)


def _off_diagonal_square_sum(matrix: torch.Tensor) -> torch.Tensor:
    return matrix.square().sum() - matrix.diagonal().square().sum()


@in_float32
def barlow_twins_loss(
    first: torch.Tensor,
    second: torch.Tensor,
    off_diagonal_weight: float = 0.0051,
    scale: float = 0.1,
    eps: float = 1e-5,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Barlow Twins' loss (Zbontar et al. 2021) of the (n, d) projections of two views.

    Each view is batch-normalised per dimension (mean 0, biased variance 1, as BatchNorm1d
    without affine parameters in training mode), C = first^T second / n is their (d, d)
    cross-correlation, and the loss is scale * (sum_i (1 - C_ii)^2 + off_diagonal_weight *
    sum_{i != j} C_ij^2), solo-learn's form (`scale` 0.1 in its CIFAR configuration).
    Returns (loss, on-diagonal sum, off-diagonal sum).
    """
    n = first.shape[0]
    first = F.batch_norm(first, None, None, training=True, eps=eps)
    second = F.batch_norm(second, None, None, training=True, eps=eps)
    correlation = first.t() @ second / n
    on_diagonal = (correlation.diagonal() - 1).square().sum()
    off_diagonal = _off_diagonal_square_sum(correlation)
    return scale * (on_diagonal + off_diagonal_weight * off_diagonal), on_diagonal, off_diagonal


@in_float32
def vicreg_loss(
    first: torch.Tensor,
    second: torch.Tensor,
    invariance_weight: float = 25.0,
    variance_weight: float = 25.0,
    covariance_weight: float = 1.0,
    eps: float = 1e-4,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """VICReg's loss (Bardes et al. 2022) of the (n, d) projections of two views.

    invariance: mean squared error between the views; variance: for each view, the mean over
    dimensions of max(0, 1 - sqrt(Var + eps)) (unbiased variance over the batch); covariance:
    for each view, the sum of the squared off-diagonal entries of its covariance matrix
    (n - 1 in the denominator) over d. Returns (weighted sum, invariance, variance,
    covariance), the terms summed over both views as solo-learn and the paper's code do.
    """
    d = first.shape[1]
    invariance = F.mse_loss(first, second)
    variance = first.new_zeros(())
    covariance = first.new_zeros(())
    for view in (first, second):
        variance = variance + F.relu(1 - torch.sqrt(view.var(dim=0) + eps)).mean()
        centred = view - view.mean(dim=0)
        covariance = covariance + _off_diagonal_square_sum(centred.t() @ centred / (view.shape[0] - 1)) / d
    loss = invariance_weight * invariance + variance_weight * variance + covariance_weight * covariance
    return loss, invariance, variance, covariance


@in_float32
def moco_queue_loss(
    query: torch.Tensor, key: torch.Tensor, negatives: torch.Tensor, temperature: float
) -> torch.Tensor:
    """MoCo's InfoNCE loss with a queue of negatives (He et al. 2020), as solo-learn's MoCo v2+
    computes it: each row of the (n, d) `query` scores its own row of `key` first, then every
    row of the (k, d) `negatives`; the logits are divided by `temperature` and the loss is the
    mean cross-entropy with the first logit as the class. `query`, `key` and `negatives` come
    L2-normalised (the method normalises them); the key and the negatives get no gradient."""
    key, negatives = key.detach(), negatives.detach()
    positives = (query * key).sum(dim=1, keepdim=True)
    logits = torch.cat([positives, query @ negatives.t()], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(query.shape[0], dtype=torch.long, device=query.device))


@in_float32
def mocov3_loss(query: torch.Tensor, key: torch.Tensor, temperature: float, key_offset: int = 0) -> torch.Tensor:
    """MoCo v3's contrastive loss (Chen, Xie and He 2021), as solo-learn computes it: the rows of
    `query` (the online predictions, n x d) and `key` (the momentum projections, m x d, m >= n)
    are L2-normalised, the logits are their dot products over `temperature`, row i's class is
    key row `key_offset` + i (the keys may be those of every rank, this rank's from
    `key_offset`), and the mean cross-entropy is scaled by 2 * temperature, as the paper's code
    does. The keys get no gradient."""
    query, key = F.normalize(query, dim=1), F.normalize(key.detach(), dim=1)
    logits = query @ key.t() / temperature
    targets = torch.arange(query.shape[0], device=query.device) + key_offset
    return F.cross_entropy(logits, targets) * (2 * temperature)


@torch.no_grad()
def nearest_neighbours(rows: torch.Tensor, support: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """NNCLR's look-up: for each of the (n, d) `rows`, the index of the row of the (k, d)
    `support` set with the largest dot product (the cosine, both being L2-normalised) and
    that row itself, without gradient."""
    index = (rows @ support.t()).argmax(dim=1)
    return index, support[index]


@in_float32
def nnclr_loss(neighbours: torch.Tensor, prediction: torch.Tensor, temperature: float) -> torch.Tensor:
    """NNCLR's loss (Dwibedi et al. 2021) in solo-learn's form: the (n, d) nearest `neighbours`
    of one view's projections and the `prediction` of the other view are L2-normalised; the
    logits are neighbours times predictions transposed over `temperature`, and the loss is the
    mean cross-entropy of each neighbour row with its own image's prediction as the class."""
    neighbours, prediction = F.normalize(neighbours.detach(), dim=-1), F.normalize(prediction, dim=-1)
    logits = neighbours @ prediction.t() / temperature
    return F.cross_entropy(logits, torch.arange(prediction.shape[0], device=prediction.device))
