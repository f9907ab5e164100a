#!/usr/bin/env python
"""Reproduce the paper's tables: a grid of conditions x methods x seeds through the three stages.

Examples:
  python reproduce.py --study table1                   # Table 1 with the paper's settings (GPU-days)
  python reproduce.py --study cifar10 --methods relationnet simclr rotationnet randomweights standard \
      --epochs 3 --linear_epochs 10 --K 4 --seeds 1 2 3      # a short CIFAR-10 grid on a CPU
  python reproduce.py --study k_sweep --dry_run        # a summary, then each command once
  python reproduce.py --study table1 --shard 2/4       # the second of four machines sharing --out

Each run is the three stage scripts in child processes, with their output in
<out>/logs/<run>.log; up to --jobs stages run side by side, each on its own CPUs (or GPU), a
stage waiting for the stage-1 run it needs. A finished run is skipped and an interrupted one
resumed, so the same command continues a grid after a restart; Ctrl-C stops it after the
current training step.
<out> receives results.csv (one row per run), table.md (mean ± std over seeds beside the
paper's value), figure.png and training curves (with matplotlib).
"""

from __future__ import annotations

from pathlib import Path

from utils.entry import exit_quietly_on_interrupt

exit_quietly_on_interrupt()  # first: a Ctrl-C while torch imports is one line, not a traceback

from experiments.grid import Grid, GridLock  # noqa: E402
from experiments.grid_cli import grid_parser as parser  # noqa: E402
from experiments.grid_plan import plan  # noqa: E402
from experiments.monitoring import import_wandb  # noqa: E402
from experiments.parallel import automatic_jobs, visible_gpus  # noqa: E402
from experiments.stage import run_main  # noqa: E402
from utils.errors import UserError  # noqa: E402
from utils.runtime import resolve_device  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    args.out = args.out or str(Path("runs") / args.study)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file: pass a folder (it is created when missing)")
    data_root = Path(args.data_root)
    if not data_root.is_dir() and args.no_download:
        raise UserError(f"--data_root {data_root} is not a folder: pass the folder holding the data sets")
    if args.wandb:
        import_wandb()  # a missing package stops here, not in the first child
    device = resolve_device(args.device)  # a bad name stops here, not in the first child
    args.gpus = visible_gpus(device)
    if args.jobs_per_gpu and not args.gpus:
        raise UserError(f"--jobs_per_gpu: the grid runs on the CPU (--device {args.device}); use --jobs")
    args.jobs = args.jobs or automatic_jobs(args.gpus, args.jobs_per_gpu or 1)
    # Each child sees only its own GPU (CUDA_VISIBLE_DEVICES), as its first CUDA device.
    args.child_device = "cuda" if args.gpus else args.device
    runs = plan(args)
    grid = Grid(args, runs)
    grid.check_settings()
    if args.dry_run:
        grid.run_all()
        return
    with GridLock(out, runs, args.shard):
        try:
            grid.run_all()
        finally:
            grid.report()


if __name__ == "__main__":
    run_main(main)
