"""Tests of datasets/slim.py (SlimageNet64 in its ImageFolder layout)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from datasets import DATASETS, DatasetError, load_dataset
from tests.helpers import (
    first_file,
    load,
    one_line,
    pixels,
    refuse_to_decode,
    stage_arguments,
    three_stages,
    write_image_folder,
    write_slim,
)


def test_layout_labels_sizes_and_constants(tmp_path):
    # Written in reverse order: labels must follow the sorted folder names, not creation order.
    wnids = ["n09999999", "n04000000", "n01440764"]
    write_image_folder(tmp_path / "SlimageNet64", wnids, n_train=5, n_test=2, sizes=((64, 64),))
    assert "slim" in DATASETS
    train = load_dataset("slim", "train", tmp_path, download=False)
    test = load_dataset("slim", "test", tmp_path, download=False)
    assert (len(train), len(test), train.side, test.side, train.num_classes) == (15, 6, 64, 64, 3)
    assert train.labels.tolist() == [0] * 5 + [1] * 5 + [2] * 5 and test.labels.tolist() == [0, 0, 1, 1, 2, 2]
    for label, wnid in enumerate(sorted(wnids)):
        assert torch.equal(
            train.images[train.labels == label][0], pixels(first_file(tmp_path / "SlimageNet64" / "train" / wnid))
        )
        assert torch.equal(
            test.images[test.labels == label][0], pixels(first_file(tmp_path / "SlimageNet64" / "test" / wnid))
        )
    for data in (train, test):
        assert (data.name, data.mean, data.std, data.padding, data.cutout) == ("slim", (0.5,) * 3, (0.25,) * 3, 8, None)


def test_train_and_test_classes_agree_in_appearance(tmp_path):
    write_slim(tmp_path, num_classes=4, n_train=8, n_test=4)
    train, test = (load_dataset("slim", split, tmp_path) for split in ("train", "test"))
    # Nearest class-mean colour: only right if train and test label the same class alike.
    means = torch.stack([train.images[train.labels == c].double().mean(dim=(0, 2, 3)) for c in range(4)])
    guess = torch.cdist(test.images.double().mean(dim=(2, 3)), means).argmin(dim=1)
    assert torch.equal(guess, test.labels)


def test_cache_reused_and_native_size_only(tmp_path, monkeypatch):
    write_slim(tmp_path, num_classes=2, n_train=3, n_test=2)
    first = load_dataset("slim", "train", tmp_path)
    assert (tmp_path / "SlimageNet64" / ".cache" / "train.pt").is_file()
    with monkeypatch.context() as patch:
        patch.setattr(Image, "open", refuse_to_decode)
        assert torch.equal(load_dataset("slim", "train", tmp_path, image_size=64).images, first.images)
    with pytest.raises(DatasetError, match="only 'folder'"):
        load_dataset("slim", "train", tmp_path, image_size=32)


def test_missing_folders_name_the_layout_and_source(tmp_path):
    with pytest.raises(DatasetError) as info:
        load_dataset("slim", "train", tmp_path, download=True)  # nothing to download: same error
    message = one_line(info.value)
    assert str(tmp_path / "SlimageNet64" / "train") in message and "<class>" in message
    assert "zenodo.org/record/3672132" in message
    write_slim(tmp_path, num_classes=2, n_train=2, n_test=0)
    assert len(load_dataset("slim", "train", tmp_path)) == 4
    with pytest.raises(DatasetError) as info:
        load_dataset("slim", "test", tmp_path)
    assert str(tmp_path / "SlimageNet64" / "test") in one_line(info.value)


def test_class_mismatch_names_the_difference(tmp_path):
    write_slim(tmp_path, num_classes=3, n_train=2, n_test=1)
    test_folder = tmp_path / "SlimageNet64" / "test"
    missing = sorted(p.name for p in test_folder.iterdir())[1]
    (test_folder / missing).rename(test_folder / "n99999999")
    with pytest.raises(DatasetError) as info:
        load_dataset("slim", "test", tmp_path)
    message = one_line(info.value)
    assert f"missing from test: {missing}" in message and "not in train: n99999999" in message


@pytest.mark.parametrize("problem", ["wrong_size", "no_classes"])
def test_wrong_images_are_refused(tmp_path, problem):
    if problem == "wrong_size":
        write_image_folder(tmp_path / "SlimageNet64", ["n1", "n2"], n_train=2, n_test=1, sizes=((32, 32),))
    else:
        write_image_folder(tmp_path / "SlimageNet64", None, n_train=3, sizes=((64, 64),))
    with pytest.raises(DatasetError) as info:
        load_dataset("slim", "train", tmp_path)
    assert ("64x64" if problem == "wrong_size" else "no class folders") in one_line(info.value)


def test_three_stages_on_slim(tmp_path, capsys):
    root = write_slim(tmp_path / "data", num_classes=3, n_train=8, n_test=4)
    out = tmp_path / "out"
    args = stage_arguments(root, out, dataset="slim")
    stage1_file, stage2_file, _, test_out = three_stages(
        args, out, "slim", "relationnet", capsys, stage1_args=["--K", "2", "--data_size", "8"]
    )
    assert {"backbone", "relation"} <= set(load(stage1_file))
    assert load(stage2_file)["classifier"]["weight"].shape[0] == 3
    assert "Test accuracy:" in test_out
