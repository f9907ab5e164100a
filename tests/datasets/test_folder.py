"""Tests of datasets/folder.py (data set `folder`), datasets/images.py and the --image_size flag."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from datasets import DatasetError, load_dataset
from experiments.cli import stage1_parser
from tests.helpers import (
    first_file,
    load,
    one_line,
    pixels,
    refuse_to_decode,
    stage_arguments,
    three_stages,
    write_image_folder,
)


def test_classes_sorted_labels_and_exact_pixels(tmp_path):
    write_image_folder(tmp_path, ["zebra", "Apple", "mango"], n_train=4, n_test=2)
    train = load_dataset("folder", "train", tmp_path, download=False)
    assert (train.name, train.split, len(train), train.side, train.num_classes) == ("folder", "train", 12, 32, 3)
    assert train.labels.dtype == torch.int64 and train.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    for label, name in enumerate(["Apple", "mango", "zebra"]):  # sorted() order: upper case first
        assert torch.equal(train.images[train.labels == label][0], pixels(first_file(tmp_path / "train" / name)))
    test = load_dataset("folder", "test", tmp_path, download=False)
    assert len(test) == 6 and test.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert test.padding == 4 and test.cutout is None  # 32 px // 8, as cifar's 4


def test_grayscale_and_rgba_become_rgb(tmp_path):
    write_image_folder(tmp_path, ["a", "b"], n_train=3, modes=("RGB", "L", "RGBA"))
    data = load_dataset("folder", "train", tmp_path)
    gray, rgba = data.images[1], data.images[2]  # class a: image 1 is L, image 2 is RGBA
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    with Image.open(tmp_path / "train" / "a" / "a_0001.png") as img:
        assert img.mode == "L"
        assert torch.equal(gray[0], torch.from_numpy(np.array(img)))
    with Image.open(tmp_path / "train" / "a" / "a_0002.png") as img:
        assert img.mode == "RGBA"
        assert torch.equal(rgba, torch.from_numpy(np.asarray(img)[:, :, :3].transpose(2, 0, 1).copy()))


def test_resize_shorter_side_then_centre_crop(tmp_path):
    # A 60x20 image with red, green and blue thirds: the centre square is the green third.
    stripes = np.zeros((20, 60, 3), np.uint8)
    stripes[:, :20, 0] = stripes[:, 20:40, 1] = stripes[:, 40:, 2] = 255
    (tmp_path / "train" / "c").mkdir(parents=True)
    Image.fromarray(stripes).save(tmp_path / "train" / "c" / "wide.png")
    Image.fromarray(stripes.transpose(1, 0, 2)).save(tmp_path / "train" / "c" / "tall.png")
    data = load_dataset("folder", "train", tmp_path, image_size=10)
    assert data.images.shape == (2, 3, 10, 10) and data.padding == 1
    inner = data.images[:, :, 1:-1, 1:-1].int()  # bicubic blurs the crop's edges a little
    assert (inner[:, 1] > 230).all() and (inner[:, 0] < 25).all() and (inner[:, 2] < 25).all()


def test_differently_sized_images_need_image_size(tmp_path):
    write_image_folder(tmp_path, ["a", "b"], n_train=3, n_test=2, sizes=((40, 30), (28, 52), (33, 33)))
    with pytest.raises(DatasetError) as info:
        load_dataset("folder", "train", tmp_path)
    assert "a_0000.png" in one_line(info.value) and "--image_size" in str(info.value)
    for size, padding in ((32, 4), (64, 8), (96, 12)):
        data = load_dataset("folder", "test", tmp_path, image_size=size)
        assert data.images.shape == (4, 3, size, size) and data.padding == padding


def test_statistics_from_training_images_reused_by_test(tmp_path):
    write_image_folder(tmp_path, ["a", "b"], n_train=6, n_test=3, seed=1)
    # The test split is loaded first: its mean/std must still be those of train.
    test = load_dataset("folder", "test", tmp_path)
    train = load_dataset("folder", "train", tmp_path)
    x = train.images.double() / 255
    mean, std = x.mean(dim=(0, 2, 3)), x.std(dim=(0, 2, 3), unbiased=False)
    assert np.allclose(train.mean, mean.numpy()) and np.allclose(train.std, std.numpy())
    assert test.mean == train.mean and test.std == train.std
    own = test.images.double().div(255).mean(dim=(0, 2, 3))
    assert not np.allclose(test.mean, own.numpy())
    assert (tmp_path / ".cache" / "stats.pt").is_file()


def test_cache_reused_then_rebuilt_when_a_file_or_the_size_changes(tmp_path, monkeypatch):
    write_image_folder(tmp_path, ["a", "b"], n_train=4, n_test=2)
    first = {split: load_dataset("folder", split, tmp_path) for split in ("train", "test")}
    with monkeypatch.context() as patch:
        patch.setattr(Image, "open", refuse_to_decode)
        for split, data in first.items():
            again = load_dataset("folder", split, tmp_path)
            assert torch.equal(again.images, data.images) and again.mean == data.mean
        with pytest.raises(DatasetError, match="although the cache"):  # a different size is not served from it
            load_dataset("folder", "train", tmp_path, image_size=16)
    changed = tmp_path / "train" / "b" / "b_0000.png"
    Image.new("RGB", (32, 32), (255, 0, 255)).save(changed)
    data = load_dataset("folder", "train", tmp_path)
    assert torch.equal(data.images[4], pixels(changed)) and not torch.equal(data.images[4], first["train"].images[4])
    assert data.mean != first["train"].mean  # statistics follow the new training images
    assert load_dataset("folder", "train", tmp_path, image_size=16).side == 16


def test_damaged_cache_is_rebuilt(tmp_path):
    write_image_folder(tmp_path, ["a"], n_train=3)
    expected = load_dataset("folder", "train", tmp_path).images
    cache = tmp_path / ".cache" / "train.pt"
    raw = bytearray(cache.read_bytes())
    raw[-200:] = bytes(200)  # damage the end of the file
    cache.write_bytes(bytes(raw))
    assert torch.equal(load_dataset("folder", "train", tmp_path).images, expected)


def test_extensions_case_hidden_and_other_files(tmp_path):
    folder = tmp_path / "train" / "a"
    folder.mkdir(parents=True)
    for name, fmt in (("x.PNG", "PNG"), ("y.JPEG", "JPEG"), ("z.bmp", "BMP"), ("w.TIF", "TIFF"), ("v.webp", "WEBP")):
        Image.new("RGB", (8, 8), (200, 100, 50)).save(folder / name, format=fmt)
    (folder / ".hidden.png").write_bytes(b"not an image")  # skipped: hidden
    (folder / "notes.txt").write_text("skipped: not an image")
    (tmp_path / "train" / ".thumbnails").mkdir()  # a hidden folder is not a class
    data = load_dataset("folder", "train", tmp_path)
    assert len(data) == 5 and data.num_classes == 1
    assert (data.images.int() - torch.tensor([200, 100, 50])[:, None, None]).abs().max() <= 8  # lossy formats


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_image_names_the_file(tmp_path, damage):
    write_image_folder(tmp_path, ["a", "b"], n_train=3, ext="jpg")
    bad = tmp_path / "train" / "b" / "b_0001.jpg"
    bad.write_bytes(b"garbage" if damage == "garbage" else bad.read_bytes()[:200])
    with pytest.raises(DatasetError) as info:
        load_dataset("folder", "train", tmp_path)
    assert str(bad) in one_line(info.value)


def test_unlabelled_folder_pretraining_only(tmp_path):
    write_image_folder(tmp_path, None, n_train=5, sizes=((40, 36),))
    data = load_dataset("folder", "train", tmp_path, image_size=32)
    assert len(data) == 5 and data.labels.tolist() == [-1] * 5 and data.num_classes == 0
    with pytest.raises(DatasetError) as info:
        load_dataset("folder", "test", tmp_path, image_size=32)
    assert "unlabelled" in one_line(info.value) and "pretraining" in str(info.value)


@pytest.mark.parametrize("case", ["no_root", "no_train", "no_test", "empty_train", "empty_class", "mixed"])
def test_layout_errors_are_one_line(tmp_path, case):
    root = tmp_path / "tree"
    if case != "no_root":
        write_image_folder(root, ["a"], n_train=2, n_test=1 if case != "no_test" else 0)
    if case == "no_train" or case == "empty_train":
        for p in sorted((root / "train").rglob("*"), reverse=True):
            p.rmdir() if p.is_dir() else p.unlink()
        if case == "no_train":
            (root / "train").rmdir()
    if case == "empty_class":
        (root / "train" / "b").mkdir()
    if case == "mixed":
        Image.new("RGB", (32, 32)).save(root / "train" / "loose.png")
    with pytest.raises(DatasetError) as info:
        load_dataset("folder", "test", root)
    message = one_line(info.value)
    named = {
        "no_root": "<root>/train/<class>",
        "no_train": "<root>/train/<class>",
        "no_test": str(root / "test"),
        "empty_train": "<root>/train/<class>",
        "empty_class": str(root / "train" / "b"),
        "mixed": "loose.png",
    }
    assert named[case] in message


def test_test_classes_must_match_train(tmp_path):
    write_image_folder(tmp_path, ["a", "b", "c"], n_train=2, n_test=1)
    (tmp_path / "test" / "b").rename(tmp_path / "test" / "d")
    with pytest.raises(DatasetError) as info:
        load_dataset("folder", "test", tmp_path)
    assert "missing from test: b" in one_line(info.value) and "not in train: d" in str(info.value)


def test_only_folder_resizes(small_cifar10_root):
    assert load_dataset("cifar10", "test", small_cifar10_root, download=False, image_size=32).side == 32
    with pytest.raises(DatasetError, match="only 'folder'"):
        load_dataset("cifar10", "test", small_cifar10_root, download=False, image_size=64)


def test_image_size_flag(capsys):
    assert stage1_parser().parse_args([]).image_size == 0
    assert stage1_parser().parse_args(["--image_size", "48"]).image_size == 48
    with pytest.raises(SystemExit) as info:
        stage1_parser().parse_args(["--image_size", "-8"])
    assert info.value.code == 2
    assert capsys.readouterr().err.strip().count("\n") == 0


def test_three_stages_on_resized_folder(tmp_path, capsys):
    root = write_image_folder(
        tmp_path / "tree", ["cat", "dog", "eel"], n_train=8, n_test=4, sizes=((40, 30), (24, 36), (50, 50)), ext="jpg"
    )
    out = tmp_path / "out"
    args = stage_arguments(root, out, dataset="folder") + ["--image_size", "32"]
    stage1_file, stage2_file, _, test_out = three_stages(
        args, out, "folder", "relationnet", capsys, stage1_args=["--K", "2", "--data_size", "8"]
    )
    assert {"backbone", "relation"} <= set(load(stage1_file))
    assert load(stage2_file)["classifier"]["weight"].shape[0] == 3
    assert "Test accuracy:" in test_out


def test_a_data_root_whose_name_is_not_utf8_loads(tmp_path):
    root = write_image_folder(tmp_path / os.fsdecode(b"data\xff"), ["a", "b"], n_train=2)
    assert len(load_dataset("folder", "train", root, download=False)) == 4
