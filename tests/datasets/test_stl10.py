"""STL-10 loader (datasets/stl10.py), its three-stage pipeline, and the "finetune" augmentation."""

from __future__ import annotations

import math
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image

import datasets.stl10 as stl10_mod
from datasets import DatasetError, load_dataset, pretraining_split
from datasets.augment import AffineEraseViews, FinetuneAugmentation, NormalisedViews, build_augmentation
from datasets.augment_geometric import affine, erasing_side, random_affine_params
from datasets.download import md5sum
from tests.helpers import (
    HAS_SHARED_STL10,
    REPO,
    one_line,
    serve_download,
    stage_arguments,
    three_stages,
    views_flag,
    write_stl10,
)

PIXELS = 96 * 96


def raw_images(path) -> np.ndarray:
    """(N, 3, 96, 96) straight from the bytes: channel c, row y, column x is byte c*9216 + x*96 + y."""
    return np.fromfile(path, np.uint8).reshape(-1, 3, 96, 96).transpose(0, 1, 3, 2)


# ----------------------------------------------------------------------------- loading


def test_stl10_root_counts_labels_and_bytes(stl10_root):
    folder = stl10_root / "stl10_binary"
    sets = {split: load_dataset("stl10", split, stl10_root, download=False) for split in ("train", "test", "unlabeled")}
    assert {s: len(d) for s, d in sets.items()} == {"train": 500, "test": 200, "unlabeled": 500}
    for split, data in sets.items():
        assert (data.name, data.split, data.num_classes, data.side) == ("stl10", split, 10, 96)
        assert data.images.dtype == torch.uint8 and data.images.is_contiguous()
        assert (data.mean, data.std, data.padding, data.cutout) == ((0.5,) * 3, (0.5,) * 3, 12, 0.111)
    for split in ("train", "test"):
        on_disk = np.fromfile(folder / f"{split}_y.bin", np.uint8)
        assert sets[split].labels.tolist() == (on_disk.astype(np.int64) - 1).tolist()
        assert sets[split].labels.min() == 0 and sets[split].labels.max() == 9
    assert (sets["unlabeled"].labels == -1).all()
    # Column-major channels: image 0, channel 1, row 5, column 7 is byte 9216 + 7 * 96 + 5.
    first = np.fromfile(folder / "train_X.bin", np.uint8, count=3 * PIXELS)
    assert sets["train"].images[0, 1, 5, 7].item() == first[PIXELS + 7 * 96 + 5]
    assert sets["train"].images[0, 2, 95, 0].item() == first[2 * PIXELS + 95]
    assert torch.equal(sets["unlabeled"].images, torch.from_numpy(raw_images(folder / "unlabeled_X.bin").copy()))


@pytest.mark.skipif(not HAS_SHARED_STL10, reason="shared STL-10 sample absent")
def test_shared_sample_is_balanced(stl10_root):
    train = load_dataset("stl10", "train", stl10_root, download=False)
    assert train.class_counts().tolist() == [50] * 10


def test_written_files_load(tmp_path):
    write_stl10(tmp_path, n_train=30, n_test=20, n_unlabeled=7, seed=3)
    folder = tmp_path / "stl10_binary"
    for split, n in (("train", 30), ("test", 20), ("unlabeled", 7)):
        data = load_dataset("stl10", split, tmp_path, download=False)
        assert len(data) == n
        assert torch.equal(data.images, torch.from_numpy(raw_images(folder / f"{split}_X.bin").copy()))
    assert load_dataset("stl10", "train", tmp_path, download=False).class_counts().tolist() == [3] * 10


def test_unknown_split(stl10_root):
    with pytest.raises(ValueError, match="unlabeled"):
        stl10_mod.load_stl10(stl10_root, "validation")


@pytest.mark.parametrize(
    "damage", ["images not whole", "images truncated", "labels short", "labels range", "labels missing"]
)
def test_bad_files_name_the_file(tmp_path, damage):
    write_stl10(tmp_path, n_train=4, n_test=3, n_unlabeled=2)
    folder = tmp_path / "stl10_binary"
    images, labels = folder / "test_X.bin", folder / "test_y.bin"
    bad = images if damage.startswith("images") else labels
    if damage == "images not whole":
        images.write_bytes(images.read_bytes() + b"\0" * 100)
    elif damage == "images truncated":  # a whole number of images, but fewer than labels
        images.write_bytes(images.read_bytes()[: 2 * 3 * PIXELS])
        bad = labels
    elif damage == "labels short":
        labels.write_bytes(labels.read_bytes()[:-1])
    elif damage == "labels range":
        labels.write_bytes(bytes([1, 11, 2]))
    else:
        labels.unlink()
    with pytest.raises(DatasetError) as e:
        load_dataset("stl10", "test", tmp_path, download=True)  # an existing folder is never re-downloaded
    assert str(bad) in one_line(e.value)
    assert len(load_dataset("stl10", "train", tmp_path, download=False)) == 4  # other splits still load


def test_missing_folder_without_download(tmp_path):
    with pytest.raises(DatasetError) as e:
        load_dataset("stl10", "unlabeled", tmp_path / "nowhere", download=False)
    msg = one_line(e.value)
    assert str(tmp_path / "nowhere" / "stl10_binary") in msg
    assert "unlabeled_X.bin" in msg and "train_y.bin" in msg and stl10_mod.STL10.download.url in msg
    assert not (tmp_path / "nowhere").exists()


def test_download_via_file_url(tmp_path, monkeypatch):
    src = write_stl10(tmp_path / "src", n_train=5, n_test=4, n_unlabeled=3, seed=5)
    archive = tmp_path / "stl10_binary.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src / "stl10_binary", arcname="stl10_binary")
    serve_download(monkeypatch, stl10_mod, "STL10", archive.as_uri(), md5sum(archive))
    root = tmp_path / "root"
    data = load_dataset("stl10", "unlabeled", root, download=True)
    assert len(data) == 3 and (data.labels == -1).all()
    assert torch.equal(data.images, torch.from_numpy(raw_images(src / "stl10_binary" / "unlabeled_X.bin").copy()))
    assert (root / "stl10_binary.tar.gz").is_file() and len(load_dataset("stl10", "test", root)) == 4
    assert not [p for p in root.iterdir() if p.name.startswith(".extract-") or p.suffix == ".part"]


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs Linux /proc")
def test_loading_holds_one_copy_of_the_images(tmp_path):
    """Peak memory of loading ~166 MB of images is the output tensor plus small chunks.

    Measured in a fresh process by VmHWM, the peak resident size of its address space
    (ru_maxrss would inherit pytest's peak across fork and exec). Reading everything and
    then transposing, or one memory map of the whole file (whose resident pages count
    too), peaks at about twice the size.
    """
    n = 6000
    path = tmp_path / "unlabeled_X.bin"
    np.random.default_rng(0).integers(0, 256, n * 3 * PIXELS, dtype=np.uint8).tofile(path)
    script = (
        "import re, torch\n"
        "from datasets.stl10 import read_stl10_images\n"
        "def peak(): return int(re.search(r'VmHWM:\\s+(\\d+) kB', open('/proc/self/status').read()).group(1)) * 1024\n"
        "before = peak()\n"
        f"images = read_stl10_images({str(path)!r})\n"
        "print(images.shape[0], images.is_contiguous(), (peak() - before) / images.numel())\n"
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    count, contiguous, ratio = out.stdout.split()
    assert count == str(n) and contiguous == "True"
    assert 0.9 < float(ratio) < 1.4, f"peak memory {float(ratio):.2f}x the images"


def test_pretraining_split():
    assert pretraining_split("stl10", needs_labels=False) == "unlabeled"
    assert pretraining_split("stl10", needs_labels=True) == "train"
    assert pretraining_split("cifar10", needs_labels=False) == "train"
    assert pretraining_split("tiny", needs_labels=False) == "train"


# ----------------------------------------------------------------------------- three stages


@pytest.mark.parametrize("method", ["relationnet", "rotationnet"])
def test_three_stages(stl10_root, tmp_path, capsys, method):
    _, _, stage1_out, test_out = three_stages(
        stage_arguments(stl10_root, tmp_path, dataset="stl10"),
        tmp_path,
        "stl10",
        method,
        capsys,
        stage1_args=[*views_flag(method), "--data_size", "16", "--train_subset", "32"],
        stage2_args=["--train_subset", "40"],
    )
    # Self-supervised methods pretrain on the unlabelled images, as the original code did.
    assert "Training images: 32 (stl10 unlabeled, 96x96, 10 classes)" in stage1_out
    assert "Test accuracy:" in test_out


# ----------------------------------------------------------------------------- finetune augmentation

MEAN = STD = (0.5, 0.5, 0.5)


def test_finetune_needs_cutout_and_builds():
    with pytest.raises(ValueError, match="cutout"):
        build_augmentation(AffineEraseViews(), MEAN, STD)
    aug = build_augmentation(AffineEraseViews(), MEAN, STD, padding=12, cutout=0.111)
    assert isinstance(aug, FinetuneAugmentation) and aug.cutout == 0.111
    images = torch.randint(0, 256, (64, 3, 40, 24), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    out = aug(images, torch.Generator().manual_seed(1))
    assert out.shape == images.shape and out.dtype == torch.float32 and torch.isfinite(out).all()
    assert torch.equal(out, aug(images, torch.Generator().manual_seed(1)))
    assert not torch.equal(out, aug(images, torch.Generator().manual_seed(2)))
    assert aug(images[:0], torch.Generator()).shape == (0, 3, 40, 24)


@pytest.mark.parametrize("size", [(96, 96), (40, 64)])
def test_affine_matches_torchvision(size):
    """The batched warp equals torchvision's tensor affine (fill 0) on the whole image.

    Tolerance 1e-4: both sample at float32 grid coordinates computed in a different order
    (~1e-5 px apart); on images in [0, 1] with neighbour differences up to 1 that moves a
    value by at most ~1e-5. The largest difference seen was 2.5e-5.
    """
    x = torch.rand(6, 3, *size, generator=torch.Generator().manual_seed(0))
    params = torch.tensor(
        [
            [0, 0, 0, 1, 0],
            [12.5, 3, -5, 1.05, 7],
            [-17.9, -9, 9, 0.92, -9.5],
            [18, 0, 0, 1.1, 10],
            [90, 1, 2, 1, 0],
            [-3, 10, -10, 0.9, 45],
        ],
        dtype=torch.float64,
    )
    out = affine(x, params)
    for k, (angle, tx, ty, scale, shear) in enumerate(params.tolist()):
        expected = TF.affine(
            x[k],
            angle,
            [int(tx), int(ty)],
            scale,
            [shear, 0.0],
            interpolation=T.InterpolationMode.BILINEAR,
            fill=[0.0] * 3,
        )
        torch.testing.assert_close(out[k], expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("size", [(96, 96), (40, 64)])
def test_affine_parameters_follow_torchvision(size):
    height, width = size
    n = 20000
    ours = random_affine_params(n, height, width, torch.Generator().manual_seed(0))
    with torch.random.fork_rng():
        torch.manual_seed(0)
        draws = [
            T.RandomAffine.get_params([-18.0, 18.0], [0.1, 0.1], [0.9, 1.1], [-10.0, 10.0], [width, height])
            for _ in range(n)
        ]
    theirs = torch.tensor([[a, tx, ty, s, sx] for a, (tx, ty), s, (sx, sy) in draws], dtype=torch.float64)
    assert all(sy == 0.0 for *_, (_, sy) in draws)  # a single shear number is an x-shear only
    # Whole-pixel translations over the same values (round half to even of U(-0.1 size, 0.1 size)).
    for column in (1, 2):
        assert set(ours[:, column].tolist()) == set(theirs[:, column].tolist())
    assert (ours[:, 1].abs().max(), ours[:, 2].abs().max()) == (round(0.1 * width), round(0.1 * height))
    # Mean, variance and mean |value| of each parameter within 4.5 standard errors.
    for stat in (lambda p: p, lambda p: (p - p.mean(0)).square(), lambda p: p.abs()):
        a, b = stat(ours), stat(theirs)
        se = ((a.var(0) + b.var(0)) / n).sqrt()
        assert ((a.mean(0) - b.mean(0)).abs() <= 4.5 * se).all(), (a.mean(0), b.mean(0), se)


@pytest.mark.parametrize(
    "size,scale",
    [((96, 96), 0.111), ((32, 32), 0.25), ((32, 32), 0.0625), ((64, 64), 0.3), ((40, 24), 0.111), ((32, 32), 1.0)],
)
def test_erasing_box_side_is_torchvision(size, scale):
    image = torch.zeros(3, *size)
    top, left, h, w, value = T.RandomErasing.get_params(image, scale=(scale, scale), ratio=(1.0, 1.0), value=[0])
    expected = 0 if value is image else h  # no box fits: torchvision returns the image itself
    assert erasing_side(*size, scale) == expected
    assert value is image or h == w


def test_erasing_boxes_are_uniform_squares_of_zeros():
    """On constant images every erased output holds one side x side square of exact zeros,
    at a top-left corner uniform over all positions; about half the images are erased."""
    n, height, width, cutout = 4000, 40, 30, 0.25
    aug = FinetuneAugmentation(MEAN, STD, cutout)
    aug.affine_p = 0.0  # the warp would fade the borders; erasing is what is tested here
    out = aug(torch.full((n, 3, height, width), 200, dtype=torch.uint8), torch.Generator().manual_seed(0))
    side = erasing_side(height, width, cutout)
    assert side == round(math.sqrt(height * width * cutout)) == 17
    zero = out == 0
    assert torch.equal(zero[:, 0], zero[:, 1]) and torch.equal(zero[:, 0], zero[:, 2])
    zero = zero[:, 0]
    erased = zero.flatten(1).any(1)
    assert abs(erased.double().mean().item() - 0.5) < 4 * math.sqrt(0.25 / n)
    rows, cols = zero.any(2)[erased], zero.any(1)[erased]
    top, left = rows.double().argmax(1).double(), cols.double().argmax(1).double()
    assert (rows.sum(1) == side).all() and (cols.sum(1) == side).all()
    assert (zero[erased].flatten(1).sum(1) == side * side).all()  # one full square each
    for corner, positions in ((top, height - side + 1), (left, width - side + 1)):
        assert set(corner.long().tolist()) == set(range(positions))
        expected_sd = math.sqrt((positions**2 - 1) / 12)  # discrete uniform
        assert abs(corner.mean().item() - (positions - 1) / 2) < 4 * expected_sd / math.sqrt(len(corner))
    assert (out[~zero.unsqueeze(1).expand_as(out)] == (200 / 255 - 0.5) / 0.5).all()


def _stl_images(stl10_root, n=150):
    return load_dataset("stl10", "train", stl10_root, download=False).images[:n]


def _summary(out: torch.Tensor, source: torch.Tensor, side: int) -> dict:
    """{statistic: (value, standard error)} of finetune outputs of `source` (normalised with 0.5/0.5)."""
    plain = build_augmentation(NormalisedViews(), MEAN, STD)(source, torch.Generator())
    zero = (out == 0).all(1)  # erased pixels: exact 0 after Normalize, which uint8 values never give
    erased = zero.flatten(1).sum(1) >= side * side

    def untouched(reference):  # equal to the (flipped) source wherever not erased
        return ((out == reference) | zero.unsqueeze(1)).flatten(1).all(1)

    same, mirrored = untouched(plain), untouched(plain.flip(-1))
    warped = ~(same | mirrored)
    fill = (out == -1).all(1).flatten(1).double().mean(1)  # raw 0: the warp's fill (and black pixels)
    top = zero.any(2).double().argmax(1)[erased]
    left = zero.any(1).double().argmax(1)[erased]

    def mean_se(values):
        if len(values) < 2:
            return math.nan, math.nan
        values = values.double()
        return values.mean().item(), values.std().item() / math.sqrt(len(values))

    return {
        "erased": mean_se(erased),
        "warped": mean_se(warped),
        "flipped, not warped": mean_se(mirrored & ~same),
        "fill fraction if warped": mean_se(fill[warped]),
        "box top": mean_se(top),
        "box left": mean_se(left),
        "image mean": mean_se(out.mean((1, 2, 3))),
        "image std": mean_se(out.std((1, 2, 3))),
    }


def _disagreements(candidate: dict, reference: dict, z: float = 4.0) -> dict:
    """{statistic: z-value} of the statistics more than z standard errors apart (or undefined)."""
    out = {}
    for name, (value, se) in candidate.items():
        difference, error = value - reference[name][0], math.hypot(se, reference[name][1])
        if not abs(difference) <= z * error:  # also catches NaN: a statistic with no samples
            out[name] = round(difference / error, 1)
    return out


def test_finetune_matches_the_torchvision_pipeline_in_distribution(stl10_root):
    """300 samples (150 STL-format images twice) against torchvision's per-image PIL pipeline.

    8 statistics at z = 4 (two-sided p = 6e-5 each): a false alarm for a correct pipeline
    has odds under 1 in 1,000. Systematic differences are small against the standard
    errors: PIL warps uint8 images with its own bilinear rule (half a pixel apart from the
    tensor rule, with a slightly wider exactly-black border); over seeds 0-3 the largest
    |z| was 1.5. Wrong pipelines (always warped; never erased) give |z| > 9 and are
    rejected below, so the comparison can fail. The warp's geometry is checked exactly
    and with 20,000 parameter draws in the tests above.
    """
    source = _stl_images(stl10_root).repeat(2, 1, 1, 1)
    side = erasing_side(96, 96, 0.111)
    pipeline = T.Compose(
        [
            T.RandomHorizontalFlip(0.5),
            T.RandomApply(
                [
                    T.RandomAffine(
                        18,
                        translate=(0.1, 0.1),
                        scale=(0.9, 1.1),
                        shear=10,
                        interpolation=T.InterpolationMode.BILINEAR,
                        fill=0,
                    )
                ],
                p=0.5,
            ),
            T.ToTensor(),
            T.Normalize(MEAN, STD),
            T.RandomErasing(p=0.5, scale=(0.111, 0.111), ratio=(1.0, 1.0), value=0),
        ]
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        reference = _summary(
            torch.stack([pipeline(Image.fromarray(image)) for image in source.permute(0, 2, 3, 1).numpy()]),
            source,
            side,
        )
    ours = build_augmentation(AffineEraseViews(), MEAN, STD, cutout=0.111)
    assert _disagreements(_summary(ours(source, torch.Generator().manual_seed(0)), source, side), reference) == {}

    always_warped = FinetuneAugmentation(MEAN, STD, 0.111)
    always_warped.affine_p = 1.0
    never_erased = FinetuneAugmentation(MEAN, STD, 0.111)
    never_erased.erasing_p = 0.0
    for wrong in (always_warped, never_erased):
        summary = _summary(wrong(source, torch.Generator().manual_seed(0)), source, side)
        assert _disagreements(summary, reference)
