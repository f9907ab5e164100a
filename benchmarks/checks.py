"""Throughput checks: a line each, after the configurations (concurrent-runs,
compile-memory, dim-ratio, grid-throughput, step-profile, bf16-speed)."""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from configurations import CONFIGS, REPO, configured
from profiling import describe_profile
from workers import run_worker

OPENMP_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
# libgomp's own waiting when no variable sets it: spin about 3 ms, then sleep. Given
# explicitly, it is the user's choice, which the stage scripts keep: the stages' waiting
# before they chose one themselves (utils/threads.py).
OPENMP_DEFAULT_WAITING = {"GOMP_SPINCOUNT": "300000"}


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


def step_profile(args) -> str:
    """Where the time of this suite's relationnet-conv4 step goes, part by part."""
    measured = argparse.Namespace(
        **{
            **vars(args),
            "steps": args.steps or (2 if args.quick else 8),
            "warmup": 1 if args.warmup is None else args.warmup,
        }
    )
    result, error = run_worker("profile", "relationnet-conv4", measured)
    return f"step-profile: {error}" if error else describe_profile("relationnet-conv4", result)


BF16_TARGET_SPEEDUP = 3.0  # over fp32, on a CPU with AMX
BF16_TARGET_FRACTION = 0.30  # of the bf16 matrix-product peak, ResNet-18 at batch 256


def bf16_speed(args) -> str:
    """This suite's ResNet-18 configurations in fp32 (eager, NCHW) and in bf16 autocast with
    channels-last (both with --compile when given), alternating --runs times: the median
    speed-up and its range, and the fraction of the bf16 peak (measured in this run) reached."""
    peaks = getattr(args, "peaks", None) or {}
    runs = args.runs or (1 if args.quick else 3)
    names = [name for name, config in CONFIGS.items() if config.backbone == "resnet18"]
    lines = []
    for name in names:
        config = configured(name, args.quick)
        rates: dict[str, list[float]] = {"fp32": [], "bf16": []}
        flops, error = 0.0, ""
        for _ in range(runs):
            for precision in rates:
                measured = argparse.Namespace(
                    **{
                        **vars(args),
                        "precision": precision,
                        "channels_last": precision == "bf16",
                        "steps": args.steps or config.steps,
                        "warmup": config.warmup if args.warmup is None else args.warmup,
                    }
                )
                measurement, error = run_worker("suite", name, measured)
                if error:
                    break
                rates[precision].append(measurement.images / measurement.seconds)
                flops = measurement.flops_per_image
            if error:
                break
        lines.append(describe_bf16_speed(name, config.batch, rates, flops, peaks.get("bf16"), error))
    return "\n".join(lines)


def describe_bf16_speed(
    name: str, batch: int, rates: dict[str, list[float]], flops: float, peak: float | None, error: str
) -> str:
    label = f"bf16-speed {name} (batch {batch})"
    if error:
        return f"{label}: {error}"
    speedups = [bf16 / fp32 for fp32, bf16 in zip(rates["fp32"], rates["bf16"])]
    fp32, bf16, speedup = (statistics.median(values) for values in (rates["fp32"], rates["bf16"], speedups))
    gflops = flops * bf16 / 1e9
    fraction = gflops / peak if peak else None
    missed = [f"{speedup:.2f}x < {BF16_TARGET_SPEEDUP}x"] * (speedup < BF16_TARGET_SPEEDUP)
    if fraction is not None and fraction < BF16_TARGET_FRACTION and batch >= 256:
        missed.append(f"{100 * fraction:.1f}% < {100 * BF16_TARGET_FRACTION:.0f}% of the peak")
    return (
        f"{label}: fp32 {fp32:,.1f} -> bf16 + channels-last {bf16:,.1f} images/s, {speedup:.2f}x "
        f"(median of {len(speedups)} alternating runs, {min(speedups):.2f}x to {max(speedups):.2f}x); "
        f"{flops / 1e9:.3g} GFLOP per image, {gflops:,.1f} GFLOP/s"
        + (f" = {100 * fraction:.1f}% of the bf16 peak" if fraction is not None else "")
        + ("; missed: " + ", ".join(missed) if missed else "; targets met")
    )


CHECKS = {
    "concurrent-runs": concurrent_runs,
    "compile-memory": compile_memory,
    "dim-ratio": dim_ratio,
    "grid-throughput": grid_throughput,
    "step-profile": step_profile,
    "bf16-speed": bf16_speed,
}
