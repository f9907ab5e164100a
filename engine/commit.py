"""The commit of an epoch: its files written in one order, so that a process killed at any
instant leaves what a resume completes into the files of a run that was never stopped.

The order, each step an atomic write (`utils/atomic.py`):

1. the rolling checkpoint (`<header>_last.tar`), holding the state after the epoch and, under
   `COMMIT`, the epoch's log row and the names of the files of steps 2 and 3: from here on
   the epoch is durable, and everything after can be written again from this file;
2. the epoch's checkpoints (numbered `<header>_epoch_<N>.tar`, a stage's final file), the
   same state without `COMMIT`;
3. the log, with the epoch's row: the last step, which marks the epoch done.

A resume (`--resume auto` reads the rolling checkpoint) calls `finish_commit` once the state is
checked against the built method, before it trains: when the rolling checkpoint's epoch has no
row in the log or a checkpoint of step 2 is missing, the run died inside the commit, and steps
2 and 3 are written from it. A run killed before step 1
resumes from the previous epoch's rolling checkpoint and trains the epoch again, which gives
the same numbers (seeded by epoch).
"""

from __future__ import annotations

import re
from pathlib import Path

from engine.checkpoint import save_checkpoint
from engine.csv_log import CsvLog, read_csv
from engine.run_files import RunFiles
from utils.console import say
from utils.errors import UserError

#: The key of the rolling checkpoint that holds the pending steps of its epoch's commit.
COMMIT = "epoch_commit"


def commit_epoch(state: dict, row: dict, log: CsvLog, checkpoints: list[Path], rolling: Path | None) -> None:
    """Write the files of an epoch (`state` after it, its log `row`) in the order above. The
    rolling checkpoint records the files of steps 2 and 3 by their names alone: they lie in its
    folder, and a resume accepts only the names of its own run there (`finish_commit`)."""
    if rolling is not None:
        pending = {"log": log.path.name, "row": row, "checkpoints": [path.name for path in checkpoints]}
        save_checkpoint({**state, COMMIT: pending}, rolling)
    for path in checkpoints:
        save_checkpoint(state, path)
        say(f"[INFO] Saving in: {path}")
    log.append(row)


# A log column: a name as the engine and the methods write them (letters, digits, underscores).
_COLUMN = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


def pending_commit(state: dict, files: RunFiles, path: Path) -> tuple[dict, list[Path]] | None:
    """The log row and checkpoint paths of the commit that the rolling checkpoint `state` (read
    from `path`) holds, checked as data: the paths are the run's own files (its log, the
    numbered checkpoint of the state's epoch, its final file) inside `files.directory`, found by
    the run's name and never by a name the file supplies, and the row holds numbers under
    column names. Anything else is refused in one line before any file is written. None when
    the state holds no commit (an interrupted epoch's, or a numbered checkpoint)."""
    pending = state.get(COMMIT)
    if pending is None:
        return None

    def refuse(problem: str) -> UserError:
        return UserError(
            f"--resume {path}: its '{COMMIT}' entry {problem}: the file is damaged or was not "
            f"written for the run {files.header}; resume from the run's own _last.tar, or start "
            "the run again"
        )

    if not isinstance(pending, dict) or set(pending) != {"log", "row", "checkpoints"}:
        raise refuse("is not the record of an epoch's files")
    epoch = state.get("epoch")
    if type(epoch) is not int or epoch < 1:
        raise refuse(f"belongs to a state whose epoch is {epoch!r}, not a positive whole number")
    if pending["log"] != files.log.name:
        raise refuse(f"names the log {str(pending['log'])[:80]!r}, not the run's {files.log.name}")
    names = pending["checkpoints"]
    own = {files.epoch_checkpoint(epoch).name: files.epoch_checkpoint(epoch), files.final.name: files.final}
    if not isinstance(names, list) or not all(isinstance(name, str) and name in own for name in names):
        raise refuse(f"names files other than the run's checkpoints of epoch {epoch} ({', '.join(own)})")
    row = pending["row"]
    if not isinstance(row, dict) or row.get("epoch") != epoch:
        raise refuse(f"holds no log row of epoch {epoch}")
    for column, value in row.items():
        if (
            not isinstance(column, str)
            or not _COLUMN.fullmatch(column)
            or not (value is None or type(value) in (int, float, bool))
        ):
            raise refuse(f"holds a log entry that is not a number under a column name ({str(column)[:40]!r})")
    return row, [own[name] for name in dict.fromkeys(names)]


def unfinished_commit(state: dict, files: RunFiles, path: Path) -> tuple[dict, list[Path]] | None:
    """The commit of `pending_commit` when the stopped run had not written all its files; None
    when it was whole or `state` holds none. Writes nothing."""
    pending = pending_commit(state, files, path)
    if pending is None:
        return None
    row, checkpoints = pending
    _, rows = read_csv(files.log)
    logged = any(logged_row.get("epoch") == str(row["epoch"]) for logged_row in rows)
    return None if logged and all(checkpoint.exists() for checkpoint in checkpoints) else pending


def finish_commit(state: dict, files: RunFiles, path: Path) -> list[Path]:
    """Complete the commit that a rolling checkpoint's `state` (read from `path`) began, writing
    only the files of the run `files` names (see `pending_commit`); returns the files written,
    none when the commit was whole or `state` holds none."""
    pending = unfinished_commit(state, files, path)
    if pending is None:
        return []
    row, checkpoints = pending
    saved = {key: value for key, value in state.items() if key != COMMIT}
    for checkpoint in checkpoints:
        save_checkpoint(saved, checkpoint)
    CsvLog(files.log).append(row)
    return [*checkpoints, files.log]
