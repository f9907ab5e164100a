"""A first-in, first-out queue of feature rows kept across steps: MoCo v2+'s negatives and
NNCLR's support set. The rows are a buffer (saved with the method's checkpoint, moved with it
to the device); the write position, the pointer, is a number the method keeps and saves."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# The longest queue an option may ask for: 16 times solo-learn's longest (65,536); a longer one
# is a typo, and 256-dimensional rows of it would take gigabytes.
MAX_QUEUE_SIZE = 2**20


class FeatureQueue(nn.Module):
    """`size` rows of `dim` features for each of `lists` separate queues (MoCo v2+ keeps one per
    view), started as random unit rows (drawn from the global generator, as solo-learn does)."""

    rows: torch.Tensor

    def __init__(self, size: int, dim: int, lists: int = 1):
        super().__init__()
        self.size = size
        self.register_buffer("rows", F.normalize(torch.randn(lists, size, dim), dim=-1))

    @torch.no_grad()
    def push(self, new_rows: torch.Tensor, pointer: int) -> int:
        """Write the (lists, n, dim) `new_rows` over the oldest rows, from position `pointer`
        on and wrapping round the end; returns the next pointer. solo-learn requires the size to
        be a multiple of n; here any n fits, and of more than `size` rows the last `size` stay."""
        count = new_rows.shape[1]
        positions = (pointer + torch.arange(count, device=self.rows.device)) % self.size
        kept = slice(max(0, count - self.size), count)
        self.rows.index_copy_(1, positions[kept], new_rows[:, kept].to(self.rows.dtype))
        return (pointer + count) % self.size
