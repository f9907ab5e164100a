"""Data sets: a registry of loaders that each return one split as an `ImageSet`.

Usage::

    from datasets import load_dataset
    train = load_dataset("cifar10", "train", "./data")   # ImageSet, uint8 (N, 3, 32, 32)

Adding a data set: write `datasets/<name>.py` with a loader
`load_<name>(root, split, download=True) -> ImageSet` and add one line to
`DATASETS`.
"""

from __future__ import annotations

import inspect
import os
from typing import Callable

from datasets.base import DatasetError, ImageSet
from datasets.cifar import CIFAR_SIDE, load_cifar10, load_cifar100, load_supercifar100
from datasets.folder import load_folder
from datasets.slim import SLIM_SIDE, load_slim
from datasets.stl10 import STL10_SIDE, load_stl10
from datasets.tiny import TINY_SIDE, load_tiny

__all__ = [
    "DATASETS",
    "SPLITS",
    "DEFAULT_DATA_ROOT",
    "DatasetError",
    "ImageSet",
    "image_side",
    "load_dataset",
    "pretraining_split",
]

#: Where data sets live unless told otherwise (relative to the working directory, as in the original code).
DEFAULT_DATA_ROOT = "./data"

#: Every split name any loader knows; each loader also rejects the splits it lacks.
SPLITS = ("train", "test", "unlabeled")

Loader = Callable[..., ImageSet]

#: name -> loader(root, split, download=True) -> ImageSet; loaders that resize also take image_size
DATASETS: dict[str, Loader] = {
    "cifar10": load_cifar10,
    "cifar100": load_cifar100,
    "supercifar100": load_supercifar100,
    "slim": load_slim,
    "folder": load_folder,
    "stl10": load_stl10,
    "tiny": load_tiny,
}

#: The side of the images of every data set that is not resized (all but "folder").
FIXED_SIDES = {
    "cifar10": CIFAR_SIDE,
    "cifar100": CIFAR_SIDE,
    "supercifar100": CIFAR_SIDE,
    "slim": SLIM_SIDE,
    "stl10": STL10_SIDE,
    "tiny": TINY_SIDE,
}

#: Data sets with an "unlabeled" split, on which self-supervised methods pretrain (the
#: original code used STL-10's 100,000 unlabelled images for them).
UNLABELED_SPLIT = frozenset({"stl10"})


def pretraining_split(name: str, needs_labels: bool) -> str:
    """The split stage 1 trains on: "unlabeled" where data set `name` has one and the
    method does not need labels, else "train"."""
    return "unlabeled" if name in UNLABELED_SPLIT and not needs_labels else "train"


def image_side(name: str, image_size: int = 0) -> int | None:
    """The side of the images `load_dataset` gives for `name` and `image_size`, known
    without reading them; None for "folder" images kept at their own size (0)."""
    return FIXED_SIDES.get(name, image_size or None)


def load_dataset(
    name: str,
    split: str,
    data_root: str | os.PathLike = DEFAULT_DATA_ROOT,
    download: bool = True,
    image_size: int = 0,
) -> ImageSet:
    """Load split `split` of data set `name` from `data_root`.

    `image_size` (0 = the data set's own size) is passed to loaders that take it (only
    `folder` resizes); for any other data set it must be 0 or its native side, else
    `DatasetError`. Raises `ValueError` (one line listing the valid choices) for an
    unknown name or split and `DatasetError` for missing, incomplete or corrupt files.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; valid names: {', '.join(sorted(DATASETS))}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    loader = DATASETS[name]
    if "image_size" in inspect.signature(loader).parameters:
        data = loader(data_root, split, download=download, image_size=image_size)
    else:
        data = loader(data_root, split, download=download)
        # Fixed-size data sets keep the size their constants (padding, published results) belong to.
        if image_size and image_size != data.side:
            raise DatasetError(
                f"--image_size {image_size}: the {name} images are {data.side}x{data.side} and are "
                f"not resized (only 'folder' is); use {data.side} or 0"
            )
    if len(data) == 0:  # e.g. a CIFAR batch of 0 images, a 0-byte unlabeled_X.bin
        raise DatasetError(
            f"the {name} {split} split in {os.fspath(data_root)} holds no images: its files are "
            "empty or truncated; replace them (delete the folder to download it again)"
        )
    return data
