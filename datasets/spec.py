"""`DatasetSpec`: everything the rest of the code knows about a data set, declared once in its module.

Each loader module declares one record per data set it reads (e.g. `datasets.cifar.CIFAR10`),
and `datasets.DATASETS` is built from these records; facts that do not need the images
(their side, the split stage 1 pretrains on, the class names) are read from the record.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from datasets.base import DatasetError, ImageSet

__all__ = ["DatasetSpec", "Download", "read_lines"]


@dataclass(frozen=True)
class Download:
    """An official archive of a data set: where it is and its md5 checksum."""

    url: str
    md5: str


@dataclass(frozen=True)
class DatasetSpec:
    """One data set.

    Attributes:
        name: registry name, e.g. `"cifar10"` (the value of `--dataset`).
        folder: its folder under the data root; `""` where the data root is the tree itself.
        loader: `loader(root, split, download=True) -> ImageSet`; for a resizable data set
            (`side` is None) also `image_size=0`.
        splits: the splits it has; `"unlabeled"` among them is where self-supervised methods
            pretrain (the original code used STL-10's 100,000 unlabelled images for them).
        side: the side of its images, which are not resized; None where they are resized to
            `--image_size` (or kept at their own size, unknown until read).
        mean, std: per-channel normalisation constants; None where they are those of the
            training images.
        padding: `RandomCrop` padding of the 'standard' augmentation; None where it is side // 8.
        cutout: `RandomErasing` scale of the 'finetune' augmentation, None where the original
            code defines none.
        class_names: reads the class names from the data set's folder (class i is the i-th name).
        download: the official archive, None where there is no automatic download.
        supervised_augmentation: the augmentation the supervised baseline (`standard`) trains
            with on this data set, None for the method's default.
    """

    name: str
    folder: str
    loader: Callable[..., ImageSet]
    splits: tuple[str, ...]
    side: int | None
    mean: tuple[float, float, float] | None
    std: tuple[float, float, float] | None
    padding: int | None
    cutout: float | None
    class_names: Callable[[Path], list[str]]
    download: Download | None = None
    supervised_augmentation: str | None = None

    @property
    def official_download(self) -> Download:
        """`download`, for the loaders of the data sets that have one."""
        if self.download is None:
            raise DatasetError(f"the {self.name} data set has no automatic download")
        return self.download

    def image_set(self, split: str, images: torch.Tensor, labels: torch.Tensor, num_classes: int) -> ImageSet:
        """Split `split` as an `ImageSet` with this data set's constants."""
        assert self.mean is not None and self.std is not None and self.padding is not None
        return ImageSet(
            name=self.name,
            split=split,
            images=images,
            labels=labels,
            num_classes=num_classes,
            mean=self.mean,
            std=self.std,
            padding=self.padding,
            cutout=self.cutout,
        )


def read_lines(path: str | os.PathLike) -> list[str]:
    """The non-blank lines of a text file, stripped."""
    return [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
