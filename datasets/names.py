"""Class names of a data set, read from its official files (for labelling plots); class i is
the i-th name, as the loaders number the classes."""

from __future__ import annotations

import os
from pathlib import Path

from datasets.base import DatasetError
from datasets.cifar import CIFAR10_FOLDER, CIFAR100_FOLDER, read_cifar_batch
from datasets.slim import FOLDER as SLIM_FOLDER
from datasets.stl10 import STL10_FOLDER
from datasets.tiny import TINY_FOLDER


def _lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _tiny(root: Path) -> list[str]:
    folder = root / TINY_FOLDER
    words = dict(line.split("\t", 1) for line in _lines(folder / "words.txt") if "\t" in line)
    return [words.get(wnid, wnid).split(",")[0] for wnid in sorted(_lines(folder / "wnids.txt"))]


_READERS = {
    "cifar10": lambda root: read_cifar_batch(root / CIFAR10_FOLDER / "batches.meta")["label_names"],
    "cifar100": lambda root: read_cifar_batch(root / CIFAR100_FOLDER / "meta")["fine_label_names"],
    "supercifar100": lambda root: read_cifar_batch(root / CIFAR100_FOLDER / "meta")["coarse_label_names"],
    "stl10": lambda root: _lines(root / STL10_FOLDER / "class_names.txt"),
    "tiny": _tiny,
    "slim": lambda root: sorted(p.name for p in (root / SLIM_FOLDER / "train").iterdir() if p.is_dir()),
    "folder": lambda root: sorted(p.name for p in (root / "train").iterdir() if p.is_dir()),
}


def class_names(name: str, data_root: str | os.PathLike, num_classes: int) -> list[str] | None:
    """The `num_classes` class names of data set `name`, or None when its files do not give
    them (a plot then shows class numbers)."""
    try:
        names = [str(n) for n in _READERS[name](Path(data_root))]
    except (KeyError, OSError, ValueError, DatasetError):
        return None
    return names if len(names) == num_classes else None
