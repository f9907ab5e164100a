"""The benchmark runs end to end in --quick mode and writes its CSV (no timing is asserted)."""

from __future__ import annotations

import csv
import importlib.util
import subprocess
import sys

import pytest
import torch

from backbones import build_backbone
from methods import METHODS
from tests.helpers import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import benchmark  # noqa: E402
import checks  # noqa: E402
import reference  # noqa: E402


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


def test_quick_dim_ratio_times_both_local_discriminators_and_the_step_profile_its_parts(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "benchmarks/benchmark.py",
            "--quick",
            "--configs",
            "dim-ratio,step-profile",
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
    profile = next(line for line in result.stdout.splitlines() if line.startswith("step-profile"))
    total = float(profile.split("): ")[1].split(" ms per step")[0].replace(",", ""))
    shares = [int(part.rsplit("(", 1)[1].rstrip("%)")) for part in profile.split("ms per step: ")[1].split(", ")]
    assert total > 0 and len(shares) == 5 and 97 <= sum(shares) <= 103, profile  # each part rounded
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


def test_bf16_speed_line_gives_the_median_speed_up_its_range_and_the_fraction_of_the_bf16_peak():
    rates = {"fp32": [10.0, 12.0, 11.0], "bf16": [30.0, 40.0, 22.0]}  # speed-ups 3.0, 3.33, 2.0
    line = checks.describe_bf16_speed("byol-resnet18", 256, rates, 4.5e9, 1000.0, "")
    assert line.startswith("bf16-speed byol-resnet18 (batch 256): fp32 11.0 -> bf16 + channels-last 30.0 images/s")
    assert "3.00x (median of 3 alternating runs, 2.00x to 3.33x)" in line
    assert "4.5 GFLOP per image, 135.0 GFLOP/s = 13.5% of the bf16 peak" in line  # 4.5 x 30
    assert line.endswith("; missed: 13.5% < 30% of the peak")
    slow = checks.describe_bf16_speed("relic-resnet18", 256, {"fp32": [10.0], "bf16": [0.1]}, 6e9, None, "")
    assert "0.01x (median of 1 alternating runs" in slow and slow.endswith("; missed: 0.01x < 3.0x")
    failed = checks.describe_bf16_speed("vicreg-resnet18", 8, {"fp32": [], "bf16": []}, 0.0, None, "boom")
    assert failed == "bf16-speed vicreg-resnet18 (batch 8): boom"


@pytest.mark.parametrize("method", ["byol", "simsiam", "mocov3", "swav", "dino"])
def test_the_reference_views_are_the_methods_own_as_torchvision_pipelines(method):
    """solo-learn's data path draws each view from the method's own view spec, so both sides
    of a row augment alike: the pipelines carry the spec's crop scale and probabilities."""
    groups = METHODS[method](build_backbone("conv4"), 10).view_groups
    pipelines = reference.two_view_transforms(groups, (0.5,) * 3, (0.25,) * 3)
    assert len(pipelines) == len(groups) == 2
    for pipeline, group in zip(pipelines, groups):
        crop, _, jitter, gray, blur, solarize = pipeline.transforms[:6]
        assert crop.scale == group.views.crop_scale and gray.p == group.views.gray_p
        assert (jitter.p, blur.p, solarize.p) == (group.views.jitter_p, group.views.blur_p, group.views.solarize_p)
        image = reference.Image.fromarray(torch.randint(0, 256, (32, 32, 3), dtype=torch.uint8).numpy())
        assert pipeline(image).shape == (3, 32, 32)
