"""Common types of the data-set loaders: `ImageSet` and `DatasetError`.

Every loader in this package returns a whole split as one `ImageSet`: all images
as a single `uint8` tensor of shape (N, 3, H, W) plus int64 labels, together with the
per-data-set constants of the original code (normalisation mean/std, the padding of the
`RandomCrop` of the 'standard' augmentation and the cutout scale of the 'finetune'
augmentation). Transforms, multi-view wrappers and data loaders live elsewhere and work
on this object.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Iterable, Sequence

import torch

from utils.errors import UserError

__all__ = ["DatasetError", "ImageSet", "UNIT_RANGE", "check_split"]


class DatasetError(UserError):
    """A user-facing problem with data on disk (missing, incomplete, corrupt, not downloadable).

    `str()` is always ONE line that names the file or folder concerned and says how to
    fix the problem; line breaks in the message (e.g. from a wrapped OS error) are folded
    into spaces.
    """

    def __init__(self, message: str):
        super().__init__(re.sub(r"\s*[\r\n]+\s*", " ", str(message)).strip())


def check_split(dataset: str, split: str, valid: Iterable[str]) -> None:
    """Raise `ValueError` (one line listing the valid splits) if `split` is not in `valid`."""
    valid = tuple(valid)
    if split not in valid:
        raise ValueError(f"unknown split {split!r} for data set {dataset!r}; valid splits: {', '.join(valid)}")


# The mean and std that leave [0, 1] pixels as they are: (x - 0) / 1 == x exactly.
UNIT_RANGE = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))


@dataclass
class ImageSet:
    """One split of a data set held in memory.

    Attributes:
        name: registry name, e.g. `"cifar10"`.
        split: `"train"`, `"test"` (or `"unlabeled"` for data sets that have one).
        images: `uint8` tensor (N, 3, H, W), contiguous, on the CPU.
        labels: `int64` tensor (N,), `-1` where an image is unlabelled.
        num_classes: number of classes of the data set (not of this subset).
        mean, std: per-channel normalisation constants (pixel values in [0, 1]).
        padding: `RandomCrop` padding of the 'standard' training augmentation.
        cutout: `RandomErasing` scale of the 'finetune' augmentation, `None` where the
            original code defines none.
    """

    name: str
    split: str
    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    padding: int
    cutout: float | None

    def __post_init__(self) -> None:
        if not isinstance(self.images, torch.Tensor) or self.images.dtype != torch.uint8:
            raise TypeError(f"ImageSet.images must be a uint8 tensor, got {_describe(self.images)}")
        if self.images.dim() != 4 or self.images.shape[1] != 3:
            raise ValueError(f"ImageSet.images must have shape (N, 3, H, W), got {tuple(self.images.shape)}")
        if not isinstance(self.labels, torch.Tensor) or self.labels.dtype != torch.int64:
            raise TypeError(f"ImageSet.labels must be an int64 tensor, got {_describe(self.labels)}")
        if self.labels.dim() != 1 or self.labels.shape[0] != self.images.shape[0]:
            raise ValueError(
                f"ImageSet.labels must have shape ({self.images.shape[0]},), got {tuple(self.labels.shape)}"
            )
        self.images = self.images.cpu().contiguous()
        self.labels = self.labels.cpu().contiguous()
        self.mean = _per_channel(self.mean, "mean")
        self.std = _per_channel(self.std, "std")

    @property
    def side(self) -> int:
        """Image height in pixels (all data sets here have square images)."""
        return int(self.images.shape[2])

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __repr__(self) -> str:
        return (
            f"ImageSet(name={self.name!r}, split={self.split!r}, n={len(self)}, side={self.side}, "
            f"num_classes={self.num_classes})"
        )

    def subset(self, indices: torch.Tensor) -> "ImageSet":
        """The images (and labels) at `indices` (int64 indices or a boolean mask), in that order."""
        indices = torch.as_tensor(indices)
        if indices.dtype != torch.bool:
            indices = indices.long()
        return replace(self, images=self.images[indices].contiguous(), labels=self.labels[indices].contiguous())

    def as_inputs(self, normalised: bool) -> "ImageSet":
        """This split as a network is fed it: normalised with its `mean` and `std`, or, not
        `normalised`, its pixels in [0, 1] as ToTensor leaves them (mean 0, std 1), which is
        how relic-pytorch feeds its networks (`Method.normalises_inputs`)."""
        return self if normalised else replace(self, mean=UNIT_RANGE[0], std=UNIT_RANGE[1])

    def balanced_subset(self, n: int, seed: int) -> "ImageSet":
        """A seeded, class-balanced subset of `n` images, in their original order.

        Every class gets `n // C` images (C = classes present); the remaining `n % C`
        go one each to the lowest class indices. A class with fewer images than its share
        gives all of them and its shortfall is spread over the others in the same way, so
        the counts are always as equal as the data allow. Which images of a class are
        taken is drawn with `torch.Generator().manual_seed(seed)`. `n == 0` or
        `n >= len(self)` returns `self` unchanged. Unlabelled images (label -1) are
        never chosen when any image is labelled; a fully unlabelled set gives a seeded
        uniform sample.
        """
        if isinstance(n, bool) or int(n) != n:
            raise TypeError(f"balanced_subset: n must be an integer, got {n!r}")
        if n < 0:
            raise ValueError(f"balanced_subset: n must be >= 0, got {n}")
        if n == 0 or n >= len(self):
            return self
        return self.subset(self.balanced_indices(int(n), seed))

    def balanced_indices(self, n: int, seed: int) -> torch.Tensor:
        """The sorted positions of the images `balanced_subset(n, seed)` keeps (0 < n < len)."""
        gen = torch.Generator().manual_seed(int(seed))
        labelled = self.labels >= 0
        if not bool(labelled.any()):
            chosen = torch.randperm(len(self), generator=gen)[:n]
            return torch.sort(chosen).values

        classes = torch.unique(self.labels[labelled])  # sorted ascending
        per_class = [torch.nonzero(self.labels == c, as_tuple=True)[0] for c in classes.tolist()]
        counts = [len(ix) for ix in per_class]
        if n > sum(counts):
            raise ValueError(
                f"balanced_subset: asked for {n} images but only {sum(counts)} of {len(self)} are labelled"
            )
        quota = _water_fill(counts, n)
        chosen_per_class = []
        for ix, q in zip(per_class, quota):
            if q:
                chosen_per_class.append(ix[torch.randperm(len(ix), generator=gen)[:q]])
        return torch.sort(torch.cat(chosen_per_class)).values

    def labelled_fraction(self, fraction: float, seed: int) -> "ImageSet":
        """A seeded, stratified share of the labelled images, in their original order.

        Each class keeps `round(fraction * its count)` images, at least one, so the class
        proportions of the split are kept (semi-supervised evaluation with a label budget).
        Which images are kept is drawn with `torch.Generator().manual_seed(seed)`.
        """
        if not 0 < fraction <= 1:
            raise ValueError(f"labelled_fraction: fraction must be in (0, 1], got {fraction}")
        if fraction == 1:
            return self
        gen = torch.Generator().manual_seed(int(seed))
        chosen = []
        for c in torch.unique(self.labels[self.labels >= 0]).tolist():
            members = torch.nonzero(self.labels == c, as_tuple=True)[0]
            keep = max(1, round(fraction * len(members)))
            chosen.append(members[torch.randperm(len(members), generator=gen)[:keep]])
        return self.subset(torch.sort(torch.cat(chosen)).values)

    def class_counts(self) -> torch.Tensor:
        """Number of images per class (length `num_classes`; unlabelled images not counted)."""
        lab = self.labels[self.labels >= 0]
        return torch.bincount(lab, minlength=self.num_classes)


def _water_fill(counts: list[int], n: int) -> list[int]:
    """Split `n` over bins of capacity `counts` as evenly as possible (extras to low indices)."""
    # Largest level L with sum(min(c, L)) <= n; then one extra each to the first bins with c > L.
    lo, hi = 0, max(counts)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if sum(min(c, mid) for c in counts) <= n:
            lo = mid
        else:
            hi = mid - 1
    quota = [min(c, lo) for c in counts]
    rest = n - sum(quota)
    for i, c in enumerate(counts):
        if rest == 0:
            break
        if c > lo:
            quota[i] += 1
            rest -= 1
    return quota


def _per_channel(values: Sequence[float], name: str) -> tuple[float, float, float]:
    """The three per-channel constants `values` as floats."""
    if len(values) != 3:
        raise ValueError(f"ImageSet.{name} must hold 3 values (one per channel), got {len(values)}")
    red, green, blue = (float(value) for value in values)
    return red, green, blue


def _describe(x: object) -> str:
    if isinstance(x, torch.Tensor):
        return f"tensor of dtype {x.dtype}"
    return type(x).__name__
