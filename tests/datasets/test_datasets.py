"""Tests of datasets/: CIFAR loaders, ImageSet, registry, download and extraction safety."""

from __future__ import annotations

import hashlib
import io
import pickle
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from datasets import DATASETS, DatasetError, ImageSet, image_side, load_dataset
from datasets import cifar as cifar_mod
from datasets.download import (
    DownloadError,
    UnsafeArchiveError,
    check_md5,
    download_file,
    md5sum,
    safe_extract_tar,
)
from tests.helpers import FINE_TO_COARSE, HAS_SHARED_CIFAR10, one_line, serve_download, write_cifar10


def raw_batch(path: Path) -> dict:
    """Read a batch with plain pickle in bytes mode (an independent path from the loader)."""
    with open(path, "rb") as f:
        d = pickle.load(f, encoding="bytes")
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in d.items()}


# ----------------------------------------------------------------------------- CIFAR-10


def test_cifar10_written_train_matches_files(small_cifar10_root, capsys):
    s = load_dataset("cifar10", "train", small_cifar10_root, download=False)
    assert isinstance(s, ImageSet)
    assert (s.name, s.split, s.num_classes, s.side, len(s)) == ("cifar10", "train", 10, 32, 200)
    assert s.images.dtype == torch.uint8 and s.images.shape == (200, 3, 32, 32)
    assert s.images.is_contiguous() and s.images.device.type == "cpu"
    assert s.labels.dtype == torch.int64 and s.labels.shape == (200,)
    folder = small_cifar10_root / "cifar-10-batches-py"
    batches = [raw_batch(folder / f"data_batch_{b}") for b in range(1, 6)]
    expected_labels = np.concatenate([np.asarray(b["labels"]) for b in batches])
    assert s.labels.tolist() == expected_labels.tolist()
    data = np.concatenate([b["data"] for b in batches])
    # Pixel (0, 0) of every image: byte 0 is red, byte 1024 green, byte 2048 blue.
    for c in range(3):
        assert s.images[:, c, 0, 0].tolist() == data[:, 1024 * c].tolist()
    # Row-major layout: pixel (row 1, col 2) of channel 1 is byte 1024 + 32 + 2.
    assert s.images[:, 1, 1, 2].tolist() == data[:, 1024 + 34].tolist()
    assert torch.equal(s.images.reshape(200, -1), torch.from_numpy(data))
    assert "[WARNING]" not in capsys.readouterr().err  # all 5 batches present


def test_cifar10_constants(small_cifar10_root):
    s = load_dataset("cifar10", "test", small_cifar10_root, download=False)
    assert len(s) == 40
    assert s.mean == (0.491, 0.482, 0.447) and s.std == (0.247, 0.243, 0.262)
    assert s.padding == 4 and s.cutout == 0.25
    assert s.labels.tolist() == raw_batch(small_cifar10_root / "cifar-10-batches-py" / "test_batch")["labels"]


def test_cifar10_partial_batches_warn_once_and_numeric_order(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("datasets.cifar._WARNED_PARTIAL", set())
    write_cifar10(tmp_path, n_train_per_batch=12, n_test=5, batches=2, seed=3)
    folder = tmp_path / "cifar-10-batches-py"
    # A 10th batch must come after the 2nd (numeric, not lexicographic, order).
    (folder / "data_batch_2").rename(folder / "data_batch_10")
    s = load_dataset("cifar10", "train", tmp_path, download=False)
    err = capsys.readouterr().err
    assert err.count("[WARNING]") == 1 and "2 of the official 5" in err
    load_dataset("cifar10", "train", tmp_path, download=False)  # a monitored run loads it again
    assert "[WARNING]" not in capsys.readouterr().err
    b1, b10 = raw_batch(folder / "data_batch_1"), raw_batch(folder / "data_batch_10")
    assert s.labels.tolist() == list(b1["labels"]) + list(b10["labels"])


def test_bytes_keys_also_load(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    data = np.arange(3 * 3072, dtype=np.int64).astype(np.uint8).reshape(3, 3072)
    for name in ("data_batch_1", "test_batch"):
        with open(folder / name, "wb") as f:
            pickle.dump(
                {b"batch_label": b"x", b"labels": [7, 0, 9], b"data": data, b"filenames": [b"a", b"b", b"c"]},
                f,
                protocol=2,
            )
    s = load_dataset("cifar10", "test", tmp_path, download=False)
    assert s.labels.tolist() == [7, 0, 9]
    assert torch.equal(s.images.reshape(3, -1), torch.from_numpy(data))


@pytest.mark.skipif(not HAS_SHARED_CIFAR10, reason="shared CIFAR-10 sample absent")
def test_cifar10_shared_sample(shared_cifar10_root, capsys, monkeypatch):
    monkeypatch.setattr("datasets.cifar._WARNED_PARTIAL", set())  # as in a fresh process: warned once
    t0 = time.perf_counter()
    train = load_dataset("cifar10", "train", shared_cifar10_root, download=False)
    elapsed = time.perf_counter() - t0
    test = load_dataset("cifar10", "test", shared_cifar10_root, download=False)
    assert len(train) == 20_000 and len(test) == 2_000
    assert train.class_counts().tolist() == [2000] * 10
    assert test.class_counts().tolist() == [200] * 10
    mean = (train.images.float() / 255).mean(dim=(0, 2, 3))
    std = (train.images.float() / 255).std(dim=(0, 2, 3))
    assert torch.allclose(mean, torch.tensor([0.4905, 0.4817, 0.4466]), atol=6e-4)
    assert torch.allclose(std, torch.tensor([0.2455, 0.2430, 0.2607]), atol=6e-4)
    assert capsys.readouterr().err.count("[WARNING]") == 1
    assert elapsed < 3.0, f"loading 20,000 images took {elapsed:.2f}s"


def test_cifar10_root_fixture_loads(cifar10_root):
    s = load_dataset("cifar10", "test", cifar10_root, download=False)
    assert len(s) in (2000, 200) and s.num_classes == 10


def test_written_images_are_learnable(small_cifar10_root):
    train = load_dataset("cifar10", "train", small_cifar10_root, download=False)
    test = load_dataset("cifar10", "test", small_cifar10_root, download=False)
    x, xt = train.images.float().flatten(1), test.images.float().flatten(1)
    centroids = torch.stack([x[train.labels == c].mean(0) for c in range(10)])
    pred = torch.cdist(xt, centroids).argmin(1)
    assert (pred == test.labels).float().mean() > 0.5  # chance is 0.1


# ----------------------------------------------------------------------------- CIFAR-100


def test_cifar100_fine_and_super_labels(cifar100_root):
    fine = load_dataset("cifar100", "train", cifar100_root, download=False)
    sup = load_dataset("supercifar100", "train", cifar100_root, download=False)
    raw = raw_batch(cifar100_root / "cifar-100-python" / "train")
    assert (len(fine), fine.num_classes, sup.num_classes) == (500, 100, 20)
    assert fine.labels.tolist() == list(raw["fine_labels"])
    assert sup.labels.tolist() == list(raw["coarse_labels"])
    assert sup.labels.tolist() == FINE_TO_COARSE[np.asarray(raw["fine_labels"])].tolist()
    assert sup.labels.tolist() != (fine.labels // 5).tolist()
    assert int(sup.labels.max()) == 19 and int(fine.labels.max()) == 99
    assert torch.equal(fine.images, sup.images)
    for c in range(3):
        assert fine.images[:, c, 0, 0].tolist() == raw["data"][:, 1024 * c].tolist()
    for s in (fine, sup):
        assert s.mean == (0.507, 0.487, 0.441) and s.std == (0.267, 0.256, 0.276)
        assert s.padding == 4 and s.cutout == 0.0625 and s.side == 32
    test = load_dataset("supercifar100", "test", cifar100_root, download=False)
    assert len(test) == 200 and test.split == "test" and test.name == "supercifar100"


# ----------------------------------------------------------------------------- ImageSet


def _toy_set(labels: list[int], num_classes: int) -> ImageSet:
    n = len(labels)
    images = (
        torch.arange(n, dtype=torch.int64)
        .remainder(256)
        .to(torch.uint8)
        .view(n, 1, 1, 1)
        .expand(n, 3, 4, 4)
        .contiguous()
    )
    return ImageSet(
        "toy",
        "train",
        images,
        torch.tensor(labels, dtype=torch.int64),
        num_classes,
        (0.5, 0.5, 0.5),
        (0.5, 0.5, 0.5),
        4,
        None,
    )


def test_subset_keeps_pairs_and_constants(small_cifar10_root):
    s = load_dataset("cifar10", "train", small_cifar10_root, download=False)
    idx = torch.tensor([5, 0, 199])
    sub = s.subset(idx)
    assert len(sub) == 3 and sub.images.is_contiguous()
    assert torch.equal(sub.images, s.images[idx]) and torch.equal(sub.labels, s.labels[idx])
    assert (sub.mean, sub.std, sub.padding, sub.cutout, sub.num_classes, sub.name) == (
        s.mean,
        s.std,
        s.padding,
        s.cutout,
        s.num_classes,
        s.name,
    )


def test_as_inputs_keeps_the_normalisation_or_leaves_pixels_in_unit_range(small_cifar10_root):
    s = load_dataset("cifar10", "train", small_cifar10_root, download=False)
    assert s.as_inputs(True) is s
    unit = s.as_inputs(False)
    assert (unit.mean, unit.std) == ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)) and unit.images is s.images
    assert (unit.name, unit.padding, unit.cutout, unit.num_classes) == (s.name, s.padding, s.cutout, s.num_classes)
    assert unit.as_inputs(True) is unit and (s.mean, s.std) != (unit.mean, unit.std)


def test_balanced_subset_counts_and_seeds(small_cifar10_root):
    s = load_dataset("cifar10", "train", small_cifar10_root, download=False)  # 20 per class
    a = s.balanced_subset(100, seed=1)
    assert a.class_counts().tolist() == [10] * 10
    b = s.balanced_subset(100, seed=1)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    c = s.balanced_subset(100, seed=2)
    assert not torch.equal(a.images, c.images)
    # Remainder goes one each to the lowest class indices.
    assert s.balanced_subset(23, seed=0).class_counts().tolist() == [3, 3, 3] + [2] * 7
    assert s.balanced_subset(0, seed=0) is s and s.balanced_subset(len(s), seed=0) is s
    assert s.balanced_subset(10**6, seed=0) is s
    with pytest.raises(ValueError):
        s.balanced_subset(-1, seed=0)


def test_balanced_subset_rows_are_real_rows():
    s = _toy_set([i % 4 for i in range(40)], 4)
    sub = s.balanced_subset(8, seed=5)
    # Each toy image is filled with its index, so the image identifies the row.
    rows = sub.images[:, 0, 0, 0].long()
    assert torch.equal(s.labels[rows], sub.labels)
    assert rows.tolist() == sorted(rows.tolist())


def test_balanced_subset_uneven_classes():
    # class 0 has only 2 images: its shortfall goes to the others.
    s = _toy_set([0, 0] + [1] * 10 + [2] * 10, 3)
    assert s.balanced_subset(12, seed=0).class_counts().tolist() == [2, 5, 5]
    assert s.balanced_subset(13, seed=0).class_counts().tolist() == [2, 6, 5]


def test_imageset_validates_types():
    with pytest.raises(TypeError):
        ImageSet(
            "x", "train", torch.zeros(2, 3, 4, 4), torch.zeros(2, dtype=torch.int64), 2, (0, 0, 0), (1, 1, 1), 4, None
        )
    with pytest.raises(ValueError):
        ImageSet(
            "x",
            "train",
            torch.zeros(2, 3, 4, 4, dtype=torch.uint8),
            torch.zeros(3, dtype=torch.int64),
            2,
            (0, 0, 0),
            (1, 1, 1),
            4,
            None,
        )


# ----------------------------------------------------------------------------- registry


def test_registry_and_unknown_names(small_cifar10_root):
    assert set(DATASETS) >= {"cifar10", "cifar100", "supercifar100"}
    with pytest.raises(ValueError) as e:
        load_dataset("imagenet", "train", small_cifar10_root)
    msg = one_line(e.value)
    assert all(n in msg for n in ("cifar10", "cifar100", "supercifar100"))
    with pytest.raises(ValueError) as e:
        load_dataset("cifar10", "validation", small_cifar10_root)
    assert "train" in one_line(e.value) and "test" in str(e.value)
    with pytest.raises(ValueError):  # no unlabeled split for CIFAR
        load_dataset("cifar10", "unlabeled", small_cifar10_root)


def test_image_side_is_known_without_reading_the_images(small_cifar10_root):
    assert image_side("cifar10") == load_dataset("cifar10", "test", small_cifar10_root, download=False).side == 32
    assert [image_side(name) for name in ("cifar100", "supercifar100", "stl10", "tiny", "slim")] == [32, 32, 96, 64, 64]
    assert set(DATASETS) - {"folder"} <= {name for name in DATASETS if image_side(name)}
    assert image_side("folder", 48) == 48
    assert image_side("folder") is None  # folder images keep their own size, unknown until read


def test_a_record_describes_the_images_its_loader_gives(small_cifar10_root):
    data = load_dataset("cifar10", "test", small_cifar10_root, download=False)
    record = DATASETS["cifar10"]
    assert (data.name, data.side, data.mean, data.std) == (record.name, record.side, record.mean, record.std)
    assert (data.padding, data.cutout) == (record.padding, record.cutout)
    assert all(name == record.name for name, record in DATASETS.items())


# ----------------------------------------------------------------------------- errors on disk


def test_missing_folder_without_download(tmp_path):
    with pytest.raises(DatasetError) as e:
        load_dataset("cifar10", "train", tmp_path / "nowhere", download=False)
    msg = one_line(e.value)
    assert str(tmp_path / "nowhere" / "cifar-10-batches-py") in msg
    assert "cifar-10-python.tar.gz" in msg and "https://" in msg
    with pytest.raises(DatasetError) as e:
        load_dataset("supercifar100", "test", tmp_path, download=False)
    assert str(tmp_path / "cifar-100-python") in one_line(e.value)
    assert not (tmp_path / "nowhere").exists()


def test_unreachable_download_fails_fast_with_one_line(tmp_path, monkeypatch):
    serve_download(monkeypatch, cifar_mod, "CIFAR10", "http://127.0.0.1:9/cifar-10-python.tar.gz")
    t0 = time.perf_counter()
    with pytest.raises(DatasetError) as e:
        load_dataset("cifar10", "test", tmp_path, download=True)
    assert time.perf_counter() - t0 < 20
    msg = one_line(e.value)
    assert "download failed" in msg and str(tmp_path / "cifar-10-batches-py") in msg
    assert "127.0.0.1:9" in msg
    assert not list(tmp_path.glob("*.part")) and not list(tmp_path.glob("*.tar.gz"))


def test_truncated_batch_names_file(tmp_path):
    write_cifar10(tmp_path, n_train_per_batch=10, n_test=10, batches=5)
    bad = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    bad.write_bytes(bad.read_bytes()[:5000])
    with pytest.raises(DatasetError) as e:
        load_dataset("cifar10", "train", tmp_path, download=False)
    msg = one_line(e.value)
    assert str(bad) in msg and "truncated or corrupt" in msg
    load_dataset("cifar10", "test", tmp_path, download=False)  # the other split still loads


@pytest.mark.parametrize(
    "content",
    [
        {"labels": [1, 2], "data": np.zeros((2, 100), np.uint8)},  # wrong width
        {"labels": [1, 2, 3], "data": np.zeros((2, 3072), np.uint8)},  # label count
        {"labels": [1, 12], "data": np.zeros((2, 3072), np.uint8)},  # label range
        {"labels": [1, 2], "data": np.zeros((2, 3072), np.float32)},  # dtype
        [1, 2, 3],  # not a dict
    ],
)
def test_wrong_batch_content(tmp_path, content):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    with open(folder / "test_batch", "wb") as f:
        pickle.dump(content, f, protocol=2)
    with pytest.raises(DatasetError) as e:
        load_dataset("cifar10", "test", tmp_path, download=False)
    assert str(folder / "test_batch") in one_line(e.value)


def test_malicious_pickle_is_not_executed(tmp_path):
    class Evil:
        def __reduce__(self):
            return (Path.touch, (tmp_path / "pwned",))

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"labels": [], "data": Evil()}, f, protocol=2)
    with pytest.raises(DatasetError):
        load_dataset("cifar10", "test", tmp_path, download=False)
    assert not (tmp_path / "pwned").exists()


def test_incomplete_folder_names_missing_file(tmp_path):
    write_cifar10(tmp_path, n_train_per_batch=5, n_test=5, batches=1)
    (tmp_path / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(DatasetError) as e:
        load_dataset("cifar10", "test", tmp_path, download=True)  # must not try to download
    assert "test_batch" in one_line(e.value)


# ----------------------------------------------------------------------------- download helpers


def test_md5_verification(tmp_path):
    f = tmp_path / "blob.bin"
    f.write_bytes(b"relational reasoning" * 1000)
    good = hashlib.md5(f.read_bytes()).hexdigest()
    assert md5sum(f) == good
    check_md5(f, good)
    check_md5(f, good.upper())
    with pytest.raises(DownloadError) as e:
        check_md5(f, "0" * 32)
    assert str(f) in one_line(e.value) and "md5" in str(e.value)
    assert isinstance(e.value, DatasetError)


def test_download_file_checksum_and_temp_file(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(bytes(range(256)) * 50)
    dest = tmp_path / "out" / "file.bin"
    with pytest.raises(DownloadError):
        download_file(src.as_uri(), dest, md5="f" * 32, progress=False)
    assert not dest.exists() and not list(dest.parent.iterdir())  # temp file removed
    download_file(src.as_uri(), dest, md5=md5sum(src), progress=False)
    assert dest.read_bytes() == src.read_bytes()


def _tar_with(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize("name", ["../evil.txt", "ok/../../evil.txt", "/tmp/evil_abs.txt"])
def test_extraction_rejects_escaping_members(tmp_path, name):
    archive = _tar_with(tmp_path / "bad.tar.gz", {"fine/a.txt": b"a", name: b"evil"})
    dest = tmp_path / "dest"
    with pytest.raises(UnsafeArchiveError) as e:
        safe_extract_tar(archive, dest)
    assert str(archive) in one_line(e.value)
    assert not (tmp_path / "evil.txt").exists()
    assert not (dest / "fine" / "a.txt").exists()  # nothing extracted at all


def test_extraction_rejects_links(tmp_path):
    archive = tmp_path / "link.tar"
    with tarfile.open(archive, "w") as tar:
        info = tarfile.TarInfo("folder/link")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tar.addfile(info)
    with pytest.raises(UnsafeArchiveError):
        safe_extract_tar(archive, tmp_path / "dest")


def test_full_download_path_via_file_url(tmp_path, monkeypatch):
    """Missing folder + download=True: fetch archive, verify md5, extract, load."""
    src = write_cifar10(tmp_path / "src", n_train_per_batch=8, n_test=6, batches=5, seed=4)
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    serve_download(monkeypatch, cifar_mod, "CIFAR10", archive.as_uri(), md5sum(archive))
    root = tmp_path / "root"
    s = load_dataset("cifar10", "test", root, download=True)
    assert len(s) == 6
    assert s.labels.tolist() == raw_batch(src / "cifar-10-batches-py" / "test_batch")["labels"]
    assert (root / "cifar-10-batches-py" / "data_batch_5").is_file()
    assert not [p for p in root.iterdir() if p.name.startswith(".extract-") or p.suffix == ".part"]

    # A kept, verified archive is re-used without the network, even with download=False.
    import shutil

    shutil.rmtree(root / "cifar-10-batches-py")
    serve_download(monkeypatch, cifar_mod, "CIFAR10", "http://127.0.0.1:9/cifar-10-python.tar.gz")
    assert len(load_dataset("cifar10", "train", root, download=False)) == 40

    # A wrong checksum: the download is rejected and nothing is left behind.
    shutil.rmtree(root / "cifar-10-batches-py")
    (root / "cifar-10-python.tar.gz").unlink()
    serve_download(monkeypatch, cifar_mod, "CIFAR10", archive.as_uri(), "0" * 32)
    with pytest.raises(DatasetError) as e:
        load_dataset("cifar10", "test", root, download=True)
    assert "md5" in one_line(e.value)
    assert not (root / "cifar-10-batches-py").exists() and not (root / "cifar-10-python.tar.gz").exists()


def test_class_names_come_from_the_official_files(small_cifar10_root, tmp_path):
    from datasets import class_names
    from tests.helpers import CIFAR10_CLASSES

    assert class_names("cifar10", small_cifar10_root, 10) == CIFAR10_CLASSES
    assert class_names("cifar10", small_cifar10_root, 20) is None  # not the data set's classes
    assert class_names("cifar100", tmp_path, 100) is None  # no files: the plot shows numbers
