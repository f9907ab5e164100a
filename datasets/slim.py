"""SlimageNet64 (data set `slim`): 64x64 ImageNet images, 1000 classes of 160 images each.

There is no automatic download: the data come from Zenodo record 3672132
(https://zenodo.org/record/3672132) without a layout or checksum this loader could rely
on, and the original code, too, asks the user to arrange them by hand. Expected layout,
as read by the original `ImageFolder`::

    <root>/SlimageNet64/train/<class>/<image>.png|jpg|...
    <root>/SlimageNet64/test/<class>/<image>.png|jpg|...

Classes are the sorted folder names of `train`; `test` must have the same folders.
Images must be 64x64 (they are not resized). The number of classes is the number of
folders (1000 for the full data set). Decoded splits are cached in
`<root>/SlimageNet64/.cache/`.
"""

from __future__ import annotations

import os
from pathlib import Path

from datasets.base import DatasetError, ImageSet, check_split
from datasets.folder import FOLDER, decode_split, scan_tree
from datasets.spec import DatasetSpec

__all__ = ["SLIM"]

URL = "https://zenodo.org/record/3672132"
SLIM_SIDE = 64


def load_slim(root: str | os.PathLike, split: str, download: bool = False) -> ImageSet:
    """Split `train` or `test` of SlimageNet64 from `<root>/SlimageNet64` (`download` is ignored: there is none)."""
    check_split(SLIM.name, split, SLIM.splits)
    base = Path(root) / SLIM.folder
    layout = (
        f"{base}/train/<class>/*.png and {base}/test/<class>/*.png (64x64 images, one folder per class, "
        f"same classes in both); download SlimageNet64 from {URL} and arrange it so (there is no automatic download)"
    )
    paths, labels, classes, _ = scan_tree(base, split, layout)
    if not classes:
        raise DatasetError(f"{base}/train holds images but no class folders; expected {layout}")
    images = decode_split(
        base,
        split,
        paths,
        0,
        size_fix=f"SlimageNet64's images are all {SLIM_SIDE}x{SLIM_SIDE}: "
        "replace the file; for other images use --dataset folder with --image_size",
    )
    if images.shape[2] != SLIM_SIDE:
        raise DatasetError(
            f"{paths[0]}: SlimageNet64 images are {SLIM_SIDE}x{SLIM_SIDE}, these are "
            f"{images.shape[2]}x{images.shape[2]}; use --dataset folder with --image_size to resize other data"
        )
    return SLIM.image_set(split, images, labels, len(classes))


# Constants of the original code, which defines no cutout.
SLIM = DatasetSpec(
    name="slim",
    folder="SlimageNet64",
    loader=load_slim,
    splits=FOLDER.splits,
    side=SLIM_SIDE,
    mean=(0.5, 0.5, 0.5),
    std=(0.25, 0.25, 0.25),
    padding=8,
    cutout=None,
    class_names=FOLDER.class_names,
)
