"""Where the time of this suite's training step goes (the step-profile check): the parts of
the engine's step timed one by one, each waiting for the device, over several steps."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from configurations import configured, suite_options
from measuring import load_images, synchronize
from suite_side import engine_for

PARTS = ("augmentation", "backbone forward", "head and loss forward", "backward", "optimizer")


def profile_worker(args) -> dict:
    """Seconds of each part of `args.steps` steps of configuration `args.config` (after
    `args.warmup` unmeasured ones): the engine's `train_step`, cut where its parts meet. The
    backbone's forward passes are timed by hooks on it; the rest of the method's
    `training_step` is its heads and loss."""
    import torch

    config = configured(args.config, args.quick)
    data, description = load_images(args.data_root, args.quick)
    device = torch.device(args.device)
    seconds = dict.fromkeys(PARTS, 0.0)
    with tempfile.TemporaryDirectory() as folder:
        engine = engine_for(config, data, device, suite_options(config, args), Path(folder))
        method = engine.method
        backbone_start: list[float] = []
        backbone_seconds = [0.0]

        def enter(module, inputs):
            synchronize(device)
            backbone_start.append(time.perf_counter())

        def leave(module, inputs, output):
            synchronize(device)
            backbone_seconds[0] += time.perf_counter() - backbone_start.pop()

        method.backbone.register_forward_pre_hook(enter)
        method.backbone.register_forward_hook(leave)
        order, _ = engine.begin_epoch(0)
        steps = engine.steps_per_epoch(len(order))
        for step in range(args.warmup + args.steps):
            measured = step >= args.warmup
            backbone_seconds[0] = 0.0
            times = [time.perf_counter()]
            index = engine.batch_index(order, step % steps)
            views = engine.augment_views(engine.images.index_select(0, index).to(device))
            labels = engine.labels.index_select(0, index).to(device)
            synchronize(device)
            times.append(time.perf_counter())
            with engine.precision.autocast():
                out = method.training_step(views, labels, index.to(device))
            synchronize(device)
            times.append(time.perf_counter())
            method.optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            synchronize(device)
            times.append(time.perf_counter())
            method.optimizer.step()
            method.after_step(step + 1)
            synchronize(device)
            times.append(time.perf_counter())
            if measured:
                augmentation, forward, backward, optimizer = (b - a for a, b in zip(times, times[1:]))
                seconds["augmentation"] += augmentation
                seconds["backbone forward"] += backbone_seconds[0]
                seconds["head and loss forward"] += forward - backbone_seconds[0]
                seconds["backward"] += backward
                seconds["optimizer"] += optimizer
    return {
        "data": description,
        "batch": config.batch,
        "views": config.views,
        "steps": args.steps,
        "options": " ".join(suite_options(config, args)) or "defaults",
        "seconds": seconds,
    }


def describe_profile(name: str, result: dict) -> str:
    total = sum(result["seconds"].values())
    parts = ", ".join(
        f"{part} {1000 * value / result['steps']:,.0f} ({100 * value / total:.0f}%)"
        for part, value in result["seconds"].items()
    )
    return (
        f"step-profile ({name}, batch {result['batch']}, K {result['views']}, {result['steps']} steps, "
        f"ours: {result['options']}): {1000 * total / result['steps']:,.0f} ms per step: {parts}"
    )
