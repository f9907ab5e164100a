"""The logistic-regression solver alone: accuracy, optimality, regularisation, determinism and
an independent reference."""

from __future__ import annotations

import pytest
import torch

from evaluation.logistic import fit_logistic_regression

pytestmark = pytest.mark.usefixtures("single_cpu_thread")  # small problems: a second thread only waits


def blobs(n_per_class=50, classes=4, dim=8, spread=5.0, seed=0, dtype=torch.float64):
    """Gaussian clusters, the features on unequal scales and off centre as a backbone's are."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=generator) * spread
    labels = torch.arange(n_per_class * classes) % classes
    features = centres[labels] + torch.randn(len(labels), dim, generator=generator)
    return (features * torch.logspace(-1, 1, dim) + 3).to(dtype), labels


def fit(features, labels, C=1.0, max_iter=1000):
    return fit_logistic_regression(
        features=features, labels=labels, num_classes=int(labels.max()) + 1, C=C, max_iter=max_iter
    )


def objective_value(features, labels, weight, bias, C):
    """Mean CE + ||W||² / (2 C n), written out: scikit-learn's C sum CE + ||W||² / 2 over C n."""
    logits = features @ weight.T + bias
    cross_entropy = logits.logsumexp(1) - logits[torch.arange(len(labels)), labels]
    return (cross_entropy.mean() + weight.square().sum() / (2 * C * len(labels))).item()


def objective_gradient(features, labels, weight, bias, C):
    """The gradient of objective_value w.r.t. (W, b), written out (softmax minus one-hot)."""
    n = len(labels)
    residual = torch.softmax(features @ weight.T + bias, dim=1)
    residual[torch.arange(n), labels] -= 1
    return residual.T @ features / n + weight / (C * n), residual.mean(0)


def test_separable_blobs_are_classified_perfectly():
    features, labels = blobs()
    result = fit(features.float(), labels, max_iter=100)
    assert result.weight.dtype == torch.float32 and result.weight.shape == (4, 8) and result.bias.shape == (4,)
    assert ((features.float() @ result.weight.T + result.bias).argmax(1) == labels).all()
    assert 0 < result.iterations <= 100


def test_the_gradient_of_the_objective_vanishes_at_the_solution():
    features, labels = blobs(spread=1.0)  # overlapping classes: the loss stays well above zero
    zero_weight, zero_bias = torch.zeros(4, 8, dtype=torch.float64), torch.zeros(4, dtype=torch.float64)
    for C in (0.1, 1.0, 10.0):
        result = fit(features, labels, C=C)
        assert result.objective == pytest.approx(
            objective_value(features, labels, result.weight, result.bias, C), rel=1e-12
        )
        weight_gradient, bias_gradient = objective_gradient(features, labels, result.weight, result.bias, C)
        start = max(
            gradient.abs().max() for gradient in objective_gradient(features, labels, zero_weight, zero_bias, C)
        )
        assert weight_gradient.abs().max() < 1e-6 * start and bias_gradient.abs().max() < 1e-6 * start


def test_larger_C_gives_larger_weights():
    features, labels = blobs(spread=1.0)
    norms = [fit(features, labels, C=C).weight.norm().item() for C in (0.01, 0.1, 1.0, 10.0)]
    assert norms == sorted(norms) and norms[-1] > 5 * norms[0]


def test_the_same_inputs_give_bit_identical_weights():
    features, labels = blobs(dtype=torch.float32)
    first, second = fit(features, labels, max_iter=30), fit(features.clone(), labels.clone(), max_iter=30)
    assert torch.equal(first.weight, second.weight) and torch.equal(first.bias, second.bias)
    assert (first.objective, first.iterations) == (second.objective, second.iterations)


def test_it_matches_gradient_descent_on_the_same_objective():
    features, labels = blobs(n_per_class=30, classes=3, dim=3, spread=1.0, seed=1)
    features = (features - features.mean(0)) / features.std(0)  # so that plain gradient descent converges fast
    C = 0.3
    weight, bias = torch.zeros(3, 3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    # Step 1/L: the softmax's curvature is at most 1/2, so L <= ||[X 1]||² / (2n) + 1 / (C n).
    augmented = torch.cat([features, torch.ones(len(features), 1, dtype=torch.float64)], 1)
    step = 1 / (torch.linalg.matrix_norm(augmented, ord=2) ** 2 / (2 * len(labels)) + 1 / (C * len(labels)))
    for _ in range(2000):
        weight_gradient, bias_gradient = objective_gradient(features, labels, weight, bias, C)
        weight, bias = weight - step * weight_gradient, bias - step * bias_gradient
    assert max(weight_gradient.abs().max(), bias_gradient.abs().max()) < 1e-12  # the reference converged
    result = fit(features, labels, C=C)
    assert weight.abs().max() > 0.5  # a solution far from the zero start
    assert torch.allclose(result.weight, weight, atol=1e-6) and torch.allclose(result.bias, bias, atol=1e-6)


def test_a_shift_of_the_features_moves_only_the_bias_and_a_constant_feature_gets_no_weight():
    features, labels = blobs(spread=1.0)
    result = fit(features, labels)
    offset = torch.linspace(-50, 50, features.shape[1], dtype=torch.float64)
    shifted = fit(features + offset, labels)
    assert torch.allclose(shifted.weight, result.weight, atol=1e-6)
    assert torch.allclose(shifted.bias, result.bias - result.weight @ offset, atol=1e-4)
    constant = fit(torch.cat([features, torch.full((len(features), 1), 0.7, dtype=torch.float64)], 1), labels)
    assert constant.weight[:, -1].abs().max() < 1e-5 * result.weight.abs().max()  # zero, to the solver's accuracy
    assert torch.allclose(constant.weight[:, :-1], result.weight, atol=1e-5)


def test_bad_arguments_are_refused():
    features, labels = blobs()
    with pytest.raises(ValueError, match="C must be positive"):
        fit(features, labels, C=0.0)
    with pytest.raises(ValueError, match="max_iter"):
        fit(features, labels, max_iter=0)
