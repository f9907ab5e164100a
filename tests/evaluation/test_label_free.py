"""RankMe, alignment and uniformity on embeddings whose values are known."""

from __future__ import annotations

import math

import pytest
import torch

from evaluation.label_free import alignment, rankme, uniformity


def test_rankme_of_an_identity_embedding_is_its_full_rank():
    assert rankme(torch.eye(16)) == pytest.approx(16, rel=1e-5)
    # Rows spread evenly over 3 of 8 directions: rank 3, whatever their scale.
    assert rankme(5.0 * torch.eye(8)[:3].repeat(4, 1)) == pytest.approx(3, rel=1e-5)


def test_rankme_of_a_collapsed_embedding_is_one():
    direction = torch.tensor([1.0, -2.0, 0.5, 3.0])
    collapsed = torch.linspace(0.5, 2.0, 32)[:, None] * direction  # every row along one direction
    assert rankme(collapsed) == pytest.approx(1.0, abs=1e-4)
    assert rankme(torch.zeros(10, 4)) == 1.0


def test_rankme_grows_with_the_spread_of_the_singular_values():
    # Singular values (16, 4, 1): p = (16, 4, 1) / 21, and exp of its entropy by hand.
    shares = torch.tensor([16.0, 4.0, 1.0]).double() / 21
    expected = math.exp(-(shares * shares.log()).sum().item())
    assert rankme(torch.diag(torch.tensor([16.0, 4.0, 1.0]))) == pytest.approx(expected, rel=1e-6)
    assert rankme(torch.diag(torch.tensor([16.0, 4.0, 1.0]))) < rankme(torch.diag(torch.tensor([4.0, 2.0, 1.0]))) < 3


def test_alignment_of_aligned_and_opposite_pairs():
    views = torch.randn(20, 6, generator=torch.Generator().manual_seed(0))
    assert alignment(views, 3.0 * views) == pytest.approx(0.0, abs=1e-12)  # normalised: scale is no difference
    assert alignment(views, -views) == pytest.approx(4.0)  # ||a - (-a)||^2 of unit vectors
    orthogonal = torch.eye(4)
    assert alignment(orthogonal, orthogonal.roll(1, dims=0)) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="one shape"):
        alignment(views, views[:5])


def test_uniformity_of_coincident_and_spread_embeddings():
    assert uniformity(torch.ones(10, 3)) == pytest.approx(0.0, abs=1e-12)
    # Two opposite points: their one distance is 2, log exp(-2 * 4) = -8.
    assert uniformity(torch.tensor([[1.0, 0.0], [-1.0, 0.0]])) == pytest.approx(-8.0)
    # Orthogonal unit vectors: every distance is sqrt 2, log exp(-2 * 2) = -4.
    assert uniformity(torch.eye(5)) == pytest.approx(-4.0)
    with pytest.raises(ValueError, match="at least 2 rows"):
        uniformity(torch.ones(1, 3))
