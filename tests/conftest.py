"""Fixtures shared by every test: data roots in the official formats (see tests/helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.helpers import (
    HAS_SHARED_CIFAR10,
    HAS_SHARED_STL10,
    HAS_SHARED_TINY,
    SHARED_CIFAR10,
    SHARED_STL10,
    SHARED_TINY,
    linked_shared_root,
    write_cifar10,
    write_cifar10_excerpt,
    write_cifar100,
    write_stl10,
    write_tiny,
)


@pytest.fixture(scope="session")
def cifar10_root(tmp_path_factory) -> Path:
    """A data root with `cifar-10-batches-py`: the shared real sample if present, else written data."""
    root = tmp_path_factory.mktemp("cifar10_root")
    if HAS_SHARED_CIFAR10:
        return linked_shared_root(root, SHARED_CIFAR10)
    return write_cifar10(root, n_train_per_batch=1000, n_test=200, batches=2, seed=0)


@pytest.fixture(scope="session")
def small_cifar10_root(tmp_path_factory) -> Path:
    """Always-written tiny CIFAR-10: 5 batches x 40 train images, 40 test images."""
    return write_cifar10(tmp_path_factory.mktemp("small_cifar10"), n_train_per_batch=40, n_test=40, batches=5, seed=0)


@pytest.fixture(scope="session")
def real_small_cifar10_root(tmp_path_factory, small_cifar10_root) -> Path:
    """Real CIFAR-10 images, few: 200 training and 40 test images of the shared sample in
    the official format (the written tiny CIFAR-10 where the sample is absent)."""
    if not HAS_SHARED_CIFAR10:
        return small_cifar10_root
    return write_cifar10_excerpt(tmp_path_factory.mktemp("real_small_cifar10"), SHARED_CIFAR10, 200, 40)


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


@pytest.fixture(scope="session")
def stl10_root(tmp_path_factory) -> Path:
    """A data root with `stl10_binary`: the shared sample (500 train / 200 test / 500
    unlabeled) if present, else written files with the same counts."""
    root = tmp_path_factory.mktemp("stl10_root")
    if HAS_SHARED_STL10:
        return linked_shared_root(root, SHARED_STL10)
    return write_stl10(root, n_train=500, n_test=200, n_unlabeled=500)


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    """A data root with `tiny-imagenet-200`: a copy of the shared sample (10 classes, 50
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


@pytest.fixture
def single_cpu_thread():
    """Small problems (k-means on a few hundred points): on a shared CPU a second thread only
    adds waiting (see deepcluster's on_epoch_start)."""
    from utils.runtime import single_threaded

    with single_threaded(torch.device("cpu")):
        yield
