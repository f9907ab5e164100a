"""Small tensor helpers the layers share."""

from __future__ import annotations

from typing import Iterable

import torch


def tensor_sum(terms: Iterable[torch.Tensor]) -> torch.Tensor:
    """The built-in `sum` of one or more tensors, the same additions in the same order; the
    built-in returns the integer 0 for no terms, which no caller here has."""
    total = sum(terms)
    if not isinstance(total, torch.Tensor):
        raise ValueError("tensor_sum: no tensors to add")
    return total
