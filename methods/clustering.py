"""PCA-whitening, k-means and normalised mutual information in plain torch (for DeepCluster).

Everything runs on the device of its input; under a seeded generator the results are
reproducible on the CPU (on CUDA, `index_add_` sums in a non-deterministic order).
"""

from __future__ import annotations

import math

import torch

# Largest distance block (rows x clusters) held at once: 2^24 floats = 64 MiB. For 100K
# points and 10,000 clusters that is 1,677 rows per block, 60 blocks per assignment pass.
_BLOCK_ELEMENTS = 2**24


def pca_whiten(x: torch.Tensor, n_components: int) -> torch.Tensor:
    """Project centred rows of `x` (N, D) onto their top principal axes, with unit variance.

    Like scikit-learn's `PCA(whiten=True)`: the output covariance (divided by N - 1) is the
    identity.
    """
    if not 0 < n_components <= x.shape[1]:
        raise ValueError(f"n_components must be in 1..{x.shape[1]}, got {n_components}")
    centred = x.float() - x.mean(dim=0, dtype=torch.float64).float()
    # Float64 keeps the smallest variances exact when the features are ill-conditioned.
    covariance = centred.T.double() @ centred.double() / max(len(x) - 1, 1)
    variances, axes = torch.linalg.eigh(covariance)  # ascending
    variances = variances.flip(0)[:n_components]
    axes = axes.flip(1)[:, :n_components]
    # Dead feature channels have zero variance; a floor keeps their projection finite.
    variances = variances.clamp(min=1e-12 * float(variances[0].clamp(min=1e-30)))
    return centred @ (axes / variances.sqrt()).float()


def _nearest(x: torch.Tensor, centroids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of the nearest centroid and squared distance to it, for every row of `x`."""
    rows = max(1, _BLOCK_ELEMENTS // len(centroids))
    centroid_norms = centroids.pow(2).sum(1)
    labels, distances = [], []
    for start in range(0, len(x), rows):
        block = x[start : start + rows]
        partial = torch.addmm(centroid_norms, block, centroids.T, alpha=-2.0)
        value, index = partial.min(dim=1)
        labels.append(index)
        distances.append((value + block.pow(2).sum(1)).clamp_(min=0.0))
    return torch.cat(labels), torch.cat(distances)


def kmeans_plusplus(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """Indices of `k` initial centres, by greedy k-means++ (scikit-learn's, which the original
    used): each new centre is the best of 2 + log k candidates drawn with probability
    proportional to the squared distance to the centres chosen so far."""
    trials = 2 + int(math.log(k))
    norms = x.pow(2).sum(1)
    chosen = torch.empty(k, dtype=torch.long, device=x.device)
    chosen[0] = torch.randint(len(x), (1,), generator=generator, device=x.device)[0]
    closest = (norms - 2.0 * (x @ x[chosen[0]]) + norms[chosen[0]]).clamp_(min=0.0)
    closest[chosen[0]] = 0.0
    for i in range(1, k):
        # When every point already sits on a centre (k > distinct points) draw uniformly.
        weights = closest + (closest.sum() == 0).to(closest.dtype)
        candidates = torch.multinomial(weights, trials, replacement=True, generator=generator)
        to_candidates = (norms[:, None] - 2.0 * (x @ x[candidates].T) + norms[candidates]).clamp_(min=0.0)
        to_candidates[candidates, torch.arange(trials, device=x.device)] = 0.0
        potentials = torch.minimum(closest[:, None], to_candidates).sum(0)
        best = potentials.argmin()
        chosen[i] = candidates[best]
        closest = torch.minimum(closest, to_candidates[:, best])
    return chosen


def _lloyd(x: torch.Tensor, centroids: torch.Tensor, iterations: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    k = len(centroids)
    labels, distances = _nearest(x, centroids)
    for _ in range(iterations):
        counts = torch.bincount(labels, minlength=k)
        sums = torch.zeros_like(centroids).index_add_(0, labels, x)
        centroids = sums / counts.clamp(min=1)[:, None].to(x.dtype)
        # An empty cluster takes the point farthest from its centre (the r-th empty cluster the
        # r-th farthest point), as scikit-learn does; this never raises the inertia.
        empty = counts == 0
        farthest = distances.topk(min(k, len(x))).indices
        rank = (torch.cumsum(empty, 0) - 1).clamp(0, len(farthest) - 1)
        centroids = torch.where(empty[:, None], x[farthest[rank]], centroids)
        new_labels, distances = _nearest(x, centroids)
        converged = torch.equal(new_labels, labels)
        labels = new_labels
        if converged:
            break
    return labels, centroids, distances.sum(dtype=torch.float64).item()


def kmeans(
    x: torch.Tensor, k: int, generator: torch.Generator, restarts: int = 5, iterations: int = 30
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Cluster the rows of `x` (N, D): (assignments (N,), centroids (k, D), inertia).

    Each restart is a k-means++ initialisation followed by at most `iterations` Lloyd steps
    (fewer when the assignments stop changing); the restart with the lowest inertia (sum of
    squared distances to the assigned centroids) wins. Clusters may end up empty when `k`
    exceeds the number of distinct points.
    """
    x = x.float()
    best: tuple[torch.Tensor, torch.Tensor, float] | None = None
    for _ in range(restarts):
        result = _lloyd(x, x[kmeans_plusplus(x, k, generator)], iterations)
        if best is None or result[2] < best[2]:
            best = result
    if best is None:
        raise ValueError(f"kmeans: restarts must be at least 1, got {restarts}")
    return best


def _frequencies(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each element's label renumbered 0..L-1, and the frequency of each of the L labels."""
    _, inverse, counts = torch.unique(labels.reshape(-1), return_inverse=True, return_counts=True)
    return inverse, counts.double() / len(inverse)


def _entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * p.log()).sum()


def normalized_mutual_info(a: torch.Tensor, b: torch.Tensor) -> float:
    """NMI of two labelings, normalised by the arithmetic mean of their entropies (scikit-
    learn's default). Two labelings that are each a single cluster count as identical (1.0).

    Only the occupied cells of the contingency table are built, so 100K points in 10,000
    clusters need O(N) memory, not a 10,000 x 10,000 table.
    """
    if a.shape != b.shape:
        raise ValueError(f"labelings of different sizes: {tuple(a.shape)} and {tuple(b.shape)}")
    a, p_a = _frequencies(a)
    b, p_b = _frequencies(b.to(a.device))
    if len(p_a) == len(p_b) == 1:
        return 1.0
    cells, counts = torch.unique(a * len(p_b) + b, return_counts=True)
    p_ab = counts.double() / len(a)
    mutual_info = (p_ab * (p_ab / (p_a[cells // len(p_b)] * p_b[cells % len(p_b)])).log()).sum()
    denominator = (_entropy(p_a) + _entropy(p_b)) / 2
    return float((mutual_info / denominator).clamp(0.0, 1.0))
