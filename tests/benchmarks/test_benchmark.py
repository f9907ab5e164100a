"""The benchmark runs end to end in --quick mode and writes its CSV (no timing is asserted)."""

from __future__ import annotations

import csv
import importlib.util
import subprocess
import sys

from tests.helpers import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import benchmark  # noqa: E402


def test_quick_benchmark_prints_a_line_per_configuration_and_writes_the_csv(tmp_path):
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
    assert sum(line.startswith(("relationnet-conv4 (", "lineval-conv4 (")) for line in lines) == 2
    with open(table, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == benchmark.COLUMNS
    assert [row["config"] for row in rows] == ["relationnet-conv4", "lineval-conv4"]
    for row in rows:
        assert not row["error"], row["error"]
        assert float(row["ref_images_per_s"]) > 0 and float(row["ours_images_per_s"]) > 0
        assert float(row["ref_peak_mb"]) > float(row["ref_main_peak_mb"]) > 0  # with the loader workers
        assert float(row["ours_peak_mb"]) > 0


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
