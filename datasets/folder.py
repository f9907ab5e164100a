"""Any ImageFolder-style tree of image files (data set ``folder``); also the reader behind ``slim``.

Layout (``root`` is the tree itself)::

    <root>/train/<class>/**/<image>     labelled: one folder per class, sorted names -> 0, 1, ...
    <root>/test/<class>/**/<image>      same classes as train
    <root>/train/<image>                or unlabelled: images directly in train/ (labels -1,
                                        pretraining only; there is no test split)

Images are files with a common extension (see :data:`IMAGE_EXTENSIONS`, any case);
hidden files and folders are skipped, other files ignored. Everything is converted to
RGB. With ``image_size`` the images are resized (shorter side to ``image_size``, bicubic,
then centre crop); without it they must all be square and of one size.

Decoded splits are cached in ``<root>/.cache/`` (see :func:`datasets.images.cached`)
together with the per-channel mean/std of the training images, so that the test split
and later stages normalise with the training statistics without decoding train again.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .base import DatasetError, ImageSet, check_split
from .images import cached, decode_images

__all__ = ["load_folder", "IMAGE_EXTENSIONS", "scan_tree", "decode_split"]

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
SPLITS = ("train", "test")
CACHE_FOLDER = ".cache"
LAYOUT = "<root>/train/<class>/*.jpg|png|... and <root>/test/<class>/*, or unlabelled images directly in <root>/train/"


def _visible(entries):
    return sorted((e for e in entries if not e.name.startswith(".")), key=lambda e: e.name)


def _is_image(entry: os.DirEntry) -> bool:
    return entry.is_file() and os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS


def _images_under(folder: Path) -> list[Path]:
    """Image files anywhere below ``folder`` (like ImageFolder), in sorted path order."""
    found = []
    for top, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))  # os.walk descends in this order
        found += [Path(top, f) for f in sorted(files)
                  if not f.startswith(".") and os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS]
    return found


def _scan_split(folder: Path) -> tuple[list[Path], list[int], list[str]]:
    """Image paths, labels and sorted class names of one split folder (no classes: labels -1)."""
    with os.scandir(folder) as it:
        entries = _visible(it)
    classes = [e.name for e in entries if e.is_dir()]
    loose = [Path(e.path) for e in entries if _is_image(e)]
    if classes and loose:
        raise DatasetError(f"{folder} holds both class folders and images ({loose[0].name}, ...); "
                           "move the images into class folders, or remove the class folders for unlabelled data")
    if loose:
        return loose, [-1] * len(loose), []
    if not classes:
        raise DatasetError(f"{folder}: no images and no class folders; expected {LAYOUT}")
    paths, labels = [], []
    for index, name in enumerate(classes):
        found = _images_under(folder / name)
        if not found:
            raise DatasetError(f"{folder / name}: class folder without images (extensions {', '.join(sorted(IMAGE_EXTENSIONS))}); "
                               "add images or delete the folder")
        paths += found
        labels += [index] * len(found)
    return paths, labels, classes


def _difference(train: list[str], test: list[str], test_folder: Path) -> str:
    def some(names):
        return ", ".join(names[:5]) + (f" (+{len(names) - 5} more)" if len(names) > 5 else "")
    parts = []
    if missing := sorted(set(train) - set(test)):
        parts.append(f"missing from test: {some(missing)}")
    if extra := sorted(set(test) - set(train)):
        parts.append(f"not in train: {some(extra)}")
    return f"{test_folder}: the class folders of test differ from those of train ({'; '.join(parts)}); both splits need the same classes"


def scan_tree(base: Path, split: str, layout: str) -> tuple[list[Path], torch.Tensor, list[str], list[Path]]:
    """Paths and labels of ``split`` of the tree at ``base``, the class names, and the training paths.

    The classes are those of ``train``; ``test`` must have the same ones. Missing folders
    raise a one-line :class:`DatasetError` that names ``layout``.
    """
    folders = {s: base / s for s in SPLITS}
    if not folders["train"].is_dir():
        raise DatasetError(f"{folders['train']} not found; expected {layout}")
    train_paths, train_labels, classes = _scan_split(folders["train"])
    if split == "train":
        return train_paths, torch.tensor(train_labels, dtype=torch.int64), classes, train_paths
    if not classes:
        raise DatasetError(f"{folders['train']} holds unlabelled images (no class folders), which serve "
                           "pretraining only: there is no test split or labels; use class folders for evaluation")
    if not folders["test"].is_dir():
        raise DatasetError(f"{folders['test']} not found; expected {layout}")
    paths, labels, test_classes = _scan_split(folders["test"])
    if test_classes != classes:
        raise DatasetError(_difference(classes, test_classes, folders["test"]))
    return paths, torch.tensor(labels, dtype=torch.int64), classes, train_paths


def decode_split(base: Path, split: str, paths: list[Path], size: int) -> torch.Tensor:
    """The images at ``paths`` as uint8 (N, 3, S, S), decoded once and then read from ``<base>/.cache/<split>.pt``."""
    return cached(base / CACHE_FOLDER / f"{split}.pt", paths,
                  lambda: {"images": decode_images(paths, size)}, key=f"size={size}")["images"]


def _channel_stats(images: torch.Tensor, chunk: int = 4096) -> dict[str, torch.Tensor]:
    """Per-channel mean and (population) std of uint8 images, in [0, 1]; float64 sums in chunks to bound memory."""
    total = torch.zeros(3, dtype=torch.float64)
    squares = torch.zeros(3, dtype=torch.float64)
    for start in range(0, len(images), chunk):
        x = images[start:start + chunk].to(torch.float64).div_(255.0)
        total += x.sum(dim=(0, 2, 3))
        squares += x.square().sum(dim=(0, 2, 3))
    count = images.numel() // 3
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(0).sqrt()
    # A channel without variation (e.g. blank images) would divide by zero when normalising.
    return {"mean": mean, "std": std.clamp_min(1 / 255)}


def load_folder(root: str | os.PathLike, split: str, download: bool = False, image_size: int = 0) -> ImageSet:
    """Split ``train`` or ``test`` of the image tree at ``root`` (see the module docstring).

    ``image_size`` > 0 resizes every image to that square side; 0 keeps the native size,
    which must then be square and shared by all images. mean/std are those of the
    training images at that size; padding is side // 8, the ratio of every data set of
    the original code (4 for 32 px, 8 for 64 px, 12 for 96 px); no cutout is defined.
    ``download`` is ignored: there is nothing to download.
    """
    check_split("folder", split, SPLITS)
    base = Path(root)
    if not base.is_dir():
        raise DatasetError(f"image folder {base} not found; expected {LAYOUT}")
    paths, labels, classes, train_paths = scan_tree(base, split, LAYOUT)
    images = decode_split(base, split, paths, image_size)

    def train_stats():
        train_images = images if split == "train" else decode_split(base, "train", train_paths, image_size)
        return _channel_stats(train_images)

    stats = cached(base / CACHE_FOLDER / "stats.pt", train_paths, train_stats, key=f"size={image_size}")
    return ImageSet(
        name="folder",
        split=split,
        images=images,
        labels=labels,
        num_classes=len(classes),
        mean=tuple(stats["mean"].tolist()),
        std=tuple(stats["std"].tolist()),
        padding=images.shape[2] // 8,
        cutout=None,
    )
