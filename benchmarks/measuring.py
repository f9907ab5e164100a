"""What a worker measures besides time: its peak memory and that of its child processes;
the images it trains on; waiting for the device."""

from __future__ import annotations

import os
import resource
import threading
import time
from dataclasses import dataclass, field

from configurations import CIFAR10_EPOCH, Config


@dataclass
class Measurement:
    data: str
    seconds: float = 0.0  # for `images` training images (or the 100-epoch protocol)
    images: int = 0
    peak_rss_mb: float = 0.0  # the measuring process's own peak
    children_mb: float = 0.0  # the most private memory its child processes held together
    gpu_peak_mb: float | None = None
    accuracies: dict = field(default_factory=dict)
    skipped: str = ""  # why this side did not run, when it could not
    flops_per_image: float = 0.0  # floating-point operations of one timed image (this suite's side)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class ChildMemory(threading.Thread):
    """Samples the private memory (Private_Clean + Private_Dirty of smaps_rollup) of this
    process's descendants twice a second and keeps the largest total (0 where /proc lacks it)."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak_kib = 0

    def run(self) -> None:
        while True:
            self.sample()
            time.sleep(0.5)

    def sample(self) -> None:
        self.peak_kib = max(self.peak_kib, sum(map(private_kib, descendants(os.getpid()))))

    @property
    def peak_mb(self) -> float:
        return self.peak_kib / 1024


def descendants(root: int) -> list[int]:
    parents = {}
    for name in os.listdir("/proc"):
        try:
            with open(f"/proc/{name}/stat") as handle:
                parents[int(name)] = int(handle.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    found, frontier = [], [root]
    while frontier:
        children = [pid for pid, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def private_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            private = [line for line in handle if line.startswith(("Private_Clean:", "Private_Dirty:"))]
        return sum(int(line.split()[1]) for line in private)
    except OSError:
        return 0


def load_images(data_root: str, quick: bool, subset: int = 0):
    """CIFAR-10's training split, or random CIFAR-sized images when it is not there; a
    balanced `subset` of it when given."""
    import torch

    from datasets import DatasetError, ImageSet, load_dataset

    try:
        data = load_dataset("cifar10", "train", data_root, download=False)
        description = f"CIFAR-10 train from {data_root} ({len(data)} images)"
    except (DatasetError, OSError):
        count = 2048 if quick else CIFAR10_EPOCH
        images = torch.randint(
            0, 256, (count, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
        )
        data = ImageSet(
            "cifar10",
            "train",
            images,
            torch.arange(count) % 10,
            10,
            (0.491, 0.482, 0.447),
            (0.247, 0.243, 0.262),
            4,
            0.25,
        )
        description = f"random uint8 images ({count}, 3, 32, 32): CIFAR-10 not found in {data_root}"
    if quick:
        data = data.balanced_subset(512, seed=0)
    if subset:
        data = data.balanced_subset(subset, seed=0)
    return data, description


def images_per_unit(config: Config, data) -> int:
    """Training images of one timed unit: a step's batch, or deepcluster's whole epoch."""
    return len(data) if config.kind == "deepcluster" else config.batch


def synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gpu_peak_mb(device) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
