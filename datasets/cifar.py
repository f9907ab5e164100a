"""CIFAR-10, CIFAR-100 and SuperCIFAR-100 (CIFAR-100 images, 20 coarse labels).

The official python-pickle batches are read directly (no torchvision, no checksums of
the extracted files, so re-encoded samples such as the shared test sample load too):

* `<root>/cifar-10-batches-py/`: `data_batch_1` .. `data_batch_5`, `test_batch`
* `<root>/cifar-100-python/`: `train`, `test` (`fine_labels` and `coarse_labels`)

Each batch is a protocol-2 pickle of a dict whose `data` entry is a `uint8` array of
shape (N, 3072): 1024 red, 1024 green, then 1024 blue values of a 32x32 image in
row-major order. Pickles are read with a restricted unpickler that only resolves the
few globals a numpy array needs, so a tampered file cannot run code.

When the folder is missing it is downloaded from the official site (see
`datasets.download`) if `download` is True.
"""

from __future__ import annotations

import os
import pickle
import re
import sys
from dataclasses import astuple, replace
from pathlib import Path

import numpy as np
import torch

from datasets.base import DatasetError, ImageSet, check_split
from datasets.download import ensure_folder, folder_path
from datasets.spec import DatasetSpec, Download

__all__ = ["CIFAR10", "CIFAR100", "SUPERCIFAR100", "read_cifar_batch"]

CIFAR10_TRAIN_BATCHES = 5
CIFAR_SIDE = 32
_PIXELS = 3 * CIFAR_SIDE * CIFAR_SIDE


# --------------------------------------------------------------------------- pickles

_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # how Python 3 pickles bytes with protocol 2
    ("builtins", "bytes"),
    ("__builtin__", "bytes"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED_GLOBALS:
            if module.startswith("numpy._core") and not hasattr(np, "_core"):  # numpy < 2
                module = module.replace("numpy._core", "numpy.core", 1)
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed in a CIFAR batch")


def _key(value: object) -> object:
    return value.decode("latin1") if isinstance(value, bytes) else value


def read_cifar_batch(path: str | os.PathLike) -> dict:
    """Read one CIFAR python batch into a dict with `str` keys (bytes keys are decoded)."""
    path = Path(path)
    hint = "re-download the data set (delete the folder and run again with downloading on)"
    try:
        with open(path, "rb", buffering=1 << 20) as f:
            obj = _RestrictedUnpickler(f, encoding="latin1").load()
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found; {hint}") from None
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read ({exc}); check the file's permissions or {hint}") from exc
    except Exception as exc:  # UnpicklingError, EOFError, ValueError, ... from a damaged file
        raise DatasetError(f"{path}: not a CIFAR python batch (truncated or corrupt); {hint}") from exc
    if not isinstance(obj, dict):
        raise DatasetError(f"{path}: not a CIFAR python batch (holds a {type(obj).__name__}, not a dict); {hint}")
    return {_key(k): v for k, v in obj.items()}


def _parse_batch(
    path: Path, label_keys: tuple[str, ...], num_classes: tuple[int, ...]
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Validate one batch and return its (N, 3072) uint8 data and one int64 array per label key."""
    d = read_cifar_batch(path)
    hint = "not a CIFAR python batch (truncated or corrupt); re-download the data set"
    data = d.get("data")
    if not isinstance(data, np.ndarray):
        raise DatasetError(f"{path}: {hint} (no 'data' array)")
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _PIXELS:
        raise DatasetError(f"{path}: {hint} ('data' is {data.dtype} {data.shape}, expected uint8 (N, {_PIXELS}))")
    labels = []
    for key, classes in zip(label_keys, num_classes):
        raw = d.get(key)
        if raw is None:
            raise DatasetError(f"{path}: {hint} (no '{key}' entry)")
        # Checked before converting: a list of shared sub-lists pickles small and expands to
        # gigabytes, and integers beyond int64 overflow.
        if not _flat_integers(raw):
            raise DatasetError(f"{path}: {hint} ('{key}' is not a flat list of integers)")
        if len(raw) != data.shape[0]:
            raise DatasetError(f"{path}: {hint} ({len(raw)} '{key}' for {data.shape[0]} images)")
        try:
            lab = np.asarray(raw, dtype=np.int64)
        except OverflowError:
            raise DatasetError(f"{path}: {hint} ('{key}' outside 0..{classes - 1})") from None
        if lab.size and (lab.min() < 0 or lab.max() >= classes):
            raise DatasetError(f"{path}: {hint} ('{key}' outside 0..{classes - 1})")
        labels.append(lab)
    return data, labels


def _flat_integers(raw: object) -> bool:
    if isinstance(raw, np.ndarray):
        return raw.ndim == 1 and raw.dtype.kind in "iu"
    return isinstance(raw, (list, tuple)) and all(
        isinstance(value, (int, np.integer)) and not isinstance(value, bool) for value in raw
    )


def _to_images(chunks: list[np.ndarray]) -> torch.Tensor:
    data = chunks[0] if len(chunks) == 1 else np.concatenate(chunks, axis=0)
    data = np.ascontiguousarray(data.reshape(-1, 3, CIFAR_SIDE, CIFAR_SIDE))
    if not data.flags.writeable:
        data = data.copy()
    return torch.from_numpy(data)


# --------------------------------------------------------------------------- folders


def _missing(shown: str, title: str, fix: str) -> DatasetError:
    return DatasetError(f"{title}: {shown} is missing; {fix}")


def _cifar100(spec: DatasetSpec, root: str | os.PathLike, split: str, download: bool, coarse: bool) -> ImageSet:
    check_split(spec.name, split, spec.splits)
    title = "CIFAR-100"
    url, md5 = astuple(spec.official_download)
    folder = ensure_folder(root, spec.folder, title, "train and test", url, md5, download)
    path = folder / split
    if not path.is_file():
        raise _missing(
            folder_path(folder_path(root, spec.folder), split),
            title,
            "the folder is incomplete: delete it to re-download, or extract cifar-100-python.tar.gz from "
            f"{url} into {os.fspath(root)}",
        )
    data, (fine, coarse_labels) = _parse_batch(path, ("fine_labels", "coarse_labels"), (100, 20))
    labels = coarse_labels if coarse else fine
    return spec.image_set(split, _to_images([data]), torch.from_numpy(labels), 20 if coarse else 100)


_BATCH_RE = re.compile(r"data_batch_(\d+)")


# The folders of partial CIFAR-10 training splits this process has warned of.
_WARNED_PARTIAL: set[str] = set()


def load_cifar10(root: str | os.PathLike, split: str, download: bool = True) -> ImageSet:
    """CIFAR-10 from `<root>/cifar-10-batches-py`: train = every `data_batch_<n>` present, test = `test_batch`.

    Fewer than the official 5 training batches (e.g. the 2-batch shared sample) load with
    one `[WARNING]` line on stderr, the first time a process loads them.
    """
    check_split(CIFAR10.name, split, CIFAR10.splits)
    title = "CIFAR-10"
    url, md5 = astuple(CIFAR10.official_download)
    folder = ensure_folder(root, CIFAR10.folder, title, "data_batch_1..5 and test_batch", url, md5, download)
    shown_folder = folder_path(root, CIFAR10.folder)
    fix = (
        "the folder is incomplete: delete it to re-download, or extract cifar-10-python.tar.gz from "
        f"{url} into {os.fspath(root)}"
    )
    if split == "test":
        paths = [folder / "test_batch"]
        if not paths[0].is_file():
            raise _missing(folder_path(shown_folder, "test_batch"), title, fix)
    else:
        numbered = []
        for entry in folder.iterdir():
            m = _BATCH_RE.fullmatch(entry.name)
            if m and entry.is_file():
                numbered.append((int(m.group(1)), entry))
        if not numbered:
            raise _missing(folder_path(shown_folder, "data_batch_1"), title, f"no data_batch_<n> files; {fix}")
        numbered.sort()
        paths = [p for _, p in numbered]
        if len(paths) < CIFAR10_TRAIN_BATCHES and str(folder) not in _WARNED_PARTIAL:
            _WARNED_PARTIAL.add(str(folder))  # a monitored run loads the split twice: said once
            print(
                f"[WARNING] CIFAR-10: only {len(paths)} of the official {CIFAR10_TRAIN_BATCHES} training batches in "
                f"{shown_folder} ({', '.join(p.name for p in paths)}); training on a partial data set",
                file=sys.stderr,
                flush=True,
            )
    datas, labels = [], []
    for p in paths:
        data, (lab,) = _parse_batch(p, ("labels",), (10,))
        datas.append(data)
        labels.append(lab)
    return CIFAR10.image_set(split, _to_images(datas), torch.from_numpy(np.concatenate(labels)), 10)


def load_cifar100(root: str | os.PathLike, split: str, download: bool = True) -> ImageSet:
    """CIFAR-100 (100 fine labels) from `<root>/cifar-100-python/{train,test}`."""
    return _cifar100(CIFAR100, root, split, download, coarse=False)


def load_supercifar100(root: str | os.PathLike, split: str, download: bool = True) -> ImageSet:
    """CIFAR-100 images with the 20 official superclass labels (`coarse_labels` of the same files)."""
    return _cifar100(SUPERCIFAR100, root, split, download, coarse=True)


# Constants of the original code. The loaders read the records when called, so that tests
# (and mirrors) can replace a record's download.
CIFAR10 = DatasetSpec(
    name="cifar10",
    folder="cifar-10-batches-py",
    loader=load_cifar10,
    splits=("train", "test"),
    side=CIFAR_SIDE,
    mean=(0.491, 0.482, 0.447),
    std=(0.247, 0.243, 0.262),
    padding=4,
    cutout=0.25,
    class_names=lambda folder: read_cifar_batch(folder / "batches.meta")["label_names"],
    download=Download("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a"),
)
CIFAR100 = DatasetSpec(
    name="cifar100",
    folder="cifar-100-python",
    loader=load_cifar100,
    splits=("train", "test"),
    side=CIFAR_SIDE,
    mean=(0.507, 0.487, 0.441),
    std=(0.267, 0.256, 0.276),
    padding=4,
    cutout=0.0625,
    class_names=lambda folder: read_cifar_batch(folder / "meta")["fine_label_names"],
    download=Download("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85"),
)
# The same files and constants as CIFAR-100, with the 20 superclass labels.
SUPERCIFAR100 = replace(
    CIFAR100,
    name="supercifar100",
    loader=load_supercifar100,
    class_names=lambda folder: read_cifar_batch(folder / "meta")["coarse_label_names"],
)
