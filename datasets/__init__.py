"""Data sets: a registry of loaders that each return one split as an :class:`ImageSet`.

Usage::

    from datasets import load_dataset
    train = load_dataset("cifar10", "train", "./data")   # ImageSet, uint8 (N, 3, 32, 32)

Adding a data set: write ``datasets/<name>.py`` with a loader
``load_<name>(root, split, download=True) -> ImageSet`` and add one line to
:data:`DATASETS`.
"""

from __future__ import annotations

import os
from typing import Callable

from .base import DatasetError, ImageSet
from .cifar import load_cifar10, load_cifar100, load_supercifar100

__all__ = ["DATASETS", "SPLITS", "DEFAULT_DATA_ROOT", "DatasetError", "ImageSet", "load_dataset"]

#: Where data sets live unless told otherwise (relative to the working directory, as in the original code).
DEFAULT_DATA_ROOT = "./data"

#: Every split name any loader knows; each loader also rejects the splits it lacks.
SPLITS = ("train", "test", "unlabeled")

Loader = Callable[..., ImageSet]

#: name -> loader(root, split, download=True) -> ImageSet
DATASETS: dict[str, Loader] = {
    "cifar10": load_cifar10,
    "cifar100": load_cifar100,
    "supercifar100": load_supercifar100,
}


def load_dataset(
    name: str, split: str, data_root: str | os.PathLike = DEFAULT_DATA_ROOT, download: bool = True
) -> ImageSet:
    """Load split ``split`` of data set ``name`` from ``data_root``.

    Raises ``ValueError`` (one line listing the valid choices) for an unknown name or
    split and :class:`DatasetError` for missing, incomplete or corrupt files.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; valid names: {', '.join(sorted(DATASETS))}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    return DATASETS[name](data_root, split, download=download)
