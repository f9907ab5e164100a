"""Process set-up shared by the stage scripts: allocator, device, seeds, errors."""
from __future__ import annotations

import ctypes
import os
import random
import sys

import numpy as np
import torch


class UserError(Exception):
    """A problem the user can fix (bad flag, missing file, wrong checkpoint).

    The stage scripts print its message as one line on stderr and exit with status 2.
    """


def tune_allocator() -> None:
    """Keep glibc from making every training step wait for fresh pages, without holding
    much more memory than a step needs.

    By default glibc maps large blocks (from 128 KB, a threshold that rises to 32 MB) afresh,
    returns them when freed and trims the free top of its heap, so a step of thousands of
    images page-faults its activations back in 4 KiB pages every time: half the wall time
    on the CPU (reference/cpu-performance.md). Here blocks under 16 MB stay in the never-trimmed
    heap for the next step, and PyTorch backs its larger blocks, still mapped afresh, with
    2 MiB transparent huge pages (THP_MEM_ALLOC_ENABLE), 512 times fewer faults. Keeping
    the large blocks in the heap too (mallopt M_MMAP_MAX 0) is faster still for ResNets at
    K 32, but the heap then fragments and holds 30-40% more than the step needs, more than
    the original code's peak; MALLOC_MMAP_MAX_=0 in the environment chooses that.
    Measured on 2 cores, a Conv-4 step at K 32 took 0.85 s by default, 0.51 s here and 0.40 s
    with every block in the heap, whose peak memory was 1.3 to 1.4 times this one's.
    """
    if not sys.platform.startswith("linux"):
        return
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")  # read at PyTorch's first large allocation
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # musl or another libc: nothing to tune
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 16 * 2**20)
    libc.mallopt(m_trim_threshold, 2**31 - 1)


def resolve_device(name: str) -> torch.device:
    """`auto` picks the first CUDA device when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name}: not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) visible")
    elif device.type != "cpu":
        raise UserError(f"--device {name}: unsupported device type; use auto, cpu, cuda or cuda:N")
    return device


def resolve_seed(seed: int) -> int:
    """A negative seed means "unseeded": draw one from the OS so the run can still be repeated."""
    return seed if seed >= 0 else int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def derived_seed(seed: int, *parts: int) -> int:
    """A seed for one purpose (data order, augmentation) of one epoch, independent of the
    others, so that a run resumed at an epoch boundary draws exactly what it would have."""
    value = seed
    for part in parts:
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
