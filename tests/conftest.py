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


def run_stage(module, argv) -> None:
    """Run a stage script in this process as its command line would (errors -> SystemExit)."""
    from experiments.stage import run_main
    run_main(lambda: module.main(argv))


def stage_arguments(root, out, dataset: str = "cifar10", backbone: str = "conv4", seed: int = 1) -> list[str]:
    """Flags every stage takes: data root, output folder, data set, backbone, seed, CPU, offline."""
    return ["--data_root", str(root), "--checkpoint_dir", str(out), "--dataset", dataset,
            "--backbone", backbone, "--seed", str(seed), "--no_download", "--device", "cpu"]


def linked_shared_root(root: Path, shared_folder: Path) -> Path:
    """`root` holding a link to a data set folder of the shared sample (read only)."""
    try:
        (root / shared_folder.name).symlink_to(shared_folder, target_is_directory=True)
        return root
    except OSError:  # no symlinks on this file system: use the shared data root itself
        return SHARED / "data"


@pytest.fixture(scope="session")
def cifar10_root(tmp_path_factory) -> Path:
    """A data root with ``cifar-10-batches-py``: the shared real sample if present, else written data."""
    root = tmp_path_factory.mktemp("cifar10_root")
    if HAS_SHARED_CIFAR10:
        return linked_shared_root(root, SHARED_CIFAR10)
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


def write_image_folder(root, classes, n_train: int, n_test: int = 0, sizes=((32, 32),), ext: str = "png",
                       modes=("RGB",), seed: int = 0) -> Path:
    """Write an ImageFolder tree of real image files; return ``root``.

    ``<root>/train/<class>/<class>_<i>.<ext>`` (``n_train`` per class) and
    ``<root>/test/<class>/...`` (``n_test`` per class, none when 0); with ``classes=None``
    the ``n_train`` images go directly into ``<root>/train/`` (unlabelled). Images follow
    :func:`class_images` (colour by position in ``classes``, so learnable); image ``i``
    of a class has size ``sizes[i % len(sizes)]`` (w, h) and PIL mode ``modes[i % len(modes)]``.
    """
    from PIL import Image

    root = Path(root)
    rng = np.random.default_rng(seed)
    side = max(max(s) for s in sizes)
    for split, n in (("train", n_train), ("test", n_test)):
        for index, name in enumerate(classes or [None]):
            if n == 0 or (classes is None and split == "test"):
                continue
            folder = root / split / name if name else root / split
            folder.mkdir(parents=True, exist_ok=True)
            pixels = class_images(np.full(n, index), max(len(classes or []), 1), rng, side=side)
            for i, array in enumerate(pixels):
                img = Image.fromarray(array.transpose(1, 2, 0)).resize(sizes[i % len(sizes)], Image.BILINEAR)
                img.convert(modes[i % len(modes)]).save(folder / f"{name or 'img'}_{i:04d}.{ext}")
    return root


def write_slim(root, num_classes: int = 4, n_train: int = 8, n_test: int = 4, seed: int = 0) -> Path:
    """Write ``<root>/SlimageNet64/{train,test}/<wnid>/*.png`` (64x64, ImageNet-style class ids); return ``root``."""
    wnids = [f"n{1440764 + 97 * c:08d}" for c in range(num_classes)]
    write_image_folder(Path(root) / "SlimageNet64", wnids, n_train, n_test, sizes=((64, 64),), seed=seed)
    return Path(root)


SHARED_STL10 = SHARED / "data" / "stl10_binary"
HAS_SHARED_STL10 = (SHARED_STL10 / "unlabeled_X.bin").is_file()
SHARED_TINY = SHARED / "data" / "tiny-imagenet-200"
HAS_SHARED_TINY = (SHARED_TINY / "val" / "val_annotations.txt").is_file()


def write_stl10(root, n_train: int, n_test: int, n_unlabeled: int, seed: int = 0) -> Path:
    """Write ``<root>/stl10_binary`` in the official binary format; return ``root``.

    ``{train,test,unlabeled}_X.bin``: raw uint8 images, 3x96x96 each, every channel stored
    column-major; ``{train,test}_y.bin``: one uint8 label 1..10 per image;
    ``class_names.txt``. Images follow :func:`class_images` (learnable); the unlabelled
    ones are drawn from random classes.
    """
    root = Path(root)
    folder = root / "stl10_binary"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test), ("unlabeled", n_unlabeled)):
        labels = balanced_labels(n, 10, rng)
        images = class_images(labels, 10, rng, side=96)
        np.ascontiguousarray(images.transpose(0, 1, 3, 2)).tofile(folder / f"{split}_X.bin")
        if split != "unlabeled":
            (labels + 1).astype(np.uint8).tofile(folder / f"{split}_y.bin")
    (folder / "class_names.txt").write_text("".join(f"class{c}\n" for c in range(10)))
    return root


def write_tiny(root, classes: int, per_class_train: int, per_class_val: int, seed: int = 0) -> Path:
    """Write ``<root>/tiny-imagenet-200`` in the official layout; return ``root``.

    ``wnids.txt`` lists ``classes`` ImageNet-style ids in shuffled order (the label of a
    class is its position among the *sorted* ids); ``train/<wnid>/images/<wnid>_<i>.JPEG``
    plus ``<wnid>_boxes.txt``; ``val/images/val_<i>.JPEG`` (all classes mixed) listed in
    ``val/val_annotations.txt`` (file, wnid, box; tab-separated). Images are 64x64 JPEGs
    following :func:`class_images`; every 4th one (train and val) is a grayscale JPEG.
    """
    from PIL import Image

    folder = Path(root) / "tiny-imagenet-200"
    rng = np.random.default_rng(seed)
    wnids = sorted(f"n{v:08d}" for v in rng.choice(10**8, classes, replace=False).tolist())
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "wnids.txt").write_text("".join(f"{w}\n" for w in rng.permutation(wnids)))

    def save(array: np.ndarray, path: Path, gray: bool) -> None:
        img = Image.fromarray(array.transpose(1, 2, 0))
        (img.convert("L") if gray else img).save(path, format="JPEG", quality=90)

    for label, wnid in enumerate(wnids):
        images = folder / "train" / wnid / "images"
        images.mkdir(parents=True)
        pixels = class_images(np.full(per_class_train, label), classes, rng, side=64)
        for i, array in enumerate(pixels):
            save(array, images / f"{wnid}_{i}.JPEG", gray=i % 4 == 3)
        (folder / "train" / wnid / f"{wnid}_boxes.txt").write_text(
            "".join(f"{wnid}_{i}.JPEG\t0\t0\t63\t63\n" for i in range(per_class_train)))
    (folder / "val" / "images").mkdir(parents=True)
    val_labels = rng.permutation(np.repeat(np.arange(classes), per_class_val))
    rows = []
    for i, (label, array) in enumerate(zip(val_labels, class_images(val_labels, classes, rng, side=64))):
        save(array, folder / "val" / "images" / f"val_{i}.JPEG", gray=i % 4 == 3)
        rows.append(f"val_{i}.JPEG\t{wnids[label]}\t0\t0\t63\t63\n")
    (folder / "val" / "val_annotations.txt").write_text("".join(rows))
    return Path(root)


@pytest.fixture(scope="session")
def stl10_root(tmp_path_factory) -> Path:
    """A data root with ``stl10_binary``: the shared sample (500 train / 200 test / 500
    unlabeled) if present, else written files with the same counts."""
    root = tmp_path_factory.mktemp("stl10_root")
    if HAS_SHARED_STL10:
        return linked_shared_root(root, SHARED_STL10)
    return write_stl10(root, n_train=500, n_test=200, n_unlabeled=500)


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    """A data root with ``tiny-imagenet-200``: a copy of the shared sample (10 classes, 50
    train and 10 val images each) if present, else written files with the same counts.

    A copy, not a link: the loader writes its cache into the folder.
    """
    import os
    import shutil

    root = tmp_path_factory.mktemp("tiny_root")
    if HAS_SHARED_TINY:
        shutil.copytree(SHARED_TINY, root / "tiny-imagenet-200", copy_function=shutil.copyfile)
        for top, _, _ in os.walk(root):  # copytree keeps the shared folders' read-only modes
            os.chmod(top, 0o755)
        return root
    return write_tiny(root, classes=10, per_class_train=50, per_class_val=10)
