"""Random weights: the untrained backbone, the lower bound of the paper's tables."""

from __future__ import annotations

from methods.base import Method


class RandomWeights(Method):
    name = "randomweights"
    trains = False
    checkpoint_keys = {"backbone": "backbone"}
    view_groups: list = []
    # It sees no views, so `per_view_batch_norm` does not apply; the later stages show its
    # backbone normalised images, as the original's.
    normalises_inputs = True
