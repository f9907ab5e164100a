"""Seeds: the run's seed, the independent streams derived from it, and generator states."""
from __future__ import annotations

import enum
import os
import random

import numpy as np
import torch


class SeedPurpose(enum.IntEnum):
    """What a derived seed is for; each purpose draws from its own stream, so adding a
    draw to one never shifts another (and a resumed epoch draws what it would have)."""

    DATA_ORDER = 1        # the engine's permutation of an epoch
    AUGMENTATION = 2      # the engine's augmentation generator of an epoch (and rank)
    LINEAR_ORDER = 3      # the order of an epoch of linear evaluation
    CLUSTERING = 4        # deepcluster's k-means and re-initialised output layer


def resolve_seed(seed: int) -> int:
    """A negative seed means "unseeded": draw one from the OS so the run can still be repeated."""
    return seed if seed >= 0 else int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def derived_seed(seed: int, epoch: int, purpose: SeedPurpose, *more: int) -> int:
    """The seed of one purpose of one epoch (`more`: a rank, where ranks draw apart)."""
    value = seed
    for part in (epoch, int(purpose), *more):
        value = (value * 1_000_003 + part + 0x9E3779B1) % (2**63 - 1)
    return value


def rng_states() -> dict:
    """Global generator states, in types that `torch.load(weights_only=True)` accepts."""
    _, key, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": [torch.from_numpy(key.astype(np.int64)), pos, has_gauss, cached],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_states(state: dict) -> None:
    random.setstate(state["python"])
    key, pos, has_gauss, cached = state["numpy"]
    np.random.set_state(("MT19937", key.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
