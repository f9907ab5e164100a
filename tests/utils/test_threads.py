"""Threads of the stage scripts: one per usable CPU and a short OpenMP spin, set before torch
loads OpenMP, unless the user's variables say otherwise; recorded in the config."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.helpers import REPO, stage_arguments
from utils.threads import SPIN_COUNT

OPENMP_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def _randomweights_config(tmp_path, cpus: set[int], **variables: str) -> tuple[dict, str]:
    """Stage 1 of randomweights (it reads no image) on `cpus` with only `variables` of
    OpenMP's set; its recorded config and its -X importtime report (stderr)."""
    environment = {key: value for key, value in os.environ.items() if key not in OPENMP_VARIABLES}
    command = [
        sys.executable,
        "-X",
        "importtime",
        "train_unsupervised.py",
        "--method",
        "randomweights",
        *stage_arguments(tmp_path / "data", tmp_path / "out"),
    ]
    done = subprocess.run(
        command,
        cwd=REPO,
        env={**environment, **variables},
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=lambda: os.sched_setaffinity(0, cpus),
    )
    assert done.returncode == 0, done.stderr[-2000:]
    config = tmp_path / "out" / "randomweights" / "cifar10" / "config_randomweights_cifar10_conv4_seed_1.json"
    return json.loads(config.read_text()), done.stderr


def _imported_modules(importtime_report: str) -> list[str]:
    return [
        line.rsplit("|", 1)[1].strip()
        for line in importtime_report.splitlines()
        if line.startswith("import time:") and "|" in line
    ]


def test_a_stage_uses_its_usable_cpus_and_a_short_spin_set_before_torch(tmp_path):
    first_cpu = min(os.sched_getaffinity(0))
    config, report = _randomweights_config(tmp_path, {first_cpu})
    assert (config["threads"], config["usable_cpus"], config["gomp_spincount"]) == (1, 1, str(SPIN_COUNT))
    assert config["omp_wait_policy"] == "OpenMP's default"
    modules = _imported_modules(report)
    assert modules.index("utils.threads") < modules.index("torch")  # OpenMP reads its variables at load


def test_the_users_openmp_variables_are_kept(tmp_path):
    config, _ = _randomweights_config(tmp_path, os.sched_getaffinity(0), OMP_NUM_THREADS="1", OMP_WAIT_POLICY="ACTIVE")
    assert (config["threads"], config["omp_wait_policy"], config["gomp_spincount"]) == (
        1,
        "ACTIVE",
        "libgomp's default",
    )
    assert config["usable_cpus"] == len(os.sched_getaffinity(0))
