"""Random weights: the untrained backbone, the lower bound of the paper's tables."""

from __future__ import annotations

from methods.base import Method


class RandomWeights(Method):
    name = "randomweights"
    trains = False
    checkpoint_keys = {"backbone": "backbone"}
    view_groups: list = []
