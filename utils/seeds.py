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

    DATA_ORDER = 1  # the engine's permutation of an epoch
    AUGMENTATION = 2  # the engine's augmentation generator of an epoch (and rank)
    LINEAR_ORDER = 3  # the order of an epoch of linear evaluation
    CLUSTERING = 4  # deepcluster's k-means and re-initialised output layer
    VALIDATION = 5  # the training images held out as a validation split
    ONLINE_PROBE = 6  # the online linear probe's initial weights
    MONITOR_VIEWS = 7  # the two views of the monitored images for the alignment measure


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
    numpy_state = np.random.get_state(legacy=True)
    if not isinstance(numpy_state, tuple):  # only a generator other than the global Mersenne Twister gives a dict
        raise TypeError(f"numpy's global generator state is a {type(numpy_state).__name__}, not a Mersenne Twister's")
    _, key, pos, has_gauss, cached = numpy_state
    state = {
        "python": random.getstate(),
        "numpy": [torch.from_numpy(key.astype(np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_states(state: dict) -> None:
    _restore_into(state, random, np.random, torch.default_generator)
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _restore_into(state: dict, python, numpy, generator: torch.Generator) -> None:
    """Set the CPU states of `rng_states` into the given Python, NumPy and torch generators."""
    python.setstate(state["python"])
    key, pos, has_gauss, cached = state["numpy"]
    numpy.set_state(("MT19937", key.numpy().astype(np.uint32), pos, has_gauss, cached))
    generator.set_state(state["torch"])


def rng_problem(state: object) -> str | None:
    """What keeps `state` from being restored by `restore_rng_states`, or None: it is set into
    fresh generators, which check it as the global ones would, and which are then dropped."""
    if not isinstance(state, dict) or not {"python", "numpy", "torch"} <= set(state):
        return "is not the record of the Python, NumPy and torch generator states"
    if "cuda" in state and not (
        isinstance(state["cuda"], list)
        and all(isinstance(one, torch.Tensor) and one.dtype == torch.uint8 for one in state["cuda"])
    ):
        return "holds CUDA generator states that are not byte tensors"
    try:
        _restore_into(state, random.Random(), np.random.RandomState(), torch.Generator())
    except Exception as error:  # the three libraries raise many types for a malformed state
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return f"holds generator states that cannot be restored ({reason[:100]})"
    return None
