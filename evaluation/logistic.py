"""Multinomial logistic regression on frozen features, solved in torch: the protocol of scoring
a backbone by scikit-learn's `LogisticRegression(C=C)` on its features, without scikit-learn."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

# Tighter than scikit-learn's default tol (1e-4): a small problem is solved to the last digits,
# and a large one stops at max_iter either way.
GRADIENT_TOLERANCE = 1e-10
# scikit-learn's ftol (64 machine epsilons); the solve is in float64.
CHANGE_TOLERANCE = 64 * torch.finfo(torch.float64).eps


@dataclass(frozen=True)
class LogisticRegressionFit:
    """A classifier of the raw features: logits = features @ weight.T + bias."""

    weight: torch.Tensor  # (classes, features)
    bias: torch.Tensor  # (classes,)
    objective: float  # logistic_objective at the solution, in float64
    iterations: int  # L-BFGS iterations taken


def logistic_objective(
    *, features: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, C: float
) -> torch.Tensor:
    """scikit-learn's objective `C * sum_i CE_i + ||weight||² / 2` divided by C n: the mean
    cross-entropy plus ||weight||² / (2 C n); the bias is not penalised."""
    penalty = weight.square().sum() / (2 * C * len(labels))
    return F.cross_entropy(features @ weight.T + bias, labels) + penalty


def fit_logistic_regression(
    *, features: torch.Tensor, labels: torch.Tensor, num_classes: int, C: float = 1.0, max_iter: int = 100
) -> LogisticRegressionFit:
    """Minimise `logistic_objective` over (weight, bias) by full-batch L-BFGS (strong-Wolfe
    line search) from zero, in float64 on the features' device. Nothing is random, so the
    same inputs give the same weights. Returns weight and bias in the features' dtype.

    The solver standardises the features by a change of variables, so the minimiser is that
    of the objective on the raw features: it centres them, which decouples the bias from the
    weights, and solves for each weight times its feature's scale, so that every feature has
    the same curvature at the start, as L-BFGS needs to converge in few iterations. That
    curvature is `a s² + 1 / (C n)` (a: the softmax's at uniform probabilities, s: the
    feature's standard deviation), so the scale is the standard deviation floored at
    `1 / sqrt(a C n)`: dividing by the bare deviation makes the penalty of a feature of small
    spread (a rarely active ReLU unit, a constant one) dominate and stall L-BFGS (on a random
    Conv-4's features of 200 images: over 2,000 iterations instead of 16).
    """
    if C <= 0:
        raise ValueError(f"C must be positive, got {C}")
    if max_iter < 1:
        raise ValueError(f"max_iter must be at least 1, got {max_iter}")
    raw = features.double()
    mean, std = raw.mean(0), raw.std(0, correction=0)
    softmax_curvature = (1 / num_classes) * (1 - 1 / num_classes)
    scale = (std.square() + 1 / (softmax_curvature * C * len(labels))).sqrt()
    centred = raw - mean
    standardised_weight = torch.zeros(
        num_classes, raw.shape[1], dtype=torch.float64, device=raw.device, requires_grad=True
    )
    centred_bias = torch.zeros(num_classes, dtype=torch.float64, device=raw.device, requires_grad=True)

    def objective() -> torch.Tensor:
        return logistic_objective(
            features=centred, labels=labels, weight=standardised_weight / scale, bias=centred_bias, C=C
        )

    # max_iter, not the count of objective evaluations, bounds the work, as in scikit-learn
    # (25: the most evaluations of one strong-Wolfe line search).
    optimizer = torch.optim.LBFGS(
        [standardised_weight, centred_bias],
        lr=1,
        max_iter=max_iter,
        max_eval=25 * max_iter,
        tolerance_grad=GRADIENT_TOLERANCE,
        tolerance_change=CHANGE_TOLERANCE,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        value = objective()
        value.backward()
        return value

    optimizer.step(closure)
    with torch.no_grad():
        weight = standardised_weight / scale
        bias = centred_bias - weight @ mean
        final = objective().item()
    return LogisticRegressionFit(
        weight=weight.to(features.dtype),
        bias=bias.to(features.dtype),
        objective=final,
        iterations=optimizer.state[standardised_weight]["n_iter"],
    )
