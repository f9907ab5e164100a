"""Random weights: the untrained backbone, the lower bound of the paper's tables."""
from __future__ import annotations

from methods.base import Method


class RandomWeights(Method):
    name = "randomweights"
    trains = False

    def checkpoint_state(self) -> dict:
        return {"backbone": self.backbone.state_dict()}

    def load_checkpoint_state(self, state: dict) -> None:
        self.backbone.load_state_dict(state["backbone"])
