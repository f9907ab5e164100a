"""This suite's side of a configuration: its Engine, methods and linear evaluation timed in a
worker process; and the Deep InfoMax step with either local discriminator (the dim-ratio check)."""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from functools import partial
from pathlib import Path

from configurations import CIFAR10_EPOCH, LINEVAL_EPOCHS, Config, configured, suite_options
from machine import counted_flops
from measuring import ChildMemory, Measurement, gpu_peak_mb, images_per_unit, load_images, peak_rss_mb, synchronize


def engine_for(config: Config, data, device, options: list[str], folder: Path, seed: int = 0):
    from backbones import build_backbone, resolve_stem
    from engine.loop import Engine
    from engine.plan import TrainingPlan
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
        peak = peak_rss_mb()  # before the counted step, which runs compiled modules eagerly
        unit = images_per_unit(config, data)
        flops = counted_flops(partial(run, 1, first=args.warmup + args.steps))
    return Measurement(
        description, seconds, args.steps * unit, peak, gpu_peak_mb=gpu_peak_mb(device), flops_per_image=flops / unit
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
    peak = peak_rss_mb()
    flops = counted_flops(partial(linear_evaluation, backbone, data, None, device, epochs))
    # Both parts scale with the number of images: report the protocol's time for 50,000.
    per_image = seconds / len(data) / epochs
    return Measurement(
        description,
        per_image * CIFAR10_EPOCH * LINEVAL_EPOCHS,
        CIFAR10_EPOCH * LINEVAL_EPOCHS,
        peak,
        gpu_peak_mb=gpu_peak_mb(device),
        flops_per_image=flops / len(data) / epochs,
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
