#!/usr/bin/env python
"""Training speed and memory of this suite against the original code's path, on one machine.

    .venv/bin/python benchmarks/benchmark.py                     # every configuration
    .venv/bin/python benchmarks/benchmark.py --configs relationnet-conv4 --steps 20
    .venv/bin/python benchmarks/benchmark.py --quick             # a smoke run: tiny sizes

For each configuration the reference (`benchmarks/reference.py`: the original's PIL
transforms in a DataLoader with 2 workers, the Python pair loop, eager float32) and this
suite (its Engine, methods and linear evaluation) run one after the other, each in a fresh
subprocess. Each prints one line: images per second, seconds per CIFAR-10 epoch of 50,000
images, peak memory, speed-up; the last line is a summary. The rows also go to a CSV
(--csv). Timings on a shared machine are noisy: compare the ratios of one run, taken on an
otherwise idle machine. Four checks follow, a line each (not in the CSV): two stage-1 runs
at once against one alone with libgomp's default waiting and the stage scripts' short spin
(concurrent-runs), the peak memory of relationnet-conv4 on the original's path, eager and
compiled (compile-memory), Deep InfoMax steps with the fast and the original local
discriminator (dim-ratio), and reproduce.py's cifar10 study with --jobs 1 and 2
(grid-throughput).

"images" are training images: a relationnet step of batch 64 at K 32 counts 64 images
(2,048 views). deepcluster-conv4 times whole epochs over a subset, as its clustering comes
once per epoch, and counts their images; its reference needs scikit-learn (skipped without).
Linear evaluation counts 100 epochs of 50,000 images: the reference runs the frozen backbone
on every batch of every epoch; this suite computes the features once.
Peak memory is the training process's peak resident set (ru_maxrss) plus the largest
private memory its child processes held together (the reference's two loader workers;
torch.compile's compiler workers): forked children share the parent's pages, which count once.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import itertools
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

CIFAR10_EPOCH = 50_000
LINEVAL_EPOCHS = 100
RESULT_PREFIX = "RESULT "
DEFAULT_DATA_ROOT = os.environ.get("SSL_DATA_ROOT", str(REPO.parent / "shared" / "data"))


@dataclass(frozen=True)
class Config:
    kind: str  # relationnet, simclr, relic, deepinfomax, a two-view baseline, lineval, or accuracy (fp32 against bf16)
    backbone: str
    batch: int
    views: int = 1
    options: tuple = ()  # this suite's flags for this configuration
    target: float = 0.0  # speed-up the issue asks for (0: none)
    steps: int = 12  # measured steps per side (accuracy: training steps of each run; deepcluster: epochs)
    warmup: int = 3  # unmeasured steps first (compiling happens there)
    images: int = 0  # deepcluster: the balanced subset whose whole epochs are timed
    clusters: int = 0  # deepcluster: k-means clusters


TWO_VIEW_BASELINES = ("byol", "simsiam", "barlowtwins", "vicreg")
CONFIGS = {
    "relationnet-conv4": Config("relationnet", "conv4", 64, 32, target=2.5),
    "relationnet-resnet32": Config(
        "relationnet", "resnet32", 64, 32, ("--precision", "bf16", "--compile"), 2.5, steps=4, warmup=2
    ),
    "simclr-conv4": Config("simclr", "conv4", 128, 2),
    # relic-pytorch's CIFAR-10 run: 2 global + 4 local views, batch 256, ResNet-18 (CIFAR stem).
    "relic-resnet18": Config(
        "relic", "resnet18", 256, 6, ("--precision", "bf16", "--compile", "--channels_last"), 3.0, steps=3, warmup=2
    ),
    "deepinfomax-conv4": Config("deepinfomax", "conv4", 128),
    # DeepCluster's clustering (feature pass, PCA, k-means) costs per epoch, not per step:
    # it times one epoch over a subset, after one, with 10 x CIFAR-10's classes as clusters.
    "deepcluster-conv4": Config("deepcluster", "conv4", 128, steps=1, warmup=1, images=2560, clusters=100),
    # The two-view baselines with solo-learn's CIFAR settings (batch 256, ResNet-18 with the CIFAR stem).
    **{f"{method}-resnet18": Config(method, "resnet18", 256, 2, steps=3, warmup=2) for method in TWO_VIEW_BASELINES},
    "lineval-conv4": Config("lineval", "conv4", 128, target=20.0),
    # A short relationnet run in float32 and in bf16 + compile, each scored by linear evaluation.
    "accuracy-resnet32": Config("accuracy", "resnet32", 64, 4, ("--precision", "bf16", "--compile"), steps=100),
}
# --quick: the same code paths at sizes that run in seconds (a smoke test, not a measurement).
QUICK = {
    "relationnet": dict(batch=16, views=4),
    "simclr": dict(batch=32),
    "relic": dict(batch=8),
    "deepinfomax": dict(batch=16),
    "deepcluster": dict(batch=32, images=256, clusters=10, steps=1),
    "lineval": dict(batch=64),
    "accuracy": dict(batch=16, views=2),
    **{method: dict(batch=8) for method in TWO_VIEW_BASELINES},
}
QUICK_STEPS = dict(steps=2, warmup=1)

COLUMNS = [
    "config",
    "kind",
    "backbone",
    "batch",
    "views",
    "options",
    "data",
    "steps",
    "epoch_images",
    "clusters",
    "ref_images_per_s",
    "ours_images_per_s",
    "speedup",
    "target_speedup",
    "ref_epoch_s",
    "ours_epoch_s",
    "ref_peak_mb",
    "ours_peak_mb",
    "ref_main_peak_mb",
    "ours_main_peak_mb",
    "ref_children_mb",
    "ours_children_mb",
    "ref_gpu_peak_mb",
    "ours_gpu_peak_mb",
    "fp32_accuracy",
    "ours_accuracy",
    "skipped",
    "error",
]


# ------------------------------------------------------------------------------------------
# Workers: one side of one configuration, in a fresh process.


@dataclass
class Measurement:
    data: str
    seconds: float = 0.0  # for `images` training images (or the 100-epoch protocol)
    images: int = 0
    peak_rss_mb: float = 0.0  # the measuring process's own peak
    children_mb: float = 0.0  # the most private memory its child processes held together
    gpu_peak_mb: float | None = None
    accuracies: dict = field(default_factory=dict)
    skipped: str = ""  # why this side did not run, when it could not


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class ChildMemory(threading.Thread):
    """Samples the private memory (Private_Clean + Private_Dirty of smaps_rollup) of this
    process's descendants twice a second and keeps the largest total (0 where /proc lacks it)."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak_kib = 0

    def run(self) -> None:
        while True:
            self.sample()
            time.sleep(0.5)

    def sample(self) -> None:
        self.peak_kib = max(self.peak_kib, sum(map(private_kib, descendants(os.getpid()))))

    @property
    def peak_mb(self) -> float:
        return self.peak_kib / 1024


def descendants(root: int) -> list[int]:
    parents = {}
    for name in os.listdir("/proc"):
        try:
            with open(f"/proc/{name}/stat") as handle:
                parents[int(name)] = int(handle.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    found, frontier = [], [root]
    while frontier:
        children = [pid for pid, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def private_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            private = [line for line in handle if line.startswith(("Private_Clean:", "Private_Dirty:"))]
        return sum(int(line.split()[1]) for line in private)
    except OSError:
        return 0


def load_images(data_root: str, quick: bool, subset: int = 0):
    """CIFAR-10's training split, or random CIFAR-sized images when it is not there; a
    balanced `subset` of it when given."""
    import torch

    from datasets import DatasetError, ImageSet, load_dataset

    try:
        data = load_dataset("cifar10", "train", data_root, download=False)
        description = f"CIFAR-10 train from {data_root} ({len(data)} images)"
    except (DatasetError, OSError):
        count = 2048 if quick else CIFAR10_EPOCH
        images = torch.randint(
            0, 256, (count, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
        )
        data = ImageSet(
            "cifar10",
            "train",
            images,
            torch.arange(count) % 10,
            10,
            (0.491, 0.482, 0.447),
            (0.247, 0.243, 0.262),
            4,
            0.25,
        )
        description = f"random uint8 images ({count}, 3, 32, 32): CIFAR-10 not found in {data_root}"
    if quick:
        data = data.balanced_subset(512, seed=0)
    if subset:
        data = data.balanced_subset(subset, seed=0)
    return data, description


def images_per_unit(config: Config, data) -> int:
    """Training images of one timed unit: a step's batch, or deepcluster's whole epoch."""
    return len(data) if config.kind == "deepcluster" else config.batch


def synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gpu_peak_mb(device) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def reference_worker(config: Config, args, children: ChildMemory) -> Measurement:
    if config.kind == "deepcluster" and importlib.util.find_spec("sklearn") is None:
        # Its PCA and k-means are scikit-learn's, which this suite does not require.
        return Measurement("", skipped="needs scikit-learn (pip install scikit-learn)")
    import reference
    import torch

    from backbones import build_backbone, resolve_stem
    from methods.heads import backbone_and_head_adam, mlp_head

    data, description = load_images(args.data_root, args.quick, config.images)
    device = torch.device(args.device)
    images_hwc = data.images.permute(0, 2, 3, 1).contiguous().numpy()  # torchvision's CIFAR layout
    labels = data.labels.numpy()
    mean, std, side, padding, unit = data.mean, data.std, data.side, data.padding, images_per_unit(config, data)
    del data
    torch.manual_seed(0)
    backbone = build_backbone(config.backbone, resolve_stem(config.backbone, "auto", side)).to(device)
    meters = [reference.Meter(), reference.Meter()]
    if config.kind == "lineval":
        dataset = reference.SingleImages(images_hwc, labels, reference.lineval_transform(mean, std))
        backbone.eval()
        classifier = torch.nn.Linear(backbone.feature_size, 10).to(device)
        optimizer = torch.optim.Adam(classifier.parameters(), lr=1e-3)

        def step(batch):
            reference.lineval_step(backbone, classifier, optimizer, batch[0], batch[1], device, meters)
    elif config.kind == "relic":
        dataset = reference.GlobalLocalViews(images_hwc, labels, 2, config.views - 2)
        model = reference.ReLICModel(backbone, backbone.feature_size).to(device)
        optimizer = torch.optim.Adam(
            [*model.online_encoder.parameters(), model.t_prime, model.bias], lr=3e-4, weight_decay=1e-5
        )

        def step(batch):
            reference.relic_step(model, optimizer, batch[0], 2, device, meters)
    elif config.kind == "deepinfomax":
        from methods.deepinfomax import first_layer_channels

        dataset = reference.SingleImages(images_hwc, labels, reference.deepinfomax_transform(mean, std))
        model = reference.DeepInfoMaxModel(backbone, backbone.feature_size, first_layer_channels(backbone)).to(device)
        optimizer = torch.optim.Adam(
            [
                {"params": backbone.parameters(), "lr": 1e-4},
                {"params": [*model.local_d.parameters(), *model.prior_d.parameters()], "lr": 1e-4},
            ]
        )

        def step(batch):
            reference.deepinfomax_step(model, optimizer, batch[0], device, meters)
    elif config.kind == "deepcluster":
        dataset = reference.SingleImages(images_hwc, labels, reference.crop_flip_transform(mean, std, side, padding))
        classifier = mlp_head(backbone.feature_size, config.clusters).to(device)
        optimizer = backbone_and_head_adam(backbone, classifier, 1e-3)
        batches = itertools.count(1)  # a "step" is a whole epoch; its index seeds k-means: repeatable runs

        def step(epoch):
            reference.deepcluster_epoch(
                backbone, classifier, optimizer, dataset, config.clusters, config.batch, device, meters, seed=epoch
            )
    elif config.kind in TWO_VIEW_BASELINES:
        from methods import METHODS

        dataset = reference.TwoViewImages(
            images_hwc, labels, reference.two_view_transforms(config.kind, mean, std, side)
        )
        method = METHODS[config.kind](backbone, 10).to(device)
        method.total_steps = args.warmup + args.steps  # the schedule's length, as on_epoch_start sets it
        steps_done = []

        def step(batch):
            steps_done.append(1)
            reference.two_view_step(method, batch[0], device, meters, len(steps_done))
    else:
        transform = reference.relationnet_transform(mean, std)
        dataset = reference.MultiViewImages(images_hwc, labels, transform, config.views)
        head = (
            reference.relation_head(backbone.feature_size)
            if config.kind == "relationnet"
            else mlp_head(backbone.feature_size, 64)
        ).to(device)
        optimizer = backbone_and_head_adam(backbone, head, 1e-3)
        train_step = reference.relationnet_step if config.kind == "relationnet" else reference.simclr_step

        def step(batch):
            train_step(backbone, head, optimizer, batch[1], device, meters)

    if config.kind != "deepcluster":  # the others time steps of one epoch of the loader
        batches = iter(reference.loader(dataset, config.batch, device))
    for _ in range(args.warmup):
        step(next(batches))
    synchronize(device)
    start = time.perf_counter()
    for _ in range(args.steps):  # the wait for the loader is part of each step, as in training
        step(next(batches))
    synchronize(device)
    seconds = time.perf_counter() - start
    children.sample()  # while the loader workers still live, however short the run
    return Measurement(description, seconds, args.steps * unit, peak_rss_mb(), gpu_peak_mb=gpu_peak_mb(device))


def suite_options(config: Config, args) -> list[str]:
    """This suite's flags: the configuration's, unless the command line names its own."""
    if args.precision or args.compile or args.channels_last:
        options = ["--precision", args.precision or "fp32"]
        options += ["--compile"] * args.compile + ["--channels_last"] * args.channels_last
    else:
        options = list(config.options)
    if args.quick and "--compile" in options:  # compiling takes longer than a quick run
        options.remove("--compile")
    return options


def engine_for(config: Config, data, device, options: list[str], folder: Path, seed: int = 0):
    from backbones import build_backbone, resolve_stem
    from engine.loop import Engine, TrainingPlan
    from methods import METHODS
    from utils.seeds import seed_everything

    parser = argparse.ArgumentParser()
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--channels_last", action="store_true")
    flags = parser.parse_args(options)
    seed_everything(seed)
    name = config.kind if config.kind != "accuracy" else "relationnet"
    options = {
        "relationnet": {"K": config.views},
        "relic": {"local_views": config.views - 2},
        "deepcluster": {"num_clusters": config.clusters},
    }.get(name, {})
    method_class = METHODS[name]
    method = method_class(
        build_backbone(config.backbone, resolve_stem(config.backbone, "auto", data.side)),
        data.num_classes,
        method_class.Config(**options),
    )
    plan = TrainingPlan(
        epochs=1,
        batch_size=config.batch,
        seed=seed,
        log_path=folder / "log.csv",
        checkpoint_paths=lambda epoch: [],
        extra_state={},
        precision=flags.precision,
        compile=flags.compile,
        channels_last=flags.channels_last,
    )
    return Engine(method, data, plan, device)


def run_steps(engine, epoch, count: int, first: int = 0) -> None:
    """`count` steps of the engine's loop (train_step and the metric sums), from step `first`
    of an epoch begun with `engine.begin_epoch`, wrapping around its order."""
    import torch

    order, progress = epoch
    steps = engine.steps_per_epoch(len(order))
    for step in range(first, first + count):
        progress.add(step, engine.train_step(engine.batch_index(order, step % steps)))
    torch.isfinite(progress.loss_sum).item()  # waits for the device, like the end of an epoch


def run_epochs(engine, count: int, first: int = 0) -> None:
    """`count` whole epochs of the engine from epoch `first`: each begins with the method's
    epoch hook (deepcluster's clustering) and ends reading its sums."""
    for epoch in range(first, first + count):
        engine.run_epoch(epoch)


def suite_worker(config: Config, args, children: ChildMemory) -> Measurement:
    import torch

    data, description = load_images(args.data_root, args.quick, config.images)
    device = torch.device(args.device)
    options = suite_options(config, args)
    with tempfile.TemporaryDirectory() as folder:
        if config.kind == "lineval":
            return suite_lineval(config, data, description, device, args)
        if config.kind == "accuracy":
            return suite_accuracy(config, data, description, device, options, Path(folder), args)
        engine = engine_for(config, data, device, options, Path(folder))
        run = (
            partial(run_epochs, engine)
            if config.kind == "deepcluster"
            else partial(run_steps, engine, engine.begin_epoch(0))
        )
        run(args.warmup)  # includes compiling, with --compile
        start = time.perf_counter()
        run(args.steps, first=args.warmup)
        seconds = time.perf_counter() - start
    return Measurement(
        description, seconds, args.steps * images_per_unit(config, data), peak_rss_mb(), gpu_peak_mb=gpu_peak_mb(device)
    )


def linear_evaluation(backbone, train, test, device, epochs: int, seed: int = 0) -> float:
    """This suite's protocol: features once, then `epochs` of the linear layer; test accuracy."""
    import torch

    from backbones.features import extract_features
    from evaluation.linear import score_logits, train_linear_epoch

    features = extract_features(backbone, train, device)
    classifier = torch.nn.Linear(features.shape[1], train.num_classes).to(device)
    optimizer = torch.optim.Adam(classifier.parameters(), lr=1e-3)
    labels = train.labels.to(device)
    for epoch in range(epochs):
        train_linear_epoch(classifier, optimizer, features, labels, 128, seed, epoch)
    if test is None:
        return math.nan
    classifier.eval()
    with torch.no_grad():
        logits = classifier(extract_features(backbone, test, device))
    return score_logits(logits, test.labels.to(device))["accuracy"]


def suite_lineval(config: Config, data, description: str, device, args) -> Measurement:
    import torch

    from backbones import build_backbone, resolve_stem

    torch.manual_seed(0)
    backbone = build_backbone(config.backbone, resolve_stem(config.backbone, "auto", data.side)).to(device)
    epochs = 1 if args.quick else LINEVAL_EPOCHS
    start = time.perf_counter()
    linear_evaluation(backbone, data, None, device, epochs)
    synchronize(device)
    seconds = time.perf_counter() - start
    # Both parts scale with the number of images: report the protocol's time for 50,000.
    per_image = seconds / len(data) / epochs
    return Measurement(
        description,
        per_image * CIFAR10_EPOCH * LINEVAL_EPOCHS,
        CIFAR10_EPOCH * LINEVAL_EPOCHS,
        peak_rss_mb(),
        gpu_peak_mb=gpu_peak_mb(device),
    )


def suite_accuracy(
    config: Config, data, description: str, device, options: list[str], folder: Path, args
) -> Measurement:
    """Train the same short relationnet run in float32 and with `options`, then score each
    backbone by linear evaluation: reduced precision must not cost accuracy."""
    from datasets import DatasetError, load_dataset

    try:
        test = load_dataset("cifar10", "test", args.data_root, download=False)
    except (DatasetError, OSError):
        return Measurement(description + "; accuracy check skipped: it needs the CIFAR-10 test split")
    train = data.balanced_subset(512 if args.quick else 5000, seed=0)
    if args.quick:
        test = test.balanced_subset(200, seed=0)
    steps = args.steps
    accuracies = {}
    for name, flags in (("fp32", []), ("ours", options)):
        engine = engine_for(config, data, device, flags, folder, seed=1)
        run_steps(engine, engine.begin_epoch(0), steps)
        accuracies[name] = linear_evaluation(
            engine.method.backbone, train, test, device, 2 if args.quick else LINEVAL_EPOCHS
        )
    return Measurement(
        f"{description}; {steps} steps of batch {config.batch} at K {config.views}, "
        f"linear evaluation on {len(train)} training and {len(test)} test images",
        peak_rss_mb=peak_rss_mb(),
        accuracies=accuracies,
    )


def configured(name: str, quick: bool) -> Config:
    config = CONFIGS[name]
    return Config(**{**asdict(config), **QUICK_STEPS, **QUICK[config.kind]}) if quick else config


def worker_main(args) -> None:
    if args.worker in ("suite", "dim"):  # as every stage script does first
        from utils.threads import configure_threads

        configure_threads()
        from utils.runtime import tune_allocator

        tune_allocator()
    if args.worker == "dim":
        print(RESULT_PREFIX + json.dumps(dim_worker(args)), flush=True)
        return
    config = configured(args.config, args.quick)
    measure = reference_worker if args.worker == "reference" else suite_worker
    children = ChildMemory()
    children.start()
    measurement = measure(config, args, children)
    measurement.children_mb = children.peak_mb
    print(RESULT_PREFIX + json.dumps(asdict(measurement)), flush=True)


# ------------------------------------------------------------------------------------------
# The driver: runs the workers, prints a line per configuration and writes the CSV.


def run_worker(side: str, name: str, args) -> tuple[Measurement | dict | None, str]:
    """Run a worker in a fresh process: its Measurement (the dim worker: its result's fields)."""
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        side,
        "--config",
        name,
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--device",
        args.device,
        "--data_root",
        args.data_root,
    ]
    command += ["--precision", args.precision] if args.precision else []
    command += ["--compile"] * args.compile + ["--channels_last"] * args.channels_last + ["--quick"] * args.quick
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    for line in reversed(result.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            fields = json.loads(line[len(RESULT_PREFIX) :])
            return (fields if side == "dim" else Measurement(**fields)), ""
    tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
    return None, f"{side} worker failed (status {result.returncode}): {tail}"


def rate(measurement: Measurement | None) -> float | None:
    if measurement is None or not measurement.seconds:
        return None
    return measurement.images / measurement.seconds


def epoch_seconds(images_per_second: float | None) -> float | None:
    """Seconds per 50,000 images (linear evaluation: its 100-epoch protocol's time / 100)."""
    return CIFAR10_EPOCH / images_per_second if images_per_second else None


def row_for(
    name: str,
    config: Config,
    options: list[str],
    steps: int,
    reference: Measurement | None,
    ours: Measurement | None,
    error: str,
) -> dict:
    skipped = f"reference skipped: {reference.skipped}" if reference and reference.skipped else ""
    if skipped:
        reference = None  # it measured nothing
    ref_rate, our_rate = rate(reference), rate(ours)
    speedup = our_rate / ref_rate if ref_rate and our_rate else None
    data = (ours or reference).data if (ours or reference) else ""
    return {
        "config": name,
        "kind": config.kind,
        "backbone": config.backbone,
        "batch": config.batch,
        "views": config.views,
        "options": " ".join(options) or "defaults",
        "data": data,
        "steps": steps,
        "epoch_images": config.images or None,
        "clusters": config.clusters or None,
        "ref_images_per_s": ref_rate,
        "ours_images_per_s": our_rate,
        "speedup": speedup,
        "target_speedup": config.target or None,
        "ref_epoch_s": epoch_seconds(ref_rate),
        "ours_epoch_s": epoch_seconds(our_rate),
        "ref_peak_mb": reference.peak_rss_mb + reference.children_mb if reference else None,
        "ours_peak_mb": ours.peak_rss_mb + ours.children_mb if ours else None,
        "ref_main_peak_mb": reference.peak_rss_mb if reference else None,
        "ours_main_peak_mb": ours.peak_rss_mb if ours else None,
        "ref_children_mb": reference.children_mb if reference else None,
        "ours_children_mb": ours.children_mb if ours else None,
        "ref_gpu_peak_mb": reference.gpu_peak_mb if reference else None,
        "ours_gpu_peak_mb": ours.gpu_peak_mb if ours else None,
        "fp32_accuracy": ours.accuracies.get("fp32") if ours else None,
        "ours_accuracy": ours.accuracies.get("ours") if ours else None,
        "skipped": skipped,
        "error": error,
    }


def number(value, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def describe(row: dict) -> str:
    name = f"{row['config']} (batch {row['batch']}" + (f", K {row['views']}" if row["views"] > 2 else "")
    if row["epoch_images"]:
        name += f", {row['clusters']} clusters, epochs of {row['epoch_images']:,} images"
    name += ")"
    if row["error"]:
        return f"{name}: {row['error']}"
    if row["kind"] == "accuracy":
        if row["fp32_accuracy"] is None:
            return f"{name}: {row['data']}"
        return (
            f"{name}: after {row['steps']} training steps, linear-evaluation accuracy fp32 "
            f"{row['fp32_accuracy']:.2f}%, {row['options']} {row['ours_accuracy']:.2f}% "
            f"({row['ours_accuracy'] - row['fp32_accuracy']:+.2f} points); "
            f"peak memory {number(row['ours_peak_mb'], 0)} MB"
        )
    epoch = "100-epoch protocol / 100" if row["kind"] == "lineval" else "CIFAR-10 epoch"
    skipped = f"; {row['skipped']}" if row["skipped"] else ""
    return (
        f"{name}: {number(row['ref_images_per_s'])} -> {number(row['ours_images_per_s'])} images/s, "
        f"{number(row['speedup'], 2)}x; s per {epoch} {number(row['ref_epoch_s'])} -> "
        f"{number(row['ours_epoch_s'])}; peak memory {number(row['ref_peak_mb'], 0)} -> "
        f"{number(row['ours_peak_mb'], 0)} MB; ours: {row['options']}{skipped}"
    )


def misses(row: dict) -> list[str]:
    """The targets of the issue this row misses."""
    found = []
    if row["error"]:
        return [f"{row['config']} failed"]
    if row["kind"] == "accuracy":
        if row["fp32_accuracy"] is not None and row["ours_accuracy"] < row["fp32_accuracy"] - 1.0:
            found.append(f"{row['config']} loses {row['fp32_accuracy'] - row['ours_accuracy']:.2f} points")
        return found
    if row["target_speedup"] and row["speedup"] < row["target_speedup"]:
        found.append(f"{row['config']} {row['speedup']:.2f}x < {row['target_speedup']}x")
    if row["ref_peak_mb"] is not None and row["ours_peak_mb"] > row["ref_peak_mb"]:
        found.append(f"{row['config']} peak {row['ours_peak_mb']:.0f} > {row['ref_peak_mb']:.0f} MB")
    return found


def summary(rows: list[dict], seconds: float) -> str:
    speedups = [row["speedup"] for row in rows if row["speedup"]]
    mean = math.exp(sum(map(math.log, speedups)) / len(speedups)) if speedups else None
    missed = [miss for row in rows for miss in misses(row)]
    verdict = "every target met" if not missed else "missed: " + "; ".join(missed)
    speed = f", speed-up {min(speedups):.2f}x to {max(speedups):.2f}x (geometric mean {mean:.2f}x)" if speedups else ""
    return f"summary: {len(rows)} configurations in {seconds / 60:.1f} min{speed}; {verdict}"


# ------------------------------------------------------------------------------------------
# Throughput checks: a line each, after the configurations.

OPENMP_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
# libgomp's own waiting when no variable sets it: spin about 3 ms, then sleep. Given
# explicitly, it is the user's choice, which the stage scripts keep: the stages' waiting
# before they chose one themselves (utils/threads.py).
OPENMP_DEFAULT_WAITING = {"GOMP_SPINCOUNT": "300000"}


def dim_worker(args) -> dict:
    """Deep InfoMax steps with the fast local discriminator and with the original's
    computation of the same module, one step each in turn (both see the same load)."""
    import types

    import reference
    import torch

    data, description = load_images(args.data_root, args.quick)
    config = configured("deepinfomax-conv4", args.quick)
    seconds = {"fast": 0.0, "original": 0.0}
    with tempfile.TemporaryDirectory() as folder:
        engine = engine_for(config, data, torch.device(args.device), [], Path(folder))
        local_d = engine.method.discriminators.local_d
        forwards = {
            "fast": local_d.forward,
            "original": types.MethodType(reference.LocalDiscriminator.forward, local_d),
        }
        epoch = engine.begin_epoch(0)
        run_steps(engine, epoch, args.warmup)
        step = args.warmup
        for _ in range(args.steps):
            for name, forward in forwards.items():
                local_d.forward = forward
                start = time.perf_counter()
                run_steps(engine, epoch, 1, first=step)
                seconds[name] += time.perf_counter() - start
                step += 1
    return {"data": description, "batch": config.batch, "steps": args.steps, **seconds}


def dim_ratio(args) -> str:
    measured = argparse.Namespace(
        **{
            **vars(args),
            "steps": args.steps or (2 if args.quick else 6),
            "warmup": 1 if args.warmup is None else args.warmup,
        }
    )
    result, error = run_worker("dim", "deepinfomax-conv4", measured)
    if error:
        return f"dim-ratio: {error}"
    return (
        f"dim-ratio (deepinfomax, Conv-4, batch {result['batch']}, {result['steps']} steps each, alternating): "
        f"{result['original'] / result['steps']:.2f} s per step with the original local discriminator's "
        f"computation -> {result['fast'] / result['steps']:.2f} s, {result['original'] / result['fast']:.2f}x"
    )


def compile_memory(args) -> str:
    """Peak memory of relationnet-conv4 (K 32) on the original's path, eager and compiled."""
    peaks = {}
    for label, side, compiled in (
        ("original's path", "reference", False),
        ("eager", "suite", False),
        ("--compile", "suite", True),
    ):
        measured = argparse.Namespace(
            **{
                **vars(args),
                "compile": compiled,
                "steps": args.steps or 3,
                "warmup": 2 if args.warmup is None else args.warmup,
            }
        )
        measurement, error = run_worker(side, "relationnet-conv4", measured)
        if error:
            return f"compile-memory: {error}"
        peaks[label] = (measurement.peak_rss_mb, measurement.children_mb)
    return "compile-memory (relationnet-conv4, peak MB, process + its child processes): " + "; ".join(
        f"{label} {main + children:,.0f} ({main:,.0f} + {children:,.0f})" for label, (main, children) in peaks.items()
    )


def seconds_and_ratios(times: list[float], alone: float) -> str:
    return " and ".join(f"{t:.1f}" for t in times) + " (" + " and ".join(f"{t / alone:.2f}" for t in times) + "x alone)"


def concurrent_runs(args) -> str:
    """Epoch time of a stage-1 run alone and of each of two simultaneous runs, with libgomp's
    default waiting (the code before) and with the stage scripts' own (utils/threads.py). The
    runs alone alternate twice and the faster of each is kept, as a run alone is what noise
    distorts most."""
    if not (Path(args.data_root) / "cifar-10-batches-py").is_dir():
        return (
            f"concurrent-runs: skipped, it runs train_unsupervised.py on CIFAR-10 files, not found in {args.data_root}"
        )
    K, batch, images = (4, 16, 64) if args.quick else (32, 64, 1280)
    clean = {key: value for key, value in os.environ.items() if key not in OPENMP_VARIABLES}
    with tempfile.TemporaryDirectory() as folder:

        def epoch_seconds(variables: dict, runs: int) -> list[float]:
            outs = [Path(tempfile.mkdtemp(dir=folder)) for _ in range(runs)]
            commands = [
                [
                    sys.executable,
                    "train_unsupervised.py",
                    "--dataset",
                    "cifar10",
                    "--method",
                    "relationnet",
                    "--backbone",
                    "conv4",
                    "--K",
                    str(K),
                    "--data_size",
                    str(batch),
                    "--epochs",
                    "1",
                    "--train_subset",
                    str(images),
                    "--seed",
                    "1",
                    "--device",
                    "cpu",
                    "--no_download",
                    "--data_root",
                    args.data_root,
                    "--checkpoint_dir",
                    str(out),
                ]
                for out in outs
            ]
            children = [
                subprocess.Popen(
                    command,
                    cwd=REPO,
                    env={**clean, **variables},
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                for command in commands
            ]
            failures = [child.communicate()[1] for child in children if child.wait()]
            if failures:
                raise RuntimeError((failures[0].strip().splitlines() or ["no output"])[-1])
            logs = [out / "relationnet" / "cifar10" / "log_relationnet_cifar10_conv4_seed_1.csv" for out in outs]
            return [float(list(csv.DictReader(open(log)))[0]["seconds"]) for log in logs]

        waitings = (OPENMP_DEFAULT_WAITING, {})
        try:
            solo = [[epoch_seconds(variables, 1)[0] for variables in waitings] for _ in range(2)]
            default_solo, ours_solo = (min(times) for times in zip(*solo))
            default_pair, ours_pair = (epoch_seconds(variables, 2) for variables in waitings)
        except RuntimeError as error:
            return f"concurrent-runs: a run failed: {error}"
    return (
        f"concurrent-runs (relationnet Conv-4 K {K}, batch {batch}, {images:,} images; epoch s): alone "
        f"{default_solo:.1f} with libgomp's default waiting, {ours_solo:.1f} with the stage scripts' "
        f"({ours_solo / default_solo:.2f}x); two at once: default {seconds_and_ratios(default_pair, default_solo)}, "
        f"the stage scripts' {seconds_and_ratios(ours_pair, ours_solo)}; 2.00x alone: the two share the cores "
        "fairly"
    )


GRID_METHODS = ("relationnet", "simclr", "rotationnet", "randomweights", "standard")


def grid_throughput(args) -> str:
    """The cifar10 study (5 methods x 2 seeds, 1 epoch of 2,000 training images, 1 of linear
    evaluation, the test) run by reproduce.py on the CPU with --jobs 1, then --jobs 2; the
    ratio of their wall times is what running stages side by side gains."""
    images = 200 if args.quick else 2000
    argv = [
        "--study",
        "cifar10",
        "--methods",
        *GRID_METHODS,
        "--seeds",
        "1",
        "2",
        "--epochs",
        "1",
        "--linear_epochs",
        "1",
        "--train_subset",
        str(images),
        "--K",
        "4",
        "--data_root",
        args.data_root,
        "--device",
        "cpu",
        "--no_download",
    ]
    name = f"grid-throughput (cifar10 study, {len(GRID_METHODS)} methods x 2 seeds, 1 epoch, {images:,} images)"
    if not (Path(args.data_root) / "cifar-10-batches-py").is_dir():
        return f"{name}: skipped, no cifar-10-batches-py in {args.data_root}"
    seconds = {}
    with tempfile.TemporaryDirectory() as folder:
        for jobs in (1, 2):
            start = time.time()
            result = subprocess.run(
                [
                    sys.executable,
                    str(REPO / "reproduce.py"),
                    *argv,
                    "--jobs",
                    str(jobs),
                    "--out",
                    str(Path(folder) / f"jobs_{jobs}"),
                ],
                cwd=REPO,
                capture_output=True,
                text=True,
            )
            if result.returncode != 0:
                return f"{name}: --jobs {jobs} failed: {result.stderr.strip()[-300:]}"
            seconds[jobs] = time.time() - start
    ratio = seconds[1] / seconds[2]
    return (
        f"{name}: --jobs 1 {seconds[1]:.0f} s, --jobs 2 {seconds[2]:.0f} s, throughput {ratio:.2f}x "
        f"({'target 1.6x met' if ratio >= 1.6 else 'missed: target 1.6x'})"
    )


CHECKS = {
    "concurrent-runs": concurrent_runs,
    "compile-memory": compile_memory,
    "dim-ratio": dim_ratio,
    "grid-throughput": grid_throughput,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--configs",
        default=",".join([*CONFIGS, *CHECKS]),
        help=f"comma-separated, from: {', '.join([*CONFIGS, *CHECKS])}",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="measured steps per side, for every configuration (default: 12, resnet32 4, "
        "the accuracy check's training runs 100; --quick 2); deepcluster: whole epochs "
        "(default 1)",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="unmeasured steps first (default 3, resnet32 2; --quick 1); deepcluster: epochs (default 1)",
    )
    parser.add_argument("--csv", default=str(REPO / "benchmarks" / "results.csv"), help="where the rows go")
    parser.add_argument(
        "--data_root", default=DEFAULT_DATA_ROOT, help="folder holding cifar-10-batches-py (random images when missing)"
    )
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when there is one)")
    parser.add_argument(
        "--precision",
        choices=["fp32", "bf16", "fp16"],
        default=None,
        help="this suite's precision for every configuration (default: per configuration)",
    )
    parser.add_argument("--compile", action="store_true", help="compile the backbone in every configuration")
    parser.add_argument("--channels_last", action="store_true", help="NHWC layout in every configuration")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, no compile: checks that it runs")
    parser.add_argument("--worker", choices=["reference", "suite", "dim"], help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker_main(args)
        return
    args.device = args.device or ("cuda" if _cuda_available() else "cpu")
    names = [name.strip() for name in args.configs.split(",") if name.strip()]
    unknown = [name for name in names if name not in CONFIGS and name not in CHECKS]
    if unknown:
        parser.error(f"--configs: unknown {', '.join(unknown)}; choose from {', '.join([*CONFIGS, *CHECKS])}")
    start = time.time()
    print(
        f"benchmark on {args.device} ({os.cpu_count()} CPUs, {os.environ.get('OMP_NUM_THREADS', 'default')} "
        f"OpenMP threads){': quick, tiny sizes, not a measurement' if args.quick else ''}",
        flush=True,
    )
    rows = []
    for name in [name for name in names if name in CONFIGS]:
        config = configured(name, args.quick)
        measured = argparse.Namespace(
            **{
                **vars(args),
                "steps": args.steps or config.steps,
                "warmup": config.warmup if args.warmup is None else args.warmup,
            }
        )
        reference, error = (None, "") if config.kind == "accuracy" else run_worker("reference", name, measured)
        ours, our_error = run_worker("suite", name, measured)
        rows.append(
            row_for(
                name,
                config,
                suite_options(config, args),
                measured.steps,
                reference,
                ours,
                "; ".join(e for e in (error, our_error) if e),
            )
        )
        if len(rows) == 1:
            print(f"data: {rows[0]['data']}", flush=True)
        print(describe(rows[-1]), flush=True)
    Path(args.csv).parent.mkdir(parents=True, exist_ok=True)
    with open(args.csv, "w", newline="") as handle:
        writer = csv.DictWriter(handle, COLUMNS)
        writer.writeheader()
        writer.writerows({key: ("" if value is None else value) for key, value in row.items()} for row in rows)
    print(f"rows written to {args.csv}")
    for name in [name for name in names if name in CHECKS]:
        print(CHECKS[name](args), flush=True)
    print(summary(rows, time.time() - start))


def _cuda_available() -> bool:
    """Asked in a subprocess, so the driver itself never loads torch."""
    probe = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.cuda.is_available())"], capture_output=True, text=True
    )
    return probe.stdout.strip() == "True"


if __name__ == "__main__":
    main()
