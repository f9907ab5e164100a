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
from experiments.grid_cli import grid_arguments  # noqa: E402
from experiments.grid_cli import grid_parser as parser  # noqa: E402
from experiments.grid_plan import plan  # noqa: E402
from experiments.stage import run_main  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    args = grid_arguments(parser().parse_args(argv))
    out = Path(args.out)
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
