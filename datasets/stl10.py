"""STL-10 from the official binary files in `<root>/stl10_binary/`.

* `train_X.bin` / `train_y.bin`: 5,000 labelled images, `test_X.bin` / `test_y.bin`:
  8,000, `unlabeled_X.bin`: 100,000 images without labels (label -1 here).
* `*_X.bin`: raw `uint8`, 3x96x96 per image, each channel stored column-major.
* `*_y.bin`: one `uint8` label per image, 1..10 on disk (0..9 here).

`unlabeled_X.bin` is 2.7 GB, so images are read chunk by chunk through memory maps
straight into the one output tensor: loading needs the size of the split plus ~30 MB.
When the folder is missing it is downloaded from the official site (see
`datasets.download`) if `download` is True.
"""

from __future__ import annotations

import os
from dataclasses import astuple

import numpy as np
import torch

from datasets.base import DatasetError, ImageSet, check_split
from datasets.download import ensure_folder
from datasets.spec import DatasetSpec, Download, read_lines

__all__ = ["STL10", "read_stl10_images", "read_stl10_labels"]

STL10_SIDE = 96
IMAGE_BYTES = 3 * STL10_SIDE * STL10_SIDE
_CHUNK = 1024  # images per memory-mapped chunk (27 MB)
_FILES = "train_X.bin, train_y.bin, test_X.bin, test_y.bin, unlabeled_X.bin"


def _size(path: str, fix: str) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        raise DatasetError(f"STL-10: {path} is missing; {fix}") from None


def read_stl10_images(path: str | os.PathLike, fix: str = "re-download the data set") -> torch.Tensor:
    """All images of one `*_X.bin` file as a contiguous uint8 tensor (N, 3, 96, 96)."""
    path = os.fspath(path)
    size = _size(path, fix)
    if size % IMAGE_BYTES:
        raise DatasetError(
            f"{path}: {size} bytes is not a whole number of 3x96x96 images "
            f"({IMAGE_BYTES} bytes each); the file is truncated or corrupt: {fix}"
        )
    n = size // IMAGE_BYTES
    images = torch.empty((n, 3, STL10_SIDE, STL10_SIDE), dtype=torch.uint8)
    out = images.numpy()
    for start in range(0, n, _CHUNK):
        count = min(_CHUNK, n - start)
        # A fresh map per chunk, dropped after the copy: one map of the whole file would
        # keep every page read resident in this process and double the peak memory.
        part = np.memmap(path, np.uint8, "r", offset=start * IMAGE_BYTES, shape=(count, 3, STL10_SIDE, STL10_SIDE))
        out[start : start + count] = part.transpose(0, 1, 3, 2)  # column-major channels -> (H, W)
        del part
    return images


def read_stl10_labels(path: str | os.PathLike, count: int, fix: str = "re-download the data set") -> torch.Tensor:
    """The labels of one `*_y.bin` file (1..10 on disk) as int64 0..9; `count` = images."""
    path = os.fspath(path)
    size = _size(path, fix)
    if size != count:
        raise DatasetError(f"{path}: {size} labels for {count} images; the file is truncated or corrupt: {fix}")
    labels = np.fromfile(path, np.uint8).astype(np.int64)
    if labels.size and (labels.min() < 1 or labels.max() > 10):
        raise DatasetError(f"{path}: labels outside 1..10; the file is corrupt: {fix}")
    return torch.from_numpy(labels - 1)


def load_stl10(root: str | os.PathLike, split: str, download: bool = True) -> ImageSet:
    """STL-10 split `train`, `test` or `unlabeled` (labels -1) from `<root>/stl10_binary`."""
    check_split(STL10.name, split, STL10.splits)
    url, md5 = astuple(STL10.official_download)
    ensure_folder(root, STL10.folder, "STL-10", _FILES, url, md5, download)
    # os.path.join keeps the user's spelling of root (e.g. "./data") in messages.
    folder = os.path.join(os.fspath(root), STL10.folder)
    fix = (
        f"the folder is incomplete or damaged: delete it to re-download it, or extract "
        f"stl10_binary.tar.gz from {url} into {os.fspath(root)}"
    )
    images = read_stl10_images(os.path.join(folder, f"{split}_X.bin"), fix)
    if split == "unlabeled":
        labels = torch.full((len(images),), -1, dtype=torch.int64)
    else:
        labels = read_stl10_labels(os.path.join(folder, f"{split}_y.bin"), len(images), fix)
    return STL10.image_set(split, images, labels, 10)


# Constants of the original code. The loader reads the record when called, so that tests
# (and mirrors) can replace its download.
STL10 = DatasetSpec(
    name="stl10",
    folder="stl10_binary",
    loader=load_stl10,
    splits=("train", "test", "unlabeled"),
    side=STL10_SIDE,
    mean=(0.5, 0.5, 0.5),
    std=(0.5, 0.5, 0.5),
    padding=12,
    cutout=0.111,
    class_names=lambda folder: read_lines(folder / "class_names.txt"),
    download=Download("http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz", "91f7769df0f17e558f3565bffb0c7dfb"),
    # The original supervised STL-10 baseline trained with affine + erasing.
    supervised_augmentation="flip_affine_erase",
)
