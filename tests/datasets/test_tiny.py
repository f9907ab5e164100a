"""Tiny-ImageNet loader (datasets/tiny.py): layout, labels, decoded-image cache, errors,
zip download and extraction safety, and the three stages."""

from __future__ import annotations

import stat
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

import datasets.tiny as tiny_mod
from datasets import DatasetError, load_dataset
from datasets.download import UnsafeArchiveError, md5sum, safe_extract_zip
from tests.helpers import one_line, serve_download, stage_arguments, three_stages, views_flag, write_tiny


def decode(path) -> torch.Tensor:
    """An independent decode of one file: (3, H, W) uint8 RGB."""
    with Image.open(path) as img:
        return torch.from_numpy(np.asarray(img.convert("RGB")).transpose(2, 0, 1).copy())


def expected_files(folder):
    """(train files, train labels, val files, val labels) in the loader's documented order:
    classes by sorted wnid, files sorted by name; val sorted by file name, labelled by the annotations."""
    wnids = sorted((folder / "wnids.txt").read_text().split())
    train = [
        (path, label)
        for label, wnid in enumerate(wnids)
        for path in sorted((folder / "train" / wnid / "images").iterdir())
    ]
    rows = sorted(line.split("\t")[:2] for line in (folder / "val" / "val_annotations.txt").read_text().splitlines())
    val = [(folder / "val" / "images" / name, wnids.index(wnid)) for name, wnid in rows]
    return [p for p, _ in train], [c for _, c in train], [p for p, _ in val], [c for _, c in val]


def load_both(root):
    return load_dataset("tiny", "train", root, download=False), load_dataset("tiny", "test", root, download=False)


# ----------------------------------------------------------------------------- loading


def test_tiny_root_counts_labels_and_pixels(tiny_root):
    folder = tiny_root / "tiny-imagenet-200"
    train, test = load_both(tiny_root)
    assert (len(train), len(test)) == (500, 100)
    for split, data in (("train", train), ("test", test)):
        assert (data.name, data.split, data.num_classes, data.side) == ("tiny", split, 10, 64)
        assert (data.mean, data.std, data.padding, data.cutout) == ((0.5,) * 3, (0.25,) * 3, 8, None)
        assert data.images.dtype == torch.uint8 and data.images.is_contiguous()
    train_files, train_labels, val_files, val_labels = expected_files(folder)
    assert train.labels.tolist() == train_labels and test.labels.tolist() == val_labels
    assert train.class_counts().tolist() == [50] * 10 and test.class_counts().tolist() == [10] * 10
    grayscale = 0
    for data, files in ((train, train_files), (test, val_files)):
        for k, path in enumerate(files):
            with Image.open(path) as img:
                gray = img.mode == "L"
            if gray or k % 37 == 0:
                assert torch.equal(data.images[k], decode(path)), path
            if gray:
                grayscale += 1
                assert torch.equal(data.images[k, 0], data.images[k, 1]) and torch.equal(
                    data.images[k, 0], data.images[k, 2]
                )
    assert grayscale > 0  # 14 in the shared sample, 150 in written data


def test_written_class_order_is_sorted_wnids(tmp_path):
    write_tiny(tmp_path, classes=4, per_class_train=5, per_class_val=3, seed=1)
    folder = tmp_path / "tiny-imagenet-200"
    listed = (folder / "wnids.txt").read_text().split()
    assert listed != sorted(listed)  # the file order is not the class order
    train, test = load_both(tmp_path)
    train_files, train_labels, val_files, val_labels = expected_files(folder)
    assert train.num_classes == 4 and train.labels.tolist() == train_labels == sorted(train_labels)
    assert test.labels.tolist() == val_labels and sorted(val_labels) == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert torch.equal(train.images, torch.stack([decode(p) for p in train_files]))
    assert torch.equal(test.images, torch.stack([decode(p) for p in val_files]))
    equal = (train.images[:, 0] == train.images[:, 1]).flatten(1).all(1)
    assert equal.tolist() == [i % 4 == 3 for i in range(5)] * 4  # every 4th written image is grayscale


# ----------------------------------------------------------------------------- cache


def test_cache_is_built_reused_and_rebuilt(tmp_path, monkeypatch, capsys):
    write_tiny(tmp_path, classes=3, per_class_train=4, per_class_val=2)
    folder = tmp_path / "tiny-imagenet-200"
    cache = folder / ".cache" / "train.pt"
    first = load_dataset("tiny", "train", tmp_path, download=False)
    assert "decoding the 12 train images once" in capsys.readouterr().out and cache.is_file()

    real_open = Image.open

    def no_decoding(*args, **kwargs):
        raise AssertionError("an image was decoded")

    monkeypatch.setattr(Image, "open", no_decoding)
    again = load_dataset("tiny", "train", tmp_path, download=False)  # from the cache: nothing decoded
    assert torch.equal(again.images, first.images) and torch.equal(again.labels, first.labels)
    assert capsys.readouterr().out == ""

    # A changed source file makes the cache stale: loading decodes again (and fails while it cannot).
    changed = sorted((folder / "train").glob("*/images/*.JPEG"))[5]
    Image.new("RGB", (64, 64), (10, 200, 30)).save(changed, format="JPEG")
    with pytest.raises(DatasetError):
        load_dataset("tiny", "train", tmp_path, download=False)
    monkeypatch.setattr(Image, "open", real_open)
    rebuilt = load_dataset("tiny", "train", tmp_path, download=False)
    assert "decoding the 12 train images again" in capsys.readouterr().out
    assert torch.equal(rebuilt.images[5], decode(changed)) and not torch.equal(rebuilt.images[5], first.images[5])
    assert torch.equal(rebuilt.images[:5], first.images[:5])

    # A damaged cache is rebuilt, and the rebuilt one is used afterwards.
    cache.write_bytes(cache.read_bytes()[: cache.stat().st_size // 2])
    assert torch.equal(load_dataset("tiny", "train", tmp_path, download=False).images, rebuilt.images)
    assert "again" in capsys.readouterr().out
    monkeypatch.setattr(Image, "open", no_decoding)
    assert torch.equal(load_dataset("tiny", "train", tmp_path, download=False).images, rebuilt.images)


def test_unwritable_folder_works_without_cache(tmp_path, monkeypatch, capsys):
    write_tiny(tmp_path, classes=2, per_class_train=3, per_class_val=2)
    import datasets.images as images_mod

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(images_mod.tempfile, "mkstemp", refuse)  # as in a read-only folder
    data = load_dataset("tiny", "test", tmp_path, download=False)
    assert len(data) == 4
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "[WARNING]" in err and ".cache" in err
    assert not list((tmp_path / "tiny-imagenet-200").rglob("*.pt"))


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_jpeg_names_the_file(tmp_path, damage):
    write_tiny(tmp_path, classes=2, per_class_train=3, per_class_val=3)
    bad = tmp_path / "tiny-imagenet-200" / "val" / "images" / "val_4.JPEG"
    bad.write_bytes(b"not a JPEG at all" if damage == "garbage" else bad.read_bytes()[:300])
    with pytest.raises(DatasetError) as e:
        load_dataset("tiny", "test", tmp_path, download=False)
    assert str(bad) in one_line(e.value)
    assert len(load_dataset("tiny", "train", tmp_path, download=False)) == 6  # the other split loads


@pytest.mark.parametrize("damage", ["no wnids", "unknown wnid", "no class folder", "val image missing", "not 64x64"])
def test_layout_errors_name_the_file(tmp_path, damage):
    write_tiny(tmp_path, classes=2, per_class_train=3, per_class_val=2)
    folder = tmp_path / "tiny-imagenet-200"
    annotations = folder / "val" / "val_annotations.txt"
    wnid = sorted((folder / "wnids.txt").read_text().split())[1]
    split = "test"
    if damage == "no wnids":
        named = folder / "wnids.txt"
        named.unlink()
    elif damage == "unknown wnid":
        named = annotations
        named.write_text(annotations.read_text() + "val_99.JPEG\tn99999999\t0\t0\t1\t1\n")
    elif damage == "no class folder":
        named, split = folder / "train" / wnid / "images", "train"
        for path in named.iterdir():
            path.unlink()
        named.rmdir()
    elif damage == "val image missing":
        named = folder / "val" / "images" / "val_2.JPEG"
        named.unlink()
    else:
        named = folder / "val" / "images" / "val_0.JPEG"
        for path in (folder / "val" / "images").iterdir():
            Image.new("RGB", (32, 32)).save(path, format="JPEG")
    with pytest.raises(DatasetError) as e:
        load_dataset("tiny", split, tmp_path, download=True)  # an existing folder is never re-downloaded
    assert str(named) in one_line(e.value)


def test_missing_folder_without_download(tmp_path):
    with pytest.raises(DatasetError) as e:
        load_dataset("tiny", "train", tmp_path / "nowhere", download=False)
    msg = one_line(e.value)
    assert str(tmp_path / "nowhere" / "tiny-imagenet-200") in msg
    assert "wnids.txt" in msg and "val_annotations.txt" in msg and tiny_mod.TINY.download.url in msg
    assert not (tmp_path / "nowhere").exists()


def test_unknown_split(tmp_path):
    with pytest.raises(ValueError, match="train, test"):
        load_dataset("tiny", "unlabeled", tmp_path, download=False)


# ----------------------------------------------------------------------------- zip download


def zip_folder(archive, root, folder):
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted((root / folder).rglob("*")):
            zf.write(path, path.relative_to(root).as_posix())
    return archive


def test_download_via_file_url(tmp_path, monkeypatch):
    src = write_tiny(tmp_path / "src", classes=3, per_class_train=2, per_class_val=2, seed=4)
    archive = zip_folder(tmp_path / "tiny-imagenet-200.zip", src, "tiny-imagenet-200")
    serve_download(monkeypatch, tiny_mod, "TINY", archive.as_uri(), md5sum(archive))
    root = tmp_path / "root"
    test = load_dataset("tiny", "test", root, download=True)
    _, _, val_files, val_labels = expected_files(src / "tiny-imagenet-200")
    assert test.labels.tolist() == val_labels
    assert torch.equal(test.images, torch.stack([decode(p) for p in val_files]))
    assert (root / "tiny-imagenet-200.zip").is_file() and len(load_dataset("tiny", "train", root)) == 6
    assert not [p for p in root.iterdir() if p.name.startswith(".extract-") or p.suffix == ".part"]


@pytest.mark.parametrize("name", ["../evil.txt", "ok/../../evil.txt", "/tmp/evil_abs.txt", "link"])
def test_zip_extraction_refuses_escapes_and_links(tmp_path, name):
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("fine/a.txt", b"a")
        if name == "link":
            info = zipfile.ZipInfo("fine/link")
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, "/etc/passwd")
        else:
            zf.writestr(name, b"evil")
    dest = tmp_path / "dest"
    with pytest.raises(UnsafeArchiveError) as e:
        safe_extract_zip(archive, dest)
    assert str(archive) in one_line(e.value)
    assert not (dest / "fine" / "a.txt").exists() and not (tmp_path / "evil.txt").exists()


def test_corrupt_zip_is_one_line_error(tmp_path):
    archive = zip_folder(tmp_path / "t.zip", write_tiny(tmp_path / "src", 1, 2, 1), "tiny-imagenet-200")
    archive.write_bytes(archive.read_bytes()[:-200])
    with pytest.raises(DatasetError) as e:
        safe_extract_zip(archive, tmp_path / "dest")
    assert str(archive) in one_line(e.value) and "corrupt" in str(e.value)


# ----------------------------------------------------------------------------- three stages


@pytest.mark.parametrize("method", ["relationnet", "rotationnet"])
def test_three_stages(tiny_root, tmp_path, capsys, method):
    _, _, stage1_out, test_out = three_stages(
        stage_arguments(tiny_root, tmp_path, dataset="tiny"),
        tmp_path,
        "tiny",
        method,
        capsys,
        stage1_args=[*views_flag(method), "--data_size", "16", "--train_subset", "32"],
        stage2_args=["--train_subset", "40"],
    )
    assert "Training images: 32 (tiny train, 64x64, 10 classes)" in stage1_out
    assert "Test accuracy:" in test_out


@pytest.mark.parametrize("side", [(32, 32), (64, 48)], ids=["smaller", "not_square"])
def test_an_image_of_another_size_names_a_fix_that_applies_to_tiny(tmp_path, side):
    write_tiny(tmp_path, classes=2, per_class_train=3, per_class_val=2)
    images = sorted((tmp_path / "tiny-imagenet-200" / "val" / "images").iterdir())
    odd = images[0] if side[0] != side[1] else images[1]  # the first image sets the side the others must have
    Image.new("RGB", side).save(odd, format="JPEG")
    with pytest.raises(DatasetError) as e:
        load_dataset("tiny", "test", tmp_path, download=False)
    message = one_line(e.value)
    assert str(odd) in message and "Tiny-ImageNet's images are all 64x64, so the folder is incomplete" in message
    assert "(--image_size)" not in message and "--dataset folder with --image_size" in message
