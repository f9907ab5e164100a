"""Helpers every test module shares: data written in the official on-disk formats, the
reference tensors, stage runs in-process and a small engine over a data set.

* `write_cifar10` / `write_cifar100` (and the STL-10, tiny-ImageNet, SlimageNet
  and image-folder writers) write real-format files whose images are learnable (each class
  has its own colour and stripe pattern, plus noise), so a classifier trained on them beats
  chance.
* `GOLDEN`: `tests/golden`, tensors of the original code, relic-pytorch and solo-learn
  (`modern_golden` loads solo-learn's).
* `run_stage`, `stage_arguments`, `three_stages`: stage scripts run as their
  command lines would; `load` reads a checkpoint.
* `make_engine`, `read_log`: an engine over a data set, and its CSV log;
  `interrupt_at` stops an engine inside an epoch (for resume tests).
* `planned_grid`: a one-run grid as `reproduce.py` plans it, run by no child.

The pytest fixtures built from these are in `tests/conftest.py`.
"""

from __future__ import annotations

import csv
import io
import pickle
import signal
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from datasets.spec import Download
from experiments.grid import Grid
from experiments.grid_cli import grid_arguments, grid_parser
from experiments.grid_plan import plan
from experiments.parallel import LiveLines

REPO = Path(__file__).resolve().parents[1]
#: The shared folder next to the repository (holds data/ where available).
SHARED = REPO.parent / "shared"
#: Reference tensors, copied into the repository so a clone without `../shared` has them.
GOLDEN = REPO / "tests" / "golden"


SHARED_CIFAR10 = SHARED / "data" / "cifar-10-batches-py"
HAS_SHARED_CIFAR10 = (SHARED_CIFAR10 / "test_batch").is_file()


CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
_SIDE = 32


def class_images(labels: np.ndarray, num_classes: int, rng: np.random.Generator, side: int = _SIDE) -> np.ndarray:
    """uint8 (N, 3, side, side) images: per-class colour + per-class stripes + Gaussian noise.

    The class appearance depends only on the class index (not on `rng`), so train and
    test images of a class look alike; `rng` only draws the noise.
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
    """`n` labels, as equal per class as possible, shuffled."""
    return rng.permutation(np.arange(n) % num_classes).astype(np.int64)


def _dump(obj: dict, path: Path) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_cifar10(root, n_train_per_batch: int, n_test: int, batches: int = 5, seed: int = 0) -> Path:
    """Write `<root>/cifar-10-batches-py` in the official python-pickle format; return `root`.

    Files: `data_batch_1..<batches>` (`n_train_per_batch` images each), `test_batch`
    (`n_test`), `batches.meta`. Each batch is a protocol-2 dict with `batch_label`,
    `labels` (list of int), `data` (uint8 (N, 3072), R then G then B planes) and
    `filenames`.
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
    _dump(
        {"num_cases_per_batch": n_train_per_batch, "label_names": CIFAR10_CLASSES, "num_vis": 3072},
        folder / "batches.meta",
    )
    return root


def write_cifar10_excerpt(root, source: Path, n_train: int, n_test: int) -> Path:
    """Write `<root>/cifar-10-batches-py` in the official format with the first `n_train`
    images of `source`'s first training batch and its first `n_test` test images (real
    images, few enough for a quick stage run); return `root`."""
    root = Path(root)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    for name, count, label in (
        ("data_batch_1", n_train, "training batch 1 of 1"),
        ("test_batch", n_test, "testing batch 1 of 1"),
    ):
        with open(source / name, "rb") as handle:
            batch = pickle.load(handle, encoding="latin1")
        excerpt = {
            "batch_label": label,
            "labels": batch["labels"][:count],
            "data": batch["data"][:count],
            "filenames": batch["filenames"][:count],
        }
        _dump(excerpt, folder / name)
    with open(source / "batches.meta", "rb") as handle:
        _dump(pickle.load(handle, encoding="latin1"), folder / "batches.meta")
    return root


#: A fixed fine -> coarse mapping for written CIFAR-100 data (5 fine classes per superclass,
#: deliberately not `fine // 5` so that tests can tell the two label sets apart).
FINE_TO_COARSE = np.random.default_rng(7).permutation(100) % 20


def write_cifar100(root, n_train: int, n_test: int, seed: int = 0) -> Path:
    """Write `<root>/cifar-100-python/{train,test,meta}` in the official format; return `root`.

    `train`/`test` are protocol-2 dicts with `filenames`, `batch_label`,
    `fine_labels`, `coarse_labels` and `data`; `meta` has `fine_label_names` and
    `coarse_label_names`. Coarse labels follow `FINE_TO_COARSE`.
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
        {
            "fine_label_names": [f"fine{c:02d}" for c in range(100)],
            "coarse_label_names": [f"coarse{c:02d}" for c in range(20)],
        },
        folder / "meta",
    )
    return root


def run_stage(module, argv) -> None:
    """Run a stage script in this process as its command line would (errors -> SystemExit)."""
    from experiments.stage import run_main

    run_main(lambda: module.main(argv))


def views_flag(method: str, K: int = 2) -> list[str]:
    """`--K K` for relationnet, nothing for the others (which refuse the flag)."""
    return ["--K", str(K)] if method == "relationnet" else []


def stage_arguments(root, out, dataset: str = "cifar10", backbone: str = "conv4", seed: int = 1) -> list[str]:
    """Flags every stage takes: data root, output folder, data set, backbone, seed, CPU, offline."""
    return [
        "--data_root",
        str(root),
        "--checkpoint_dir",
        str(out),
        "--dataset",
        dataset,
        "--backbone",
        backbone,
        "--seed",
        str(seed),
        "--no_download",
        "--device",
        "cpu",
    ]


def linked_shared_root(root: Path, shared_folder: Path) -> Path:
    """`root` holding a link to a data set folder of the shared sample (read only)."""
    try:
        (root / shared_folder.name).symlink_to(shared_folder, target_is_directory=True)
        return root
    except OSError:  # no symlinks on this file system: use the shared data root itself
        return SHARED / "data"


def write_image_folder(
    root, classes, n_train: int, n_test: int = 0, sizes=((32, 32),), ext: str = "png", modes=("RGB",), seed: int = 0
) -> Path:
    """Write an ImageFolder tree of real image files; return `root`.

    `<root>/train/<class>/<class>_<i>.<ext>` (`n_train` per class) and
    `<root>/test/<class>/...` (`n_test` per class, none when 0); with `classes=None`
    the `n_train` images go directly into `<root>/train/` (unlabelled). Images follow
    `class_images` (colour by position in `classes`, so learnable); image `i`
    of a class has size `sizes[i % len(sizes)]` (w, h) and PIL mode `modes[i % len(modes)]`.
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
    """Write `<root>/SlimageNet64/{train,test}/<wnid>/*.png` (64x64, ImageNet-style class ids); return `root`."""
    wnids = [f"n{1440764 + 97 * c:08d}" for c in range(num_classes)]
    write_image_folder(Path(root) / "SlimageNet64", wnids, n_train, n_test, sizes=((64, 64),), seed=seed)
    return Path(root)


SHARED_STL10 = SHARED / "data" / "stl10_binary"
HAS_SHARED_STL10 = (SHARED_STL10 / "unlabeled_X.bin").is_file()
SHARED_TINY = SHARED / "data" / "tiny-imagenet-200"
HAS_SHARED_TINY = (SHARED_TINY / "val" / "val_annotations.txt").is_file()


def write_stl10(root, n_train: int, n_test: int, n_unlabeled: int, seed: int = 0) -> Path:
    """Write `<root>/stl10_binary` in the official binary format; return `root`.

    `{train,test,unlabeled}_X.bin`: raw uint8 images, 3x96x96 each, every channel stored
    column-major; `{train,test}_y.bin`: one uint8 label 1..10 per image;
    `class_names.txt`. Images follow `class_images` (learnable); the unlabelled
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
    """Write `<root>/tiny-imagenet-200` in the official layout; return `root`.

    `wnids.txt` lists `classes` ImageNet-style ids in shuffled order (the label of a
    class is its position among the *sorted* ids); `train/<wnid>/images/<wnid>_<i>.JPEG`
    plus `<wnid>_boxes.txt`; `val/images/val_<i>.JPEG` (all classes mixed) listed in
    `val/val_annotations.txt` (file, wnid, box; tab-separated). Images are 64x64 JPEGs
    following `class_images`; every 4th one (train and val) is a grayscale JPEG.
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
            "".join(f"{wnid}_{i}.JPEG\t0\t0\t63\t63\n" for i in range(per_class_train))
        )
    (folder / "val" / "images").mkdir(parents=True)
    val_labels = rng.permutation(np.repeat(np.arange(classes), per_class_val))
    rows = []
    for i, (label, array) in enumerate(zip(val_labels, class_images(val_labels, classes, rng, side=64))):
        save(array, folder / "val" / "images" / f"val_{i}.JPEG", gray=i % 4 == 3)
        rows.append(f"val_{i}.JPEG\t{wnids[label]}\t0\t0\t63\t63\n")
    (folder / "val" / "val_annotations.txt").write_text("".join(rows))
    return Path(root)


def serve_download(monkeypatch, module, record: str, url: str, md5: str | None = None) -> None:
    """Make the loaders of `module` fetch data set `record` (e.g. `"CIFAR10"`) from `url`,
    checked against `md5` (None: the checksum it has now)."""
    spec = getattr(module, record)
    monkeypatch.setattr(module, record, replace(spec, download=Download(url, md5 or spec.download.md5)))


def make_engine(method_name, data, folder, seed=1, epochs=3, batch=32, plan_options=None, **options):
    """An engine training method `method_name` (its config's fields `options`; relationnet with
    K 4 unless given) on Conv-4 over `data`, logging to `folder/log.csv` and saving
    `folder/epoch_<E>.tar`; `plan_options` go to the TrainingPlan (precision, compile, ...)."""
    from backbones import build_backbone
    from methods import METHODS
    from utils.seeds import seed_everything

    seed_everything(seed)
    if method_name == "relationnet":
        options = {"K": 4, **options}
    method_class = METHODS[method_name]
    method = method_class(build_backbone("conv4"), data.num_classes, method_class.Config(**options))
    return engine_for(method, data, folder, seed, epochs, batch, plan_options)


def engine_for(method, data, folder, seed=1, epochs=3, batch=32, plan_options=None, checkpoints=True):
    """An engine training the built `method` on `data` on the CPU (see make_engine)."""
    from engine.loop import Engine
    from engine.plan import TrainingPlan

    plan = TrainingPlan(
        epochs=epochs,
        batch_size=batch,
        seed=seed,
        log_path=folder / "log.csv",
        checkpoint_paths=lambda e: [folder / f"epoch_{e}.tar"] if checkpoints else [],
        extra_state={"seed": seed},
        drop_last=method.drop_last,
        **(plan_options or {}),
    )
    return Engine(method, data, plan, torch.device("cpu"))


def interrupt_at(engine, stop_step: int) -> None:
    """Make the engine receive SIGINT after step `stop_step` of its first epoch."""
    requested = engine.stop_requested

    def stop_requested(step):
        if step == stop_step and not engine.stop.received:
            engine.stop.received = signal.SIGINT
        return requested(step)

    engine.stop_requested = stop_requested


def read_log(path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def load(path):
    return torch.load(path, weights_only=True)


def modern_golden() -> dict:
    """solo-learn's loss values on fixed inputs, by method (`tests/golden/modern.pt`; its
    layout is in `tests/golden/README.md`)."""
    return load(GOLDEN / "modern.pt")


def three_stages(args, out, dataset, method, capsys, stage1_args=(), stage2_args=(), backbone="conv4"):
    """One epoch of stage 1, one of linear evaluation, then test.py, with `args` common to all
    three (their `--backbone` is `backbone`); returns (stage-1 file, stage-2 file, stage-1
    output, test output)."""
    from experiments import linear_evaluation, pretraining, testing

    run_stage(pretraining, args + ["--method", method, "--epochs", "1", *stage1_args])
    stage1_out = capsys.readouterr().out
    folder = out / method / dataset
    header = f"{method}_{dataset}_{backbone}_seed_1_epoch_1"
    run_stage(linear_evaluation, args + ["--checkpoint", str(folder / f"{header}.tar"), "--epochs", "1", *stage2_args])
    capsys.readouterr()
    run_stage(testing, args + ["--checkpoint", str(folder / f"{header}_linear_evaluation.tar")])
    return folder / f"{header}.tar", folder / f"{header}_linear_evaluation.tar", stage1_out, capsys.readouterr().out


def record_feature_inputs(monkeypatch) -> list[tuple[str, tuple, tuple]]:
    """Record the (stage module, mean, std) of every data set stages 2 and 3 compute backbone
    features of: how they feed the backbone its images. Returns the list they fill."""
    import experiments.linear_evaluation
    import experiments.testing

    seen: list[tuple[str, tuple, tuple]] = []
    for module in (experiments.linear_evaluation, experiments.testing):
        features = module.extract_features

        def recording(backbone, data, *args, features=features, name=module.__name__, **kwargs):
            seen.append((name, data.mean, data.std))
            return features(backbone, data, *args, **kwargs)

        monkeypatch.setattr(module, "extract_features", recording)
    return seen


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and "\r" not in text, text
    return text


def pixels(path) -> torch.Tensor:
    """A file decoded independently of the loader: uint8 (3, H, W), RGB."""
    from PIL import Image

    with Image.open(path) as img:
        return torch.from_numpy(np.asarray(img.convert("RGB")).transpose(2, 0, 1).copy())


def refuse_to_decode(*args, **kwargs):
    """Stands in for PIL.Image.open where a load must come from the cache."""
    raise AssertionError("decoded an image although the cache is up to date")


def first_file(folder):
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))[0]


def parse_stage1(method: str, *flags: str):
    from experiments.cli import stage1_parser

    return stage1_parser().parse_args(["--method", method, *flags])


def build_method(method_name, seed=1, *flags):
    """A seeded method on a conv4 backbone, its flags parsed as train_unsupervised.py does."""
    from backbones import build_backbone
    from experiments.options import stage1_config
    from methods import METHODS
    from utils.seeds import seed_everything

    seed_everything(seed)
    args = parse_stage1(method_name, *flags)
    method_class = METHODS[method_name]
    return method_class(build_backbone("conv4"), 10, stage1_config(method_class, args), lr=args.lr)


def train_method(method, data, folder, seed=1, epochs=1, batch=32):
    """Train `method` through the engine; returns the rows of its per-epoch log."""
    engine_for(method, data, folder, seed, epochs, batch, checkpoints=False).fit()
    return read_log(folder / "log.csv")


def cifar10_subset(root, n):
    from datasets import load_dataset

    return load_dataset("cifar10", "train", root, download=False).balanced_subset(n, seed=0)


def run_script(script, *argv):
    import subprocess
    import sys

    return subprocess.run([sys.executable, script, *argv], cwd=REPO, capture_output=True, text=True, timeout=300)


def three_stage_commands(method, data_root, out):
    """Stage 1 (one epoch), linear evaluation (one epoch) and test.py as command lines;
    returns the stage-1 checkpoint."""
    common = [
        "--data_root",
        str(data_root),
        "--checkpoint_dir",
        str(out),
        "--no_download",
        "--seed",
        "1",
        "--device",
        "cpu",
    ]
    header = f"{method}_cifar10_conv4_seed_1"
    folder = out / method / "cifar10"
    stage1 = run_script("train_unsupervised.py", "--method", method, "--epochs", "1", "--data_size", "64", *common)
    assert stage1.returncode == 0, stage1.stderr
    assert {f"{header}_epoch_1.tar", f"{header}_last.tar", f"log_{header}.csv", f"config_{header}.json"} <= {
        path.name for path in folder.iterdir()
    }
    checkpoint = folder / f"{header}_epoch_1.tar"
    stage2 = run_script("train_linear_evaluation.py", "--checkpoint", str(checkpoint), "--epochs", "1", *common)
    assert stage2.returncode == 0, stage2.stderr
    evaluated = folder / f"{header}_epoch_1_linear_evaluation.tar"
    assert evaluated.exists()
    stage3 = run_script("test.py", "--checkpoint", str(evaluated), *common)
    assert stage3.returncode == 0, stage3.stderr
    assert "Test accuracy:" in stage3.stdout
    return torch.load(checkpoint, weights_only=True)


def save_original_checkpoint(path, backbone, head_key: str, head) -> None:
    """A checkpoint as the original code writes it: its backbone and head modules under their
    keys, after one step of Adam with the original's two parameter groups, nothing else."""
    optimizer = torch.optim.Adam(
        [{"params": backbone.parameters(), "lr": 1e-3}, {"params": head.parameters(), "lr": 1e-3}]
    )
    head(backbone(torch.randn(4, 3, 32, 32))).sum().backward()
    optimizer.step()
    torch.save(
        {head_key: head.state_dict(), "backbone": backbone.state_dict(), "optimizer": optimizer.state_dict()}, path
    )


def planned_grid(root, out, *flags) -> Grid:
    """A one-run grid of randomweights as reproduce.main plans it, its events in `grid.live.stream`."""
    args = grid_arguments(
        grid_parser().parse_args(
            [
                "--study",
                "cifar10",
                "--methods",
                "randomweights",
                "--seeds",
                "1",
                "--data_root",
                str(root),
                "--out",
                str(out),
                "--device",
                "cpu",
                "--jobs",
                "1",
                *flags,
            ]
        )
    )
    return Grid(args, plan(args), live=LiveLines(io.StringIO()))
