"""Data sets: a registry of records (`DatasetSpec`) whose loaders each return one split as an `ImageSet`.

Usage::

    from datasets import load_dataset
    train = load_dataset("cifar10", "train", "./data")   # ImageSet, uint8 (N, 3, 32, 32)

Adding a data set: write `datasets/<name>.py` with a loader
`load_<name>(root, split, download=True) -> ImageSet` and its `DatasetSpec`, and add the
record to `DATASETS`.
"""

from __future__ import annotations

import os
from pathlib import Path

from datasets.base import DatasetError, ImageSet
from datasets.cifar import CIFAR10, CIFAR100, SUPERCIFAR100
from datasets.folder import FOLDER
from datasets.slim import SLIM
from datasets.spec import DatasetSpec
from datasets.stl10 import STL10
from datasets.tiny import TINY

__all__ = [
    "DATASETS",
    "SPLITS",
    "DEFAULT_DATA_ROOT",
    "DatasetError",
    "DatasetSpec",
    "ImageSet",
    "class_names",
    "image_side",
    "load_dataset",
    "pretraining_split",
]

#: Where data sets live unless told otherwise (relative to the working directory, as in the original code).
DEFAULT_DATA_ROOT = "./data"

#: Every split name any loader knows; each loader also rejects the splits it lacks.
SPLITS = ("train", "test", "unlabeled")

#: name -> the data set's record
DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec for spec in (CIFAR10, CIFAR100, SUPERCIFAR100, SLIM, FOLDER, STL10, TINY)
}


def pretraining_split(name: str, needs_labels: bool) -> str:
    """The split stage 1 trains on: "unlabeled" where data set `name` has one and the
    method does not need labels, else "train"."""
    return "unlabeled" if "unlabeled" in DATASETS[name].splits and not needs_labels else "train"


def image_side(name: str, image_size: int = 0) -> int | None:
    """The side of the images `load_dataset` gives for `name` and `image_size`, known
    without reading them; None for "folder" images kept at their own size (0)."""
    return DATASETS[name].side or image_size or None


def class_names(name: str, data_root: str | os.PathLike, num_classes: int) -> list[str] | None:
    """The `num_classes` class names of data set `name`, read from its official files (for
    labelling plots), or None when its files do not give them (a plot then shows class numbers)."""
    try:
        spec = DATASETS[name]
        names = [str(n) for n in spec.class_names(Path(data_root) / spec.folder)]
    except (KeyError, OSError, ValueError, DatasetError):
        return None
    return names if len(names) == num_classes else None


def load_dataset(
    name: str,
    split: str,
    data_root: str | os.PathLike = DEFAULT_DATA_ROOT,
    download: bool = True,
    image_size: int = 0,
) -> ImageSet:
    """Load split `split` of data set `name` from `data_root`.

    `image_size` (0 = the data set's own size) is passed to the loaders of resizable data
    sets (only `folder`); for any other data set it must be 0 or its native side, else
    `DatasetError`. Raises `ValueError` (one line listing the valid choices) for an
    unknown name or split and `DatasetError` for missing, incomplete or corrupt files.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; valid names: {', '.join(sorted(DATASETS))}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    spec = DATASETS[name]
    if spec.side is None:
        data = spec.loader(data_root, split, download=download, image_size=image_size)
    else:
        data = spec.loader(data_root, split, download=download)
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
