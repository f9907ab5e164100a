"""Two-dimensional maps of features for plots: PCA and exact t-SNE in plain torch.

t-SNE follows van der Maaten and Hinton (2008) with the usual optimiser settings
(perplexity 30, early exaggeration 12 for 250 iterations, momentum 0.5 then 0.8, per-
coordinate gains, learning rate max(N / 48, 50) as scikit-learn's "auto"). It is exact,
O(N^2) per iteration, which suits the few thousand points of a map (2,000 points: seconds).
"""

from __future__ import annotations

import math

import torch
from tqdm import tqdm


def principal_components(features: torch.Tensor) -> tuple[torch.Tensor, list[float]]:
    """Projection of the centred rows onto their two principal axes, and the share of the
    total variance each axis explains (for labelling the axes)."""
    centred = features.double() - features.double().mean(dim=0)
    _, singular, axes = torch.linalg.svd(centred, full_matrices=False)
    # Fix each axis's sign so the map does not flip between runs or libraries.
    signs = torch.sign(axes[:2].sum(dim=1))
    signs[signs == 0] = 1
    variance = singular.pow(2)
    shares = (variance[:2] / variance.sum().clamp(min=1e-300)).tolist()
    return (centred @ (axes[:2] * signs[:, None]).T).float(), shares


def pca_2d(features: torch.Tensor) -> torch.Tensor:
    """Projection of the centred rows onto their two principal axes."""
    return principal_components(features)[0]


def _conditional_probabilities(distances: torch.Tensor, perplexity: float) -> torch.Tensor:
    """Rows p(j|i) whose entropy is log(perplexity), by bisection on each row's precision."""
    target = math.log(perplexity)
    low = torch.full((len(distances), 1), -math.inf, dtype=distances.dtype)
    high = torch.full_like(low, math.inf)
    beta = torch.ones_like(low)
    for _ in range(64):
        logits = -distances * beta
        logits.fill_diagonal_(-math.inf)
        p = torch.softmax(logits, dim=1)
        entropy = -(p * torch.log(p.clamp(min=1e-300))).sum(dim=1, keepdim=True)
        too_flat = entropy > target  # too many neighbours: sharpen
        low = torch.where(too_flat, beta, low)
        high = torch.where(too_flat, high, beta)
        beta = torch.where(torch.isinf(high), beta * 2, torch.where(torch.isinf(low), beta / 2, (low + high) / 2))
    return p


def tsne_2d(features: torch.Tensor, seed: int, perplexity: float = 30.0, iterations: int = 1000) -> torch.Tensor:
    """A t-SNE map (N, 2) of the rows of `features`, reproducible for a given seed."""
    n = len(features)
    if n < 4:
        raise ValueError(f"t-SNE needs at least 4 points, got {n}")
    perplexity = min(perplexity, (n - 1) / 3)
    x = features.double()
    distances = torch.cdist(x, x).pow(2)
    distances = distances / distances.mean().clamp(min=1e-12)  # the bisection starts near scale 1
    p = _conditional_probabilities(distances, perplexity)
    p = ((p + p.T) / (2 * n)).clamp(min=1e-12)

    generator = torch.Generator().manual_seed(seed)
    start = pca_2d(features).double()
    # A PCA start, scaled small, keeps the global layout stable (scikit-learn's default).
    y = start / start[:, 0].std().clamp(min=1e-12) * 1e-4
    y += 1e-6 * torch.randn(y.shape, generator=generator, dtype=y.dtype)
    learning_rate = max(n / 12 / 4, 50.0)
    velocity = torch.zeros_like(y)
    gains = torch.ones_like(y)
    # O(N^2) per iteration: 2,000 points take about a minute on a few CPU cores, so a
    # terminal shows the iterations (tqdm draws nothing when the output is not a terminal).
    for step in tqdm(range(iterations), desc=f"t-SNE of {n} points", leave=False, disable=None):
        exaggeration, momentum = (12.0, 0.5) if step < 250 else (1.0, 0.8)
        affinity = 1.0 / (1.0 + torch.cdist(y, y).pow(2))
        affinity.fill_diagonal_(0.0)
        q = (affinity / affinity.sum()).clamp(min=1e-12)
        weights = (exaggeration * p - q) * affinity
        gradient = 4.0 * (weights.sum(dim=1, keepdim=True) * y - weights @ y)
        same_direction = (gradient > 0) == (velocity > 0)
        gains = torch.where(same_direction, gains * 0.8, gains + 0.2).clamp(min=0.01)
        velocity = momentum * velocity - learning_rate * gains * gradient
        y = y + velocity
        y = y - y.mean(dim=0)
    return y.float()
