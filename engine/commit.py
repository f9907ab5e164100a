"""The commit of an epoch: its files written in one order, so that a process killed at any
instant leaves what a resume completes into the files of a run that was never stopped.

The order, each step an atomic write (`engine/checkpoint.py`):

1. the rolling checkpoint (`<header>_last.tar`), holding the state after the epoch and, under
   `COMMIT`, the epoch's log row and the names of the files of steps 2 and 3: from here on
   the epoch is durable, and everything after can be written again from this file;
2. the epoch's checkpoints (numbered `<header>_epoch_<N>.tar`, a stage's final file), the
   same state without `COMMIT`;
3. the log, with the epoch's row: the last step, which marks the epoch done.

A resume (`--resume auto` reads the rolling checkpoint) calls `finish_commit` first: when the
rolling checkpoint's epoch has no row in the log or a checkpoint of step 2 is missing, the
run died inside the commit, and steps 2 and 3 are written from it. A run killed before step 1
resumes from the previous epoch's rolling checkpoint and trains the epoch again, which gives
the same numbers (seeded by epoch).
"""
from __future__ import annotations

import os
from pathlib import Path

from engine.checkpoint import CsvLog, read_csv, save_checkpoint

#: The key of the rolling checkpoint that holds the pending steps of its epoch's commit.
COMMIT = "epoch_commit"


def commit_epoch(state: dict, row: dict, log: CsvLog, checkpoints: list[Path], rolling: Path | None) -> None:
    """Write the files of an epoch (`state` after it, its log `row`) in the order above."""
    if rolling is not None:
        folder = rolling.parent
        pending = {"log": os.path.relpath(log.path, folder), "row": row,
                   "checkpoints": [os.path.relpath(path, folder) for path in checkpoints]}
        save_checkpoint({**state, COMMIT: pending}, rolling)
    for path in checkpoints:
        save_checkpoint(state, path)
        print(f"[INFO] Saving in: {path}")
    log.append(row)


def finish_commit(state: dict, folder: Path) -> list[Path]:
    """Complete the commit that a rolling checkpoint's `state` (read from `folder`) began;
    returns the files written, none when the commit was whole (or `state` is not the rolling
    checkpoint of an epoch's end: an interrupted epoch's, or a numbered checkpoint)."""
    pending = state.get(COMMIT)
    if pending is None:
        return []
    log_path = folder / pending["log"]
    checkpoints = [folder / name for name in pending["checkpoints"]]
    row = pending["row"]
    _, rows = read_csv(log_path)
    logged = any(logged_row.get("epoch") == str(row["epoch"]) for logged_row in rows)
    if logged and all(path.exists() for path in checkpoints):
        return []
    saved = {key: value for key, value in state.items() if key != COMMIT}
    for path in checkpoints:
        save_checkpoint(saved, path)
    CsvLog(log_path).append(row)
    return [*checkpoints, log_path]
