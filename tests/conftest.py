"""Shared test fixtures: small data sets written in the official on-disk formats.

Helpers (importable from tests as ``from conftest import write_cifar10``):

* :func:`write_cifar10` / :func:`write_cifar100` write real-format python-pickle batches
  whose images are learnable (each class has its own colour and stripe pattern, plus
  noise), so a classifier trained on them beats chance.

Fixtures:

* ``cifar10_root`` (session): a data root holding ``cifar-10-batches-py``: the real
  shared sample (20,000 train / 2,000 test, 2 batches) when ``SHARED`` has it, else a
  written stand-in with the same layout (2 batches x 1,000 train, 200 test).
* ``small_cifar10_root`` (session): always written: 5 batches x 40 train, 40 test.
* ``cifar100_root`` (session): always written: 500 train, 200 test (fine + coarse labels).
* ``shared_cifar10_root``: the shared sample only; skips the test when it is absent.
"""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
#: The shared folder next to the repository (holds data/ and reference/ where available).
SHARED = REPO.parent / "shared"
SHARED_CIFAR10 = SHARED / "data" / "cifar-10-batches-py"
HAS_SHARED_CIFAR10 = (SHARED_CIFAR10 / "test_batch").is_file()

if str(REPO) not in sys.path:  # `pytest` (not `python -m pytest`) does not add the repo root
    sys.path.insert(0, str(REPO))

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
_SIDE = 32


def class_images(labels: np.ndarray, num_classes: int, rng: np.random.Generator, side: int = _SIDE) -> np.ndarray:
    """uint8 (N, 3, side, side) images: per-class colour + per-class stripes + Gaussian noise.

    The class appearance depends only on the class index (not on ``rng``), so train and
    test images of a class look alike; ``rng`` only draws the noise.
    """
    k = np.arange(num_classes)
    palette = np.random.default_rng(12345).uniform(40, 215, size=(num_classes, 3))
    yy, xx = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
    angle = (k % 4) * (np.pi / 4)
    freq = 2 * np.pi * (1 + (k // 4) % 4) / side * 2
    waves = np.sin(freq[:, None, None] * (np.cos(angle)[:, None, None] * xx + np.sin(angle)[:, None, None] * yy))
    base = palette[:, :, None, None] + 45.0 * waves[:, None, :, :]  # (C, 3, H, W)
    img = base[labels] + rng.normal(0.0, 20.0, size=(len(labels), 3, side, side))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def balanced_labels(n: int, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` labels, as equal per class as possible, shuffled."""
    return rng.permutation(np.arange(n) % num_classes).astype(np.int64)


def _dump(obj: dict, path: Path) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_cifar10(root, n_train_per_batch: int, n_test: int, batches: int = 5, seed: int = 0) -> Path:
    """Write ``<root>/cifar-10-batches-py`` in the official python-pickle format; return ``root``.

    Files: ``data_batch_1..<batches>`` (``n_train_per_batch`` images each), ``test_batch``
    (``n_test``), ``batches.meta``. Each batch is a protocol-2 dict with ``batch_label``,
    ``labels`` (list of int), ``data`` (uint8 (N, 3072), R then G then B planes) and
    ``filenames``.
    """
    root = Path(root)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    def batch(n: int, label: str) -> dict:
        labels = balanced_labels(n, 10, rng)
        data = class_images(labels, 10, rng).reshape(n, 3 * _SIDE * _SIDE)
        names = [f"{CIFAR10_CLASSES[c]}_{seed}_{label.split()[0]}_{i:05d}.png" for i, c in enumerate(labels)]
        return {"batch_label": label, "labels": [int(c) for c in labels], "data": data, "filenames": names}

    for b in range(1, batches + 1):
        _dump(batch(n_train_per_batch, f"training batch {b} of {batches}"), folder / f"data_batch_{b}")
    _dump(batch(n_test, "testing batch 1 of 1"), folder / "test_batch")
    _dump({"num_cases_per_batch": n_train_per_batch, "label_names": CIFAR10_CLASSES, "num_vis": 3072}, folder / "batches.meta")
    return root


#: A fixed fine -> coarse mapping for written CIFAR-100 data (5 fine classes per superclass,
#: deliberately not ``fine // 5`` so that tests can tell the two label sets apart).
FINE_TO_COARSE = np.random.default_rng(7).permutation(100) % 20


def write_cifar100(root, n_train: int, n_test: int, seed: int = 0) -> Path:
    """Write ``<root>/cifar-100-python/{train,test,meta}`` in the official format; return ``root``.

    ``train``/``test`` are protocol-2 dicts with ``filenames``, ``batch_label``,
    ``fine_labels``, ``coarse_labels`` and ``data``; ``meta`` has ``fine_label_names`` and
    ``coarse_label_names``. Coarse labels follow :data:`FINE_TO_COARSE`.
    """
    root = Path(root)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name, n in (("train", n_train), ("test", n_test)):
        fine = balanced_labels(n, 100, rng)
        data = class_images(fine, 100, rng).reshape(n, 3 * _SIDE * _SIDE)
        _dump(
            {
                "filenames": [f"fine{c:02d}_{name}_{i:05d}.png" for i, c in enumerate(fine)],
                "batch_label": f"{'training' if name == 'train' else 'testing'} batch 1 of 1",
                "fine_labels": [int(c) for c in fine],
                "coarse_labels": [int(FINE_TO_COARSE[c]) for c in fine],
                "data": data,
            },
            folder / name,
        )
    _dump(
        {"fine_label_names": [f"fine{c:02d}" for c in range(100)], "coarse_label_names": [f"coarse{c:02d}" for c in range(20)]},
        folder / "meta",
    )
    return root


@pytest.fixture(scope="session")
def cifar10_root(tmp_path_factory) -> Path:
    """A data root with ``cifar-10-batches-py``: the shared real sample if present, else written data."""
    root = tmp_path_factory.mktemp("cifar10_root")
    if HAS_SHARED_CIFAR10:
        try:
            (root / "cifar-10-batches-py").symlink_to(SHARED_CIFAR10, target_is_directory=True)
            return root
        except OSError:  # no symlinks on this file system: use the shared data root itself
            return SHARED / "data"
    return write_cifar10(root, n_train_per_batch=1000, n_test=200, batches=2, seed=0)


@pytest.fixture(scope="session")
def small_cifar10_root(tmp_path_factory) -> Path:
    """Always-written tiny CIFAR-10: 5 batches x 40 train images, 40 test images."""
    return write_cifar10(tmp_path_factory.mktemp("small_cifar10"), n_train_per_batch=40, n_test=40, batches=5, seed=0)


@pytest.fixture(scope="session")
def cifar100_root(tmp_path_factory) -> Path:
    """Always-written small CIFAR-100: 500 train, 200 test images."""
    return write_cifar100(tmp_path_factory.mktemp("cifar100"), n_train=500, n_test=200, seed=0)


@pytest.fixture
def shared_cifar10_root(cifar10_root) -> Path:
    """The shared real CIFAR-10 sample (20,000 / 2,000 images); skips when it is absent."""
    if not HAS_SHARED_CIFAR10:
        pytest.skip(f"shared CIFAR-10 sample not found at {SHARED_CIFAR10}")
    return cifar10_root
