"""The benchmark runs end to end in --quick mode and writes its CSV (no timing is asserted)."""

from __future__ import annotations

import csv
import importlib.util
import subprocess
import sys

import pytest
import torch

from backbones import build_backbone
from tests.helpers import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import benchmark  # noqa: E402


def test_quick_benchmark_prints_a_line_per_configuration_and_writes_the_csv(tmp_path):
    """Two alternating runs per side; the peaks are measured in the same run and each row has
    this suite's FLOPs per image, GFLOP/s and their fraction of the fp32 peak."""
    table = tmp_path / "results.csv"
    result = subprocess.run(
        [
            sys.executable,
            "benchmarks/benchmark.py",
            "--quick",
            "--configs",
            "relationnet-conv4,lineval-conv4",
            "--steps",
            "2",
            "--runs",
            "2",
            "--device",
            "cpu",
            "--csv",
            str(table),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert lines[-1].startswith("summary: 2 configurations")
    assert lines[1].startswith("cpu: ") and "flags" in lines[1]
    peak = next(line for line in lines if line.startswith("peak ("))
    fp32_peak = float(peak.split("fp32 ")[1].split(" GFLOP/s")[0].replace(",", ""))
    assert fp32_peak > 0 and "bf16 " in peak, peak
    rows_printed = [line for line in lines if line.startswith(("relationnet-conv4 (", "lineval-conv4 ("))]
    assert len(rows_printed) == 2
    assert all("median of 2 alternating runs" in line and "of the fp32 peak" in line for line in rows_printed)
    with open(table, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == benchmark.COLUMNS
    assert [row["config"] for row in rows] == ["relationnet-conv4", "lineval-conv4"]
    for row in rows:
        assert not row["error"], row["error"]
        assert row["runs"] == "2" and row["precision"] == "fp32"
        assert float(row["ref_images_per_s"]) > 0 and float(row["ours_images_per_s"]) > 0
        assert float(row["speedup_low"]) <= float(row["speedup"]) <= float(row["speedup_high"])
        assert float(row["ref_peak_mb"]) > float(row["ref_main_peak_mb"]) > 0  # with the loader workers
        assert float(row["ours_peak_mb"]) > 0
        assert float(row["peak_gflop_per_s"]) == pytest.approx(fp32_peak, abs=0.051)  # printed to 0.1
        achieved = float(row["gflop_per_image"]) * float(row["ours_images_per_s"])
        assert float(row["ours_gflop_per_s"]) == pytest.approx(achieved)
        assert float(row["fraction_of_peak"]) == pytest.approx(achieved / float(row["peak_gflop_per_s"]))
    # A relationnet step at K 4 runs each image's 4 views through Conv-4 forward and backward
    # (backward: about twice the forward's products) plus a small relation head; linear
    # evaluation runs each image forward once, plus a 64 -> 10 layer.
    forward = conv4_forward_flops()
    relationnet, lineval = (float(row["gflop_per_image"]) * 1e9 for row in rows)
    assert 4 * 2.5 * forward < relationnet < 4 * 3.5 * forward, (relationnet, forward)
    assert forward < lineval < 1.01 * forward, (lineval, forward)


def conv4_forward_flops() -> float:
    """Floating-point operations of Conv-4's forward pass on one CIFAR-sized image."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        build_backbone("conv4")(torch.zeros(1, 3, 32, 32))
    return counter.get_total_flops()


def test_quick_dim_ratio_times_both_local_discriminators(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "benchmarks/benchmark.py",
            "--quick",
            "--configs",
            "dim-ratio",
            "--steps",
            "1",
            "--csv",
            str(tmp_path / "results.csv"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("dim-ratio"))
    assert "original local discriminator" in line and float(line.rsplit(", ", 1)[1].rstrip("x")) > 0, line
    assert result.stdout.strip().splitlines()[-1].startswith("summary: 0 configurations")


def test_quick_deepcluster_times_whole_epochs_and_skips_the_reference_without_scikit_learn(tmp_path):
    """Either side's epochs (clustering included) run; without scikit-learn the row still
    has this suite's side and says in its line why the reference's is missing."""
    table = tmp_path / "results.csv"
    result = subprocess.run(
        [
            sys.executable,
            "benchmarks/benchmark.py",
            "--quick",
            "--configs",
            "deepcluster-conv4",
            "--device",
            "cpu",
            "--csv",
            str(table),
        ],  # --device: no process started to ask torch for a GPU, the cost of the test
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("deepcluster-conv4 ("))
    with open(table, newline="") as handle:
        row = next(csv.DictReader(handle))
    assert not row["error"], row["error"]
    assert row["epoch_images"] == "256" and row["clusters"] == "10"
    assert float(row["ours_images_per_s"]) > 0
    if importlib.util.find_spec("sklearn") is None:
        assert row["skipped"] == "reference skipped: needs scikit-learn (pip install scikit-learn)"
        assert line.endswith("; " + row["skipped"]) and not row["ref_images_per_s"], line
    else:
        assert not row["skipped"] and float(row["ref_images_per_s"]) > 0, line
