"""The driver's output: a row per configuration (also the CSV's), its line, the targets it
misses and the summary line."""

from __future__ import annotations

import csv
import math
import statistics
from pathlib import Path

from configurations import CIFAR10_EPOCH, Config
from measuring import Measurement

COLUMNS = [
    "config",
    "kind",
    "backbone",
    "batch",
    "views",
    "options",
    "data",
    "steps",
    "runs",
    "epoch_images",
    "clusters",
    "ref_images_per_s",
    "ours_images_per_s",
    "speedup",
    "speedup_low",
    "speedup_high",
    "target_speedup",
    "ref_epoch_s",
    "ours_epoch_s",
    "gflop_per_image",
    "ours_gflop_per_s",
    "precision",
    "peak_gflop_per_s",
    "fraction_of_peak",
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


def rate(measurement: Measurement | None) -> float | None:
    if measurement is None or not measurement.seconds:
        return None
    return measurement.images / measurement.seconds


def epoch_seconds(images_per_second: float | None) -> float | None:
    """Seconds per 50,000 images (linear evaluation: its 100-epoch protocol's time / 100)."""
    return CIFAR10_EPOCH / images_per_second if images_per_second else None


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def precision_of(options: list[str]) -> str:
    """The precision this suite's side trains in: the value of its --precision, fp32 without."""
    return options[options.index("--precision") + 1] if "--precision" in options else "fp32"


def largest(measurements: list[Measurement], memory) -> float | None:
    return max(memory(m) for m in measurements) if measurements else None


def row_for(
    name: str,
    config: Config,
    options: list[str],
    steps: int,
    references: list[Measurement],
    ours: list[Measurement],
    error: str,
    peaks: dict | None,
) -> dict:
    """The row of a configuration from its alternating runs (reference, then this suite, as
    many times as it ran): the median rates, the median and range of the runs' speed-ups,
    the largest peak memory, this suite's GFLOP/s and their fraction of the measured peak of
    the precision it trains in."""
    skipped = f"reference skipped: {references[0].skipped}" if references and references[0].skipped else ""
    if skipped:
        references = []  # they measured nothing
    ref_rates = [value for value in map(rate, references) if value]
    our_rates = [value for value in map(rate, ours) if value]
    speedups = [mine / theirs for theirs, mine in zip(ref_rates, our_rates)]
    ref_rate, our_rate = median(ref_rates), median(our_rates)
    flops = ours[0].flops_per_image if ours and ours[0].flops_per_image else None
    gflops = flops * our_rate / 1e9 if flops and our_rate else None
    precision = precision_of(options)
    peak = (peaks or {}).get(precision)
    data = (ours or references)[0].data if (ours or references) else ""
    return {
        "config": name,
        "kind": config.kind,
        "backbone": config.backbone,
        "batch": config.batch,
        "views": config.views,
        "options": " ".join(options) or "defaults",
        "data": data,
        "steps": steps,
        "runs": len(ours),
        "epoch_images": config.images or None,
        "clusters": config.clusters or None,
        "ref_images_per_s": ref_rate,
        "ours_images_per_s": our_rate,
        "speedup": median(speedups),
        "speedup_low": min(speedups) if speedups else None,
        "speedup_high": max(speedups) if speedups else None,
        "target_speedup": config.target or None,
        "ref_epoch_s": epoch_seconds(ref_rate),
        "ours_epoch_s": epoch_seconds(our_rate),
        "gflop_per_image": flops / 1e9 if flops else None,
        "ours_gflop_per_s": gflops,
        "precision": precision,
        "peak_gflop_per_s": peak,
        "fraction_of_peak": gflops / peak if gflops and peak else None,
        "ref_peak_mb": largest(references, lambda m: m.peak_rss_mb + m.children_mb),
        "ours_peak_mb": largest(ours, lambda m: m.peak_rss_mb + m.children_mb),
        "ref_main_peak_mb": largest(references, lambda m: m.peak_rss_mb),
        "ours_main_peak_mb": largest(ours, lambda m: m.peak_rss_mb),
        "ref_children_mb": largest(references, lambda m: m.children_mb),
        "ours_children_mb": largest(ours, lambda m: m.children_mb),
        "ref_gpu_peak_mb": largest([m for m in references if m.gpu_peak_mb is not None], lambda m: m.gpu_peak_mb),
        "ours_gpu_peak_mb": largest([m for m in ours if m.gpu_peak_mb is not None], lambda m: m.gpu_peak_mb),
        "fp32_accuracy": ours[0].accuracies.get("fp32") if ours else None,
        "ours_accuracy": ours[0].accuracies.get("ours") if ours else None,
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
        f"{number(row['speedup'], 2)}x{spread(row)}; s per {epoch} {number(row['ref_epoch_s'])} -> "
        f"{number(row['ours_epoch_s'])}; {distance_to_peak(row)}; peak memory {number(row['ref_peak_mb'], 0)} -> "
        f"{number(row['ours_peak_mb'], 0)} MB; ours: {row['options']}{skipped}"
    )


def spread(row: dict) -> str:
    """How many alternating runs the speed-up is the median of, and their range."""
    if row["speedup"] is None:
        return ""
    if row["runs"] == 1:
        return " (1 run)"
    return f" (median of {row['runs']} alternating runs, {row['speedup_low']:.2f}x to {row['speedup_high']:.2f}x)"


def distance_to_peak(row: dict) -> str:
    """This suite's arithmetic per image, its rate, and the fraction of the precision's peak."""
    if row["gflop_per_image"] is None:
        return "GFLOP not counted"
    text = f"{row['gflop_per_image']:.3g} GFLOP per image, {number(row['ours_gflop_per_s'])} GFLOP/s"
    if row["fraction_of_peak"] is None:
        return f"{text} (no {row['precision']} peak measured)"
    return f"{text} = {100 * row['fraction_of_peak']:.1f}% of the {row['precision']} peak"


def misses(row: dict) -> list[str]:
    """The targets of the issue this row misses."""
    found = []
    if row["error"]:
        return [f"{row['config']} failed"]
    if row["kind"] == "accuracy":
        if row["fp32_accuracy"] is not None and row["ours_accuracy"] < row["fp32_accuracy"] - 1.0:
            found.append(f"{row['config']} loses {row['fp32_accuracy'] - row['ours_accuracy']:.2f} points")
        return found
    if row["target_speedup"] and row["speedup"] is not None and row["speedup"] < row["target_speedup"]:
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


def write_csv(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, COLUMNS)
        writer.writeheader()
        writer.writerows({key: ("" if value is None else value) for key, value in row.items()} for row in rows)
