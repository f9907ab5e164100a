"""Loss functions of the methods, as pure functions with unit tests in tests/test_losses.py."""
from __future__ import annotations

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
