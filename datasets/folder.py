"""Any ImageFolder-style tree of image files (data set `folder`); also the reader behind `slim`.

Layout (`root` is the tree itself)::

    <root>/train/<class>/**/<image>     labelled: one folder per class, sorted names -> 0, 1, ...
    <root>/test/<class>/**/<image>      same classes as train
    <root>/train/<image>                or unlabelled: images directly in train/ (labels -1,
                                        pretraining only; there is no test split)

Images are files with a common extension (see `IMAGE_EXTENSIONS`, any case);
hidden files and folders are skipped, other files ignored. Links are followed only inside
the tree, once, and never into a folder that holds them or into another class (see
`_Tree`); a link not followed is named in a warning line. Everything is converted to
RGB. With `image_size` the images are resized (shorter side to `image_size`, bicubic,
then centre crop); without it they must all be square and of one size.

Decoded splits are cached in `<root>/.cache/` (see `datasets.images.cached`)
together with the per-channel mean/std of the training images, so that the test split
and later stages normalise with the training statistics without decoding train again.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from datasets.base import DatasetError, ImageSet, check_split
from datasets.images import cached, decode_images, decoded_images_problem
from datasets.spec import DatasetSpec

__all__ = ["FOLDER", "IMAGE_EXTENSIONS", "scan_tree", "decode_split"]

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
CACHE_FOLDER = ".cache"
LAYOUT = "<root>/train/<class>/*.jpg|png|... and <root>/test/<class>/*, or unlabelled images directly in <root>/train/"


def _visible(entries):
    return sorted((e for e in entries if not e.name.startswith(".")), key=lambda e: e.name)


def _is_image(entry: os.DirEntry) -> bool:
    return entry.is_file() and os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS


class _Tree:
    """Where a scan of one split may go. Links are followed only inside the data set's tree,
    never back up to a folder that holds them (`up -> ..` would read every class again, as
    this class), never into another class's folder, and never twice into one folder."""

    def __init__(self, root: Path):
        self.root = os.path.realpath(root)
        self.read: set[str] = set()
        self.classes: set[str] = set()  # the real paths of the split's class folders

    def _refusal(self, real: str, home: str) -> str | None:
        def within(path: str, folder: str) -> bool:
            return os.path.commonpath([path, folder]) == folder

        if not within(real, self.root):
            return "leads out of the data set's tree"
        if within(home, real) and real != home:
            return "leads back up to a folder that holds it"
        if any(within(real, other) for other in self.classes - {home}):
            return "leads into another class's folder"
        if real in self.read:
            return "leads to a folder already read"
        return None

    def enter(self, folder: str | os.PathLike, home: str) -> bool:
        """Whether to read `folder` (below the class folder whose real path is `home`), which
        is then marked as read; a link not followed is named in one warning line."""
        real = os.path.realpath(folder)
        refusal = self._refusal(real, home)
        if refusal is None:
            self.read.add(real)
            return True
        print(f"[WARNING] {folder}: not followed, the link {refusal}", file=sys.stderr, flush=True)
        return False

    def holds(self, file: str | os.PathLike) -> bool:
        """Whether an image file (or what its link points to) lies inside the tree."""
        if not os.path.islink(file):
            return True
        if os.path.commonpath([os.path.realpath(file), self.root]) == self.root:
            return True
        print(f"[WARNING] {file}: not read, the link leads out of the data set's tree", file=sys.stderr, flush=True)
        return False


def _images_under(folder: Path, tree: _Tree) -> list[Path]:
    """Image files anywhere below `folder` (like ImageFolder), in sorted path order."""
    home = os.path.realpath(folder)
    if not tree.enter(folder, home):
        return []
    found = []
    for top, dirs, files in os.walk(folder, followlinks=True):
        # os.walk descends in this order, into the folders kept
        dirs[:] = [d for d in sorted(dirs) if not d.startswith(".") and tree.enter(os.path.join(top, d), home)]
        found += [
            Path(top, f)
            for f in sorted(files)
            if not f.startswith(".")
            and os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS
            and tree.holds(os.path.join(top, f))
        ]
    return found


def _scan_split(folder: Path, tree: _Tree) -> tuple[list[Path], list[int], list[str]]:
    """Image paths, labels and sorted class names of one split folder (no classes: labels -1)."""
    with os.scandir(folder) as it:
        entries = _visible(it)
    classes = [e.name for e in entries if e.is_dir()]
    loose = [Path(e.path) for e in entries if _is_image(e) and tree.holds(e.path)]
    if classes and loose:
        raise DatasetError(
            f"{folder} holds both class folders and images ({loose[0].name}, ...); "
            "move the images into class folders, or remove the class folders for unlabelled data"
        )
    if loose:
        return loose, [-1] * len(loose), []
    if not classes:
        raise DatasetError(f"{folder}: no images and no class folders; expected {LAYOUT}")
    paths, labels = [], []
    tree.classes = {os.path.realpath(folder / name) for name in classes}
    for index, name in enumerate(classes):
        found = _images_under(folder / name, tree)
        if not found:
            raise DatasetError(
                f"{folder / name}: class folder without images (extensions {', '.join(sorted(IMAGE_EXTENSIONS))}); "
                "add images or delete the folder"
            )
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
    return (
        f"{test_folder}: the class folders of test differ from those of train ({'; '.join(parts)}); "
        "both splits need the same classes"
    )


def scan_tree(base: Path, split: str, layout: str) -> tuple[list[Path], torch.Tensor, list[str], list[Path]]:
    """Paths and labels of `split` of the tree at `base`, the class names, and the training paths.

    The classes are those of `train`; `test` must have the same ones. Missing folders
    raise a one-line `DatasetError` that names `layout`.
    """
    folders = {s: base / s for s in FOLDER.splits}
    if not folders["train"].is_dir():
        raise DatasetError(f"{folders['train']} not found; expected {layout}")
    train_paths, train_labels, classes = _scan_split(folders["train"], _Tree(base))
    if split == "train":
        return train_paths, torch.tensor(train_labels, dtype=torch.int64), classes, train_paths
    if not classes:
        raise DatasetError(
            f"{folders['train']} holds unlabelled images (no class folders), which serve "
            "pretraining only: there is no test split or labels; use class folders for evaluation"
        )
    if not folders["test"].is_dir():
        raise DatasetError(f"{folders['test']} not found; expected {layout}")
    paths, labels, test_classes = _scan_split(folders["test"], _Tree(base))
    if test_classes != classes:
        raise DatasetError(_difference(classes, test_classes, folders["test"]))
    return paths, torch.tensor(labels, dtype=torch.int64), classes, train_paths


# How images of several sizes are made one (see decode_images' size_fix).
RESIZE_FIX = "give a size to resize to (--image_size)"


def decode_split(base: Path, split: str, paths: list[Path], size: int, size_fix: str = RESIZE_FIX) -> torch.Tensor:
    """The images at `paths` as uint8 (N, 3, S, S), decoded once and then read from `<base>/.cache/<split>.pt`."""
    return cached(
        base / CACHE_FOLDER / f"{split}.pt",
        paths,
        lambda: {"images": decode_images(paths, size, size_fix)},
        key=f"size={size}",
        problem=lambda tensors: decoded_images_problem(tensors, paths, size),
    )["images"]


def _channel_stats(images: torch.Tensor, chunk: int = 4096) -> dict[str, torch.Tensor]:
    """Per-channel mean and (population) std of uint8 images, in [0, 1]; float64 sums in chunks to bound memory."""
    total = torch.zeros(3, dtype=torch.float64)
    squares = torch.zeros(3, dtype=torch.float64)
    for start in range(0, len(images), chunk):
        x = images[start : start + chunk].to(torch.float64).div_(255.0)
        total += x.sum(dim=(0, 2, 3))
        squares += x.square().sum(dim=(0, 2, 3))
    count = images.numel() // 3
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(0).sqrt()
    # A channel without variation (e.g. blank images) would divide by zero when normalising.
    return {"mean": mean, "std": std.clamp_min(1 / 255)}


def _stats_problem(tensors: dict) -> str | None:
    """What is wrong with a cache of `_channel_stats`, or None."""
    for name, low in (("mean", 0.0), ("std", 1 / 255)):
        value = tensors.get(name)
        if not (
            isinstance(value, torch.Tensor)
            and value.dtype == torch.float64
            and value.shape == (3,)
            and bool(((value >= low) & (value <= 1)).all())
        ):
            return f"its {name} is not 3 numbers in [{low:.3g}, 1]"
    return None


def load_folder(root: str | os.PathLike, split: str, download: bool = False, image_size: int = 0) -> ImageSet:
    """Split `train` or `test` of the image tree at `root` (see the module docstring).

    `image_size` > 0 resizes every image to that square side; 0 keeps the native size,
    which must then be square and shared by all images. mean/std are those of the
    training images at that size; padding is side // 8, the ratio of every data set of
    the original code (4 for 32 px, 8 for 64 px, 12 for 96 px); no cutout is defined.
    `download` is ignored: there is nothing to download.
    """
    check_split(FOLDER.name, split, FOLDER.splits)
    base = Path(root)
    if not base.is_dir():
        raise DatasetError(f"image folder {base} not found; expected {LAYOUT}")
    paths, labels, classes, train_paths = scan_tree(base, split, LAYOUT)
    images = decode_split(base, split, paths, image_size)

    def train_stats():
        train_images = images if split == "train" else decode_split(base, "train", train_paths, image_size)
        return _channel_stats(train_images)

    stats = cached(
        base / CACHE_FOLDER / "stats.pt", train_paths, train_stats, key=f"size={image_size}", problem=_stats_problem
    )
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


def _class_names(folder: Path) -> list[str]:
    """The class folder names of the tree's `train`, sorted as the loader numbers them."""
    return sorted(p.name for p in (folder / "train").iterdir() if p.is_dir())


# The data root is the tree itself; mean, std and padding depend on the images (see `load_folder`).
FOLDER = DatasetSpec(
    name="folder",
    folder="",
    loader=load_folder,
    splits=("train", "test"),
    side=None,
    mean=None,
    std=None,
    padding=None,
    cutout=None,
    class_names=_class_names,
)
