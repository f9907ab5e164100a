#!/usr/bin/env python
"""Training speed and memory of this suite against the original code's path, on one machine.

    .venv/bin/python benchmarks/benchmark.py                     # every configuration
    .venv/bin/python benchmarks/benchmark.py --configs relationnet-conv4 --steps 20
    .venv/bin/python benchmarks/benchmark.py --quick             # a smoke run: tiny sizes

First it measures the machine's limit (`machine.py`): the CPU's name and flags, and the
rate of a large matrix product in float32 and in bfloat16 (the `cpu:` and `peak:` lines).
For each configuration the reference (`benchmarks/reference.py`: the original's PIL
transforms in a DataLoader with 2 workers, the Python pair loop, eager float32) and this
suite (its Engine, methods and linear evaluation) run in turn, each in a fresh subprocess,
--runs times (default 3), alternating, so a change in the machine's load reaches both.
Each prints one line: images per second (medians of the runs), the median speed-up and the
range of the runs' speed-ups, seconds per CIFAR-10 epoch of 50,000 images, this suite's
floating-point operations per training image (forward and backward, counted once), its
GFLOP/s and their fraction of the peak of the precision it trains in, peak memory; the
last line is a summary. The rows also go to a CSV (--csv). Six checks follow, a line each
(not in the CSV): two stage-1 runs at once against one alone with libgomp's default
waiting and the stage scripts' short spin (concurrent-runs), the peak memory of
relationnet-conv4 on the original's path, eager and compiled (compile-memory), Deep
InfoMax steps with the fast and the original local discriminator (dim-ratio),
reproduce.py's cifar10 study with --jobs 1 and 2 (grid-throughput), the parts of a
relationnet-conv4 step (step-profile), and the ResNet-18 configurations in fp32 and in
bf16 + channels-last (bf16-speed, a line per configuration).

The modules: `configurations.py` (what each configuration runs), `workers.py` (a side in
a fresh process), `reference_side.py` and `suite_side.py` (what each side times),
`measuring.py` (memory, data), `machine.py` (peaks, FLOPs), `reporting.py` (rows, lines,
CSV), `checks.py` and `profiling.py` (step-profile).

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
import os
import subprocess
import sys
import time
from pathlib import Path

# The repository's packages, for the workers this script also runs (`--worker`).
REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from checks import CHECKS  # noqa: E402
from configurations import CONFIGS, DEFAULT_DATA_ROOT, configured, suite_options  # noqa: E402
from machine import describe_machine  # noqa: E402
from reporting import COLUMNS, describe, row_for, summary, write_csv  # noqa: E402
from workers import FIELD_WORKERS, run_worker, worker_main  # noqa: E402

__all__ = ["COLUMNS", "main"]


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
    parser.add_argument(
        "--runs",
        type=int,
        default=None,
        help="runs of each side per configuration, alternating reference and this suite: the line gives "
        "the median and range of their speed-ups (default 3; --quick 1)",
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
    parser.add_argument("--worker", choices=["reference", "suite", *FIELD_WORKERS], help=argparse.SUPPRESS)
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
    for flag in ("steps", "runs"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            parser.error(f"--{flag} {getattr(args, flag)}: give at least 1")
    runs = args.runs or (1 if args.quick else 3)
    start = time.time()
    print(
        f"benchmark on {args.device} ({os.cpu_count()} CPUs, {os.environ.get('OMP_NUM_THREADS', 'default')} "
        f"OpenMP threads; load average {os.getloadavg()[0]:.2f} in the minute before the run)"
        f"{': quick, tiny sizes, not a measurement' if args.quick else ''}",
        flush=True,
    )
    configurations = [name for name in names if name in CONFIGS]
    peaks = None
    if configurations or "bf16-speed" in names:  # the limit the rows are measured against, in this run
        machine, error = run_worker("machine", "", args)
        if error:
            print(f"peak: not measured, {error}", flush=True)
        else:
            print("\n".join(describe_machine(machine)), flush=True)
            peaks = {"fp32": machine["fp32"], "bf16": machine["bf16"]}
    rows = []
    for name in configurations:
        config = configured(name, args.quick)
        measured = argparse.Namespace(
            **{
                **vars(args),
                "steps": args.steps or config.steps,
                "warmup": config.warmup if args.warmup is None else args.warmup,
            }
        )
        references, ours, errors = alternating_runs(name, measured, 1 if config.kind == "accuracy" else runs)
        rows.append(row_for(name, config, suite_options(config, args), measured.steps, references, ours, errors, peaks))
        if len(rows) == 1:
            print(f"data: {rows[0]['data']}", flush=True)
        print(describe(rows[-1]), flush=True)
    write_csv(rows, Path(args.csv))
    print(f"rows written to {args.csv}")
    args.peaks = peaks  # for bf16-speed
    for name in [name for name in names if name in CHECKS]:
        print(CHECKS[name](args), flush=True)
    print(summary(rows, time.time() - start))


def alternating_runs(name: str, args, runs: int) -> tuple[list, list, str]:
    """`runs` pairs of runs, the reference's then this suite's, each in a fresh process (the
    accuracy check: this suite's alone): a change in the machine's load reaches both sides.
    Stops at the first failure, whose message it returns."""
    references, ours = [], []
    for _ in range(runs):
        if CONFIGS[name].kind != "accuracy":
            reference, error = run_worker("reference", name, args)
            if error:
                return references, ours, error
            references.append(reference)
        mine, error = run_worker("suite", name, args)
        if error:
            return references, ours, error
        ours.append(mine)
    return references, ours, ""


def _cuda_available() -> bool:
    """Asked in a subprocess, so the driver itself never loads torch."""
    probe = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.cuda.is_available())"], capture_output=True, text=True
    )
    return probe.stdout.strip() == "True"


if __name__ == "__main__":
    main()
