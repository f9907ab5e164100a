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
from dataclasses import astuple
from pathlib import Path

import torch

from datasets.base import DatasetError, ImageSet, check_split
from datasets.download import ensure_folder
from datasets.folder import CACHE_FOLDER
from datasets.images import cached, decode_images, decoded_images_problem
from datasets.spec import DatasetSpec, Download, read_lines
from utils.console import say

__all__ = ["TINY"]

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
    check_split(TINY.name, split, TINY.splits)
    url, md5 = astuple(TINY.official_download)
    ensure_folder(root, TINY.folder, "Tiny-ImageNet", _EXPECTED, url, md5, download)
    # os.path.join keeps the user's spelling of root (e.g. "./data") in messages.
    folder = os.path.join(os.fspath(root), TINY.folder)
    fix = (
        f"the folder is incomplete or damaged: delete it to re-download it, or extract "
        f"tiny-imagenet-200.zip from {url} into {os.fspath(root)}"
    )
    wnids = _read_wnids(folder, fix)
    files, labels = (_train_files if split == "train" else _val_files)(folder, wnids, fix)
    images = _decoded(folder, split, files, fix)
    return TINY.image_set(split, images, torch.tensor(labels, dtype=torch.int64), len(wnids))


def _class_names(folder: Path) -> list[str]:
    """The first name of each class's description in `words.txt`, in class order."""
    words = dict(line.split("\t", 1) for line in read_lines(folder / "words.txt") if "\t" in line)
    return [words.get(wnid, wnid).split(",")[0] for wnid in sorted(read_lines(folder / "wnids.txt"))]


# Constants of the original code, which defines no cutout. The loader reads the record when
# called, so that tests (and mirrors) can replace its download.
TINY = DatasetSpec(
    name="tiny",
    folder="tiny-imagenet-200",
    loader=load_tiny,
    splits=("train", "test"),
    side=TINY_SIDE,
    mean=(0.5, 0.5, 0.5),
    std=(0.25, 0.25, 0.25),
    padding=8,
    cutout=None,
    class_names=_class_names,
    download=Download("http://cs231n.stanford.edu/tiny-imagenet-200.zip", "90528d7ca1a48142e341f4ef8d21d0de"),
)
