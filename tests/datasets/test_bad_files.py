"""Data files an adversarial user (or an accident) leaves in a data set: high-bit-depth and
float images, symlink loops, forged decode caches, empty splits, crafted CIFAR labels. Each is
read by its real content or refused in one line naming the file; none crashes or trains on
garbage."""

from __future__ import annotations

import os
import pickle
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from datasets import DatasetError, load_dataset
from tests.helpers import one_line, write_cifar10, write_image_folder, write_stl10, write_tiny


def test_16_bit_and_float_images_are_scaled_by_their_range(tmp_path):
    root = write_image_folder(tmp_path, ["a", "b"], n_train=2)
    gray16 = np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000 + 1  # 1 .. 63001 of 65535
    Image.fromarray(gray16).resize((32, 32), Image.NEAREST).save(root / "train" / "a" / "deep.png")
    ramp = np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(32, 32)
    Image.fromarray(ramp).save(root / "train" / "b" / "float.tif")
    data = load_dataset("folder", "train", root)
    names = [path.name for name in ("a", "b") for path in sorted((root / "train" / name).iterdir())]
    deep = data.images[names.index("deep.png")]
    expected = np.rint(np.asarray(Image.open(root / "train" / "a" / "deep.png"), dtype=np.float64) * 255 / 65535)
    assert torch.equal(deep[0], torch.from_numpy(expected.astype(np.uint8)))  # not clipped to {0, 255}
    assert len(torch.unique(deep)) > 50 and torch.equal(deep[0], deep[2])
    ramp_pixels = data.images[names.index("float.tif")][0].flatten()
    assert ramp_pixels[0] == 0 and ramp_pixels[-1] == 255 and len(torch.unique(ramp_pixels)) == 256


def test_a_float_image_outside_0_1_is_refused_naming_it(tmp_path):
    root = write_image_folder(tmp_path, ["a"], n_train=2)
    Image.fromarray(np.full((32, 32), 1000.0, dtype=np.float32)).save(root / "train" / "a" / "hdr.tif")
    with pytest.raises(DatasetError) as error:
        load_dataset("folder", "train", root)
    assert "hdr.tif" in one_line(error.value) and "outside 0..1" in str(error.value)


def test_links_are_followed_only_inside_the_tree_and_once(tmp_path, capsys):
    root = write_image_folder(tmp_path / "data", ["a", "b"], n_train=3)
    outside = write_image_folder(tmp_path / "elsewhere", ["x"], n_train=4)
    (root / "train" / "a" / "up").symlink_to("..", target_is_directory=True)  # a loop over every class
    (root / "train" / "b" / "out").symlink_to(outside / "train" / "x", target_is_directory=True)
    (root / "train" / "b" / "copy").symlink_to(root / "train" / "a", target_is_directory=True)
    (root / "train" / "a" / "sub").mkdir()
    (root / "train" / "a" / "a_0000.png").rename(root / "train" / "a" / "sub" / "a_0000.png")
    (root / "train" / "a" / "again").symlink_to("sub", target_is_directory=True)
    data = load_dataset("folder", "train", root)
    assert len(data) == 6 and data.class_counts().tolist() == [3, 3]
    warnings = capsys.readouterr().err
    for why in (
        "out of the data set's tree",
        "back up to a folder that holds it",
        "into another class's folder",
        "to a folder already read",
    ):
        assert f"the link leads {why}" in warnings


def _forge(cache, **tensors):
    """Rewrite `cache` with other tensors under its own fingerprint and with matching CRCs,
    as a forger who knows the format would."""
    stored = torch.load(cache, weights_only=True)
    crc = {name: zlib.crc32(t.contiguous().numpy().tobytes()) for name, t in tensors.items()}
    torch.save({"fingerprint": stored["fingerprint"], "tensors": tensors, "crc": crc}, cache)
    os.utime(cache)


@pytest.mark.parametrize(
    "forged,size",
    [
        ({"images": torch.zeros(0, 3, 32, 32, dtype=torch.uint8)}, 0),  # no images: trained on nothing
        ({"images": torch.zeros(6, 3, 32, 32, dtype=torch.float32)}, 0),  # wrong dtype: crashed
        ({"images": torch.zeros(6, 3, 16, 16, dtype=torch.uint8)}, 32),  # not the side asked for
        ({"images": torch.zeros(6, 32, 32, dtype=torch.uint8)}, 0),  # wrong shape: crashed
    ],
    ids=["empty", "float", "side", "shape"],
)
def test_a_forged_folder_cache_is_rebuilt(tmp_path, capsys, forged, size):
    root = write_image_folder(tmp_path, ["a", "b"], n_train=3)
    genuine = load_dataset("folder", "train", root, image_size=size).images
    _forge(root / ".cache" / "train.pt", **forged)
    _forge(root / ".cache" / "stats.pt", mean=torch.zeros(5, dtype=torch.float64), std=torch.full((3,), -1.0))
    data = load_dataset("folder", "train", root, image_size=size)
    assert torch.equal(data.images, genuine)
    assert 0 < min(data.std) and len(data.mean) == 3
    assert "does not match its files" in capsys.readouterr().err


def test_a_forged_tiny_cache_is_rebuilt(tmp_path, capsys):
    root = write_tiny(tmp_path, classes=2, per_class_train=2, per_class_val=1)
    genuine = load_dataset("tiny", "train", root, download=False).images
    _forge(root / "tiny-imagenet-200" / ".cache" / "train.pt", images=torch.zeros(0, 3, 64, 64, dtype=torch.uint8))
    assert torch.equal(load_dataset("tiny", "train", root, download=False).images, genuine)
    assert "it holds 0 images for 4 files" in capsys.readouterr().err


def _rewrite_batch(path, **entries):
    with open(path, "rb") as handle:
        batch = pickle.load(handle, encoding="latin1")
    batch.update(entries)
    with open(path, "wb") as handle:
        pickle.dump(batch, handle, protocol=2)


def test_an_empty_split_is_one_line(tmp_path):
    cifar = write_cifar10(tmp_path / "cifar", n_train_per_batch=4, n_test=4, batches=1)
    _rewrite_batch(cifar / "cifar-10-batches-py" / "data_batch_1", data=np.zeros((0, 3072), np.uint8), labels=[])
    stl = write_stl10(tmp_path / "stl", n_train=2, n_test=2, n_unlabeled=0)  # a 0-byte unlabeled_X.bin
    for name, root, split in (("cifar10", cifar, "train"), ("stl10", stl, "unlabeled")):
        with pytest.raises(DatasetError) as error:
            load_dataset(name, split, root, download=False)
        assert f"the {name} {split} split" in one_line(error.value) and "holds no images" in str(error.value)


@pytest.mark.parametrize(
    "labels,problem",
    [
        ([2**70] * 4, "'labels' outside 0..9"),  # OverflowError
        ([[0] * 1000] * 4, "not a flat list of integers"),  # shared sub-lists: pickled small, expanded huge
        (np.zeros((2, 2), np.int64), "not a flat list of integers"),
        ([0, 1, "2", 3], "not a flat list of integers"),
        ([0, 1, 2], "3 'labels' for 4 images"),
    ],
    ids=["huge", "nested", "2d", "text", "short"],
)
def test_crafted_cifar_labels_are_one_line(tmp_path, labels, problem):
    root = write_cifar10(tmp_path, n_train_per_batch=4, n_test=4, batches=1)
    _rewrite_batch(root / "cifar-10-batches-py" / "data_batch_1", labels=labels)
    with pytest.raises(DatasetError) as error:
        load_dataset("cifar10", "train", root, download=False)
    assert "data_batch_1" in one_line(error.value) and problem in str(error.value)
