"""Tiny-ImageNet from the official `<root>/tiny-imagenet-200/` folder, as unpacked.

* `wnids.txt`: the class ids; class index = position in the *sorted* ids (as the
  original code's ImageFolder numbered its class folders).
* train: `train/<wnid>/images/*.JPEG`.
* test: the official validation set, `val/images/*.JPEG`, labelled by
  `val/val_annotations.txt` (tab-separated: file, wnid, box). No re-organisation of
  the folder is needed.

Images are 64x64 JPEGs, some grayscale (converted to RGB). Decoding 100,000 JPEGs takes
minutes, so each split is decoded once (by a thread pool) into a uint8 cache
`tiny-imagenet-200/.cache/<split>.pt`, shared with the `slim` and `folder` loaders'
mechanism (`datasets.images.cached`): it is rebuilt, with one line saying so, when
the image files change or the cache is damaged, and skipped with one warning where the
folder cannot be written.

When the folder is missing it is downloaded from the official site (a zip, see
`datasets.download`) if `download` is True.
"""

from __future__ import annotations

import os

import torch

from datasets.base import DatasetError, ImageSet, check_split
from datasets.download import ensure_folder
from datasets.folder import CACHE_FOLDER
from datasets.images import cached, decode_images, decoded_images_problem
from utils.console import say

__all__ = ["load_tiny"]

# Module-level so that tests (and mirrors) can replace them.
TINY_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
TINY_MD5 = "90528d7ca1a48142e341f4ef8d21d0de"
TINY_FOLDER = "tiny-imagenet-200"

# Constants of the original code (section 6.3 of the reference); it defines no cutout.
TINY_MEAN = (0.5, 0.5, 0.5)
TINY_STD = (0.25, 0.25, 0.25)
TINY_PADDING = 8

SPLITS = ("train", "test")
TINY_SIDE = 64
_SUFFIXES = (".jpeg", ".jpg", ".png")
_EXPECTED = "wnids.txt, train/<wnid>/images/*.JPEG, val/images/*.JPEG and val/val_annotations.txt"


def _read_wnids(folder: str, fix: str) -> list[str]:
    path = os.path.join(folder, "wnids.txt")
    try:
        with open(path) as f:
            wnids = [line.strip() for line in f if line.strip()]
    except FileNotFoundError:
        raise DatasetError(f"Tiny-ImageNet: {path} is missing; {fix}") from None
    if not wnids or len(set(wnids)) != len(wnids):
        raise DatasetError(f"{path}: {'no class ids' if not wnids else 'repeated class ids'}; {fix}")
    return sorted(wnids)


def _train_files(folder: str, wnids: list[str], fix: str) -> tuple[list[str], list[int]]:
    files, labels = [], []
    for label, wnid in enumerate(wnids):
        images = os.path.join(folder, "train", wnid, "images")
        try:
            names = sorted(n for n in os.listdir(images) if n.lower().endswith(_SUFFIXES))
        except FileNotFoundError:
            raise DatasetError(f"Tiny-ImageNet: {images} is missing (class {wnid} of wnids.txt); {fix}") from None
        if not names:
            raise DatasetError(f"Tiny-ImageNet: {images} holds no images (class {wnid} of wnids.txt); {fix}")
        files += [os.path.join(images, n) for n in names]
        labels += [label] * len(names)
    return files, labels


def _val_files(folder: str, wnids: list[str], fix: str) -> tuple[list[str], list[int]]:
    path = os.path.join(folder, "val", "val_annotations.txt")
    index = {wnid: i for i, wnid in enumerate(wnids)}
    rows = []
    try:
        with open(path) as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                fields = line.rstrip("\r\n").split("\t")
                if len(fields) < 2 or fields[1] not in index:
                    raise DatasetError(f"{path}: line {number} ({line.strip()!r}) names no class of wnids.txt; {fix}")
                rows.append((fields[0], index[fields[1]]))
    except FileNotFoundError:
        raise DatasetError(f"Tiny-ImageNet: {path} is missing; {fix}") from None
    if not rows:
        raise DatasetError(f"{path}: no annotations; {fix}")
    rows.sort()
    return [os.path.join(folder, "val", "images", name) for name, _ in rows], [label for _, label in rows]


def _decoded(folder: str, split: str, files: list[str], fix: str) -> torch.Tensor:
    """The images at `files`, decoded once and then read from the cache (see `datasets.images.cached`)."""
    cache = os.path.join(folder, CACHE_FOLDER, f"{split}.pt")

    def decode() -> dict[str, torch.Tensor]:
        why = "again: its cache is out of date or damaged" if os.path.exists(cache) else "once"
        say(f"[INFO] Tiny-ImageNet: decoding the {len(files)} {split} images {why} ({cache})", flush=True)
        size_fix = (
            f"Tiny-ImageNet's images are all {TINY_SIDE}x{TINY_SIDE}, so {fix}; for other images use "
            "--dataset folder with --image_size"
        )
        return {"images": decode_images(files, None, size_fix)}

    try:
        images = cached(cache, files, decode, problem=lambda tensors: decoded_images_problem(tensors, files, None))[
            "images"
        ]
    except FileNotFoundError as exc:  # an image listed in val_annotations.txt is not there
        raise DatasetError(f"Tiny-ImageNet: {exc.filename} is missing; {fix}") from None
    if images.shape[2] != TINY_SIDE:
        raise DatasetError(
            f"{files[0]}: Tiny-ImageNet images are {TINY_SIDE}x{TINY_SIDE}, these are "
            f"{images.shape[2]}x{images.shape[3]}; use --dataset folder to resize other data"
        )
    return images


def load_tiny(root: str | os.PathLike, split: str, download: bool = True) -> ImageSet:
    """Tiny-ImageNet split `train` or `test` (the official validation images)."""
    check_split("tiny", split, SPLITS)
    ensure_folder(root, TINY_FOLDER, "Tiny-ImageNet", _EXPECTED, TINY_URL, TINY_MD5, download)
    # os.path.join keeps the user's spelling of root (e.g. "./data") in messages.
    folder = os.path.join(os.fspath(root), TINY_FOLDER)
    fix = (
        f"the folder is incomplete or damaged: delete it to re-download it, or extract "
        f"tiny-imagenet-200.zip from {TINY_URL} into {os.fspath(root)}"
    )
    wnids = _read_wnids(folder, fix)
    files, labels = (_train_files if split == "train" else _val_files)(folder, wnids, fix)
    return ImageSet(
        name="tiny",
        split=split,
        images=_decoded(folder, split, files, fix),
        labels=torch.tensor(labels, dtype=torch.int64),
        num_classes=len(wnids),
        mean=TINY_MEAN,
        std=TINY_STD,
        padding=TINY_PADDING,
        cutout=None,
    )
