"""PCA-whitening, k-means and normalised mutual information of methods/clustering.py."""

from __future__ import annotations

import math

import pytest
import torch

from methods.clustering import (
    kmeans,
    kmeans_plusplus,
    normalized_mutual_info,
    pca_whiten,
)

pytestmark = pytest.mark.usefixtures("single_cpu_thread")


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def blobs(points_per_cluster=60, clusters=6, dim=8, spread=0.2, seed=0):
    """Well-separated Gaussian clusters and their true labels."""
    generator = seeded(seed)
    centres = torch.randn(clusters, dim, generator=generator) * 10
    truth = torch.arange(clusters).repeat_interleave(points_per_cluster)
    return centres[truth] + spread * torch.randn(len(truth), dim, generator=generator), truth


def direct_nmi(a: list[int], b: list[int]) -> float:
    """NMI written straight from its definition, with Python floats."""
    n = len(a)
    p_a = {x: a.count(x) / n for x in set(a)}
    p_b = {y: b.count(y) / n for y in set(b)}
    pairs = list(zip(a, b))
    p_ab = {pair: pairs.count(pair) / n for pair in set(pairs)}
    mi = sum(p * math.log(p / (p_a[x] * p_b[y])) for (x, y), p in p_ab.items())
    h_a = -sum(p * math.log(p) for p in p_a.values())
    h_b = -sum(p * math.log(p) for p in p_b.values())
    return mi / ((h_a + h_b) / 2)


# ---------------------------------------------------------------------- k-means


def test_kmeans_recovers_separated_clusters():
    x, truth = blobs()
    labels, centroids, inertia = kmeans(x, 6, seeded(0), restarts=3, iterations=30)
    assert normalized_mutual_info(labels, truth) == pytest.approx(1.0)
    assert centroids.shape == (6, 8)
    expected = ((x - centroids[labels]) ** 2).sum().item()
    assert inertia == pytest.approx(expected, rel=1e-4)
    assert inertia / len(x) < 8 * 0.2**2 * 1.5  # about dim * spread^2 per point


def test_kmeans_is_deterministic_under_a_seed():
    x = torch.randn(400, 5, generator=seeded(1))  # no cluster structure: the seed matters
    first = kmeans(x, 12, seeded(7), restarts=2, iterations=30)
    second = kmeans(x, 12, seeded(7), restarts=2, iterations=30)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert first[2] == second[2]
    others = [kmeans(x, 12, seeded(seed), restarts=1, iterations=30)[0] for seed in range(8, 12)]
    assert any(not torch.equal(first[0], other) for other in others)


def test_kmeans_plusplus_picks_distinct_points():
    x, _ = blobs(points_per_cluster=10, clusters=5)
    for seed in range(5):
        chosen = kmeans_plusplus(x, 40, seeded(seed))
        assert len(torch.unique(chosen)) == 40
    # On separated clusters the first k centres land in k different clusters.
    chosen = kmeans_plusplus(x, 5, seeded(0))
    assert len(torch.unique(chosen // 10)) == 5


def test_inertia_never_increases_over_iterations():
    x = torch.randn(500, 6, generator=seeded(2))
    # The same seed gives the same initialisation, so `iterations=t` is step t of one run.
    inertias = [kmeans(x, 25, seeded(3), restarts=1, iterations=t)[2] for t in range(12)]
    assert inertias[-1] < inertias[0]
    for before, after in zip(inertias, inertias[1:]):
        assert after <= before * (1 + 1e-6)


def test_more_clusters_than_distinct_points():
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]).repeat(5, 1)
    labels, centroids, inertia = kmeans(x, 8, seeded(0), restarts=2, iterations=10)
    assert labels.shape == (15,) and centroids.shape == (8, 2)
    assert torch.isfinite(centroids).all()
    assert inertia == pytest.approx(0.0, abs=1e-4)
    assert len(torch.unique(labels)) == 3  # the other five clusters stay empty
    assert normalized_mutual_info(labels, torch.arange(3).repeat(5)) == pytest.approx(1.0)


def test_kmeans_blocks_give_the_same_answer(monkeypatch):
    import methods.clustering as clustering

    # Ten blobs far apart: each point's nearest centre wins by a margin far above the rounding
    # in which blocks of other sizes (other matrix kernels) may differ, so equal assignments are
    # a property of the blocking, not of one CPU's kernels.
    centres = 10 * torch.randn(10, 4, generator=seeded(3))
    x = centres.repeat(30, 1) + 0.1 * torch.randn(300, 4, generator=seeded(4))
    whole = kmeans(x, 10, seeded(5), restarts=1, iterations=5)
    monkeypatch.setattr(clustering, "_BLOCK_ELEMENTS", 70)  # 7 rows per block
    blocked = kmeans(x, 10, seeded(5), restarts=1, iterations=5)
    assert torch.equal(whole[0], blocked[0])


# ---------------------------------------------------------------------- NMI


def test_nmi_of_identical_and_permuted_labelings_is_one():
    a = torch.tensor([0, 0, 1, 1, 2, 2, 2, 3])
    assert normalized_mutual_info(a, a) == pytest.approx(1.0)
    permuted = torch.tensor([3, 0, 2, 1])[a] + 10  # other names for the same partition
    assert normalized_mutual_info(a, permuted) == pytest.approx(1.0)


def test_nmi_of_independent_labelings_is_zero():
    a = torch.arange(4).repeat_interleave(4)  # 0000111122223333
    b = torch.arange(4).repeat(4)  # 0123012301230123: every pair once
    assert normalized_mutual_info(a, b) == pytest.approx(0.0, abs=1e-12)
    random = torch.randint(0, 5, (20000,), generator=seeded(0))
    other = torch.randint(0, 5, (20000,), generator=seeded(1))
    assert normalized_mutual_info(random, other) < 0.01


def test_nmi_by_hand():
    # a = [0,0,1,1], b = [0,0,0,1]: p(a) = (1/2, 1/2), p(b) = (3/4, 1/4),
    # p(0,0) = 1/2, p(1,0) = 1/4, p(1,1) = 1/4.
    mi = (
        0.5 * math.log(0.5 / (0.5 * 0.75)) + 0.25 * math.log(0.25 / (0.5 * 0.75)) + 0.25 * math.log(0.25 / (0.5 * 0.25))
    )
    h_a, h_b = math.log(2), -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    expected = mi / ((h_a + h_b) / 2)
    assert expected == pytest.approx(0.3437110184854507)
    value = normalized_mutual_info(torch.tensor([0, 0, 1, 1]), torch.tensor([0, 0, 0, 1]))
    assert value == pytest.approx(expected, rel=1e-12)


def test_nmi_equals_the_direct_formula():
    generator = seeded(3)
    for n, ka, kb in [(30, 3, 4), (200, 7, 2), (57, 10, 10)]:
        a = torch.randint(0, ka, (n,), generator=generator)
        b = (a + torch.randint(0, 2, (n,), generator=generator)) % kb  # dependent on a
        assert normalized_mutual_info(a, b) == pytest.approx(direct_nmi(a.tolist(), b.tolist()), rel=1e-10)


def test_nmi_with_single_clusters():
    ones, halves = torch.zeros(6, dtype=torch.long), torch.tensor([0, 0, 0, 1, 1, 1])
    assert normalized_mutual_info(ones, ones) == 1.0
    assert normalized_mutual_info(ones, halves) == 0.0
    with pytest.raises(ValueError):
        normalized_mutual_info(ones, halves[:5])


# ---------------------------------------------------------------------- PCA-whitening


@pytest.mark.parametrize("dim,components", [(64, 64), (512, 256)])
def test_pca_whitening_gives_identity_covariance(dim, components):
    generator = seeded(0)
    mixing = torch.randn(dim, dim, generator=generator) * torch.linspace(0.1, 5.0, dim)
    x = torch.randn(4000, dim, generator=generator) @ mixing + 3.0
    out = pca_whiten(x, components)
    assert out.shape == (4000, components)
    assert out.mean(0).abs().max() < 1e-3
    covariance = out.T @ out / (len(out) - 1)
    assert (covariance - torch.eye(components)).abs().max() < 2e-3


def test_pca_whitening_keeps_the_largest_variances_and_survives_dead_channels():
    generator = seeded(1)
    x = torch.randn(1000, 3, generator=generator) * torch.tensor([1.0, 10.0, 0.1])
    x = torch.cat([x, torch.zeros(1000, 2)], dim=1)  # two dead (always zero) features
    out = pca_whiten(x, 1)
    # The one component kept is the high-variance axis (feature 1), up to sign.
    assert abs(torch.corrcoef(torch.stack([out[:, 0], x[:, 1]]))[0, 1]) > 0.999
    assert torch.isfinite(pca_whiten(x, 5)).all()
    with pytest.raises(ValueError):
        pca_whiten(x, 6)
