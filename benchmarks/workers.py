"""Each side of a configuration runs in a fresh process: `run_worker` starts one (the
benchmark's own script with `--worker`) and reads the result line it prints, `worker_main`
is what that process runs."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

from configurations import REPO, configured
from machine import machine_worker
from measuring import ChildMemory, Measurement
from profiling import profile_worker
from reference_side import reference_worker
from suite_side import dim_worker, suite_worker

RESULT_PREFIX = "RESULT "
# Workers whose result is a dict of fields, not a Measurement of one side.
FIELD_WORKERS = {"dim": dim_worker, "machine": machine_worker, "profile": profile_worker}
SCRIPT = Path(__file__).resolve().parent / "benchmark.py"


def worker_main(args) -> None:
    if args.worker in ("suite", "dim", "machine", "profile"):  # as every stage script does first
        from utils.threads import configure_threads

        configure_threads()
        from utils.runtime import tune_allocator

        tune_allocator()
    if args.worker in FIELD_WORKERS:
        print(RESULT_PREFIX + json.dumps(FIELD_WORKERS[args.worker](args)), flush=True)
        return
    config = configured(args.config, args.quick)
    measure = reference_worker if args.worker == "reference" else suite_worker
    children = ChildMemory()
    children.start()
    measurement = measure(config, args, children)
    measurement.children_mb = children.peak_mb
    print(RESULT_PREFIX + json.dumps(asdict(measurement)), flush=True)


def run_worker(side: str, name: str, args) -> tuple[Measurement | dict | None, str]:
    """Run a worker in a fresh process: its Measurement (FIELD_WORKERS: their result's fields)."""
    command = [
        sys.executable,
        str(SCRIPT),
        "--worker",
        side,
        "--config",
        name,
        "--device",
        args.device,
        "--data_root",
        args.data_root,
    ]
    command += ["--steps", str(args.steps)] if args.steps is not None else []
    command += ["--warmup", str(args.warmup)] if args.warmup is not None else []
    command += ["--precision", args.precision] if args.precision else []
    command += ["--compile"] * args.compile + ["--channels_last"] * args.channels_last + ["--quick"] * args.quick
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    for line in reversed(result.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            fields = json.loads(line[len(RESULT_PREFIX) :])
            return (fields if side in FIELD_WORKERS else Measurement(**fields)), ""
    tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
    return None, f"{side} worker failed (status {result.returncode}): {tail}"
