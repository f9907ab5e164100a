"""Process set-up shared by the stage scripts: allocator, device, threads, durations."""

from __future__ import annotations

import ctypes
import os
import sys
from contextlib import contextmanager

import torch

from utils.errors import UserError


def tune_allocator() -> None:
    """Keep glibc from making every training step wait for fresh pages, without holding
    much more memory than a step needs.

    By default glibc maps large blocks (from 128 KB, a threshold that rises to 32 MB) afresh,
    returns them when freed and trims the free top of its heap, so a step of thousands of
    images page-faults its activations back in 4 KiB pages every time: half the wall time
    on the CPU (docs/performance.md, where the time goes). Here blocks under 16 MB stay in the never-trimmed
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
    elif device.type == "cpu" and device.index not in (None, 0):
        raise UserError(f"--device {name}: the CPU is one device; use --device cpu")
    elif device.type != "cpu":
        raise UserError(f"--device {name}: unsupported device type; use auto, cpu, cuda or cuda:N")
    return device


@contextmanager
def single_threaded(device: torch.device):
    """Run tiny CPU ops on one thread: a (128 x 64) matmul gains nothing from a second
    thread, and on a busy machine waiting for it made linear epochs 100x slower."""
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def format_duration(seconds: float) -> str:
    """H:MM:SS that keeps counting past 24 hours."""
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def available_memory(device: torch.device) -> int | None:
    """Free bytes on the device: CUDA's free memory, or MemAvailable of Linux."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None
