"""Output names, atomic writes and safe loading of checkpoints, logs and run configurations.

File names follow the original code so that scripts written for it keep working:
`<checkpoint_dir>/<method>/<dataset>/<header>_epoch_<N>.tar` with
`header = <method>[_<id>]_<dataset>_<backbone>_seed_<seed>`.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import secrets
import socket
from functools import lru_cache
from pathlib import Path
from typing import TypedDict

import torch

from utils.checkpoint_fields import (
    INTEGER_LIMIT,
    check_number,
    check_state_dict,
    field_error,
)
from utils.errors import UserError

FORMAT_VERSION = 1


class TextEncoding(TypedDict):
    """The keyword arguments of `open` and `str.encode` that set a text file's encoding."""

    encoding: str
    errors: str


# The text files this suite writes are UTF-8. A path may hold bytes that are not UTF-8, which
# Python holds as lone surrogates (os.fsdecode); they are written as backslash escapes
# (`\udcff` for byte 0xff), so a file naming such a path is written whole and stays UTF-8 text.
TEXT_ENCODING: TextEncoding = {"encoding": "utf-8", "errors": "backslashreplace"}


def encode_text(text: str) -> bytes:
    """`text` as the bytes of a text file of this suite (see TEXT_ENCODING)."""
    return text.encode(**TEXT_ENCODING)


def run_header(method: str, dataset: str, backbone: str, seed: int, run_id: str = "") -> str:
    parts = [method] + ([run_id] if run_id else []) + [dataset, backbone, "seed", str(seed)]
    return "_".join(parts)


def evaluation_header(
    method: str,
    dataset: str,
    pretraining_dataset: str | None,
    backbone: str,
    seed: int,
    run_id: str,
    epochs: int | None,
    finetune: bool,
    label_fraction: float = 1.0,
    classifier: str = "linear",
) -> str:
    """The name of a stage-2 run. Cross-domain runs say so (`<dataset>_from_<pretraining>`),
    and so do fine-tuning, logistic-regression and semi-supervised runs, so none overwrites
    another's result. Logistic regression is solved, not trained for epochs: its name has
    no epoch count (`epochs` is None there)."""
    domain = dataset if pretraining_dataset in (None, dataset) else f"{dataset}_from_{pretraining_dataset}"
    if classifier == "logistic":
        mode = "logistic_regression"
    else:
        mode = f"epoch_{epochs}_" + ("finetune" if finetune else "linear_evaluation")
    if label_fraction < 1:
        mode += f"_labels_{label_fraction * 100:g}pct"
    return f"{run_header(method, domain, backbone, seed, run_id)}_{mode}"


class RunFiles:
    """The files of one run (a stage of one configuration) inside its output folder."""

    def __init__(self, checkpoint_dir: str | Path, method: str, dataset: str, header: str):
        self.directory = Path(checkpoint_dir) / method / dataset
        self.header = header

    def epoch_checkpoint(self, epoch: int) -> Path:
        return self.directory / f"{self.header}_epoch_{epoch}.tar"

    @property
    def final(self) -> Path:
        """`<header>.tar`: the one file of runs that save once (randomweights, stage 2)."""
        return self.directory / f"{self.header}.tar"

    @property
    def last_checkpoint(self) -> Path:
        """Rewritten after every epoch, so a run can be resumed from any epoch boundary."""
        return self.directory / f"{self.header}_last.tar"

    @property
    def lock(self) -> Path:
        return self.directory / f".{self.header}.lock"

    @property
    def log(self) -> Path:
        return self.directory / f"log_{self.header}.csv"

    @property
    def config(self) -> Path:
        return self.directory / f"config_{self.header}.json"

    def _names(self) -> re.Pattern:
        """The names of this run's files (not those of a stage-2 run named after it)."""
        header = re.escape(self.header)
        return re.compile(rf"{header}(?:_epoch_\d+|_last)?\.tar|log_{header}\.csv|config_{header}\.json")

    def outputs(self) -> list[Path]:
        """This run's files in the folder now: checkpoints, rolling checkpoint, log, config."""
        return self._matching(self._names())

    def remove_temporary(self) -> list[Path]:
        """Remove the temporary files that a killed writer of this run's files left (a run
        calls it once it holds the run's lock, so no live process is writing them)."""
        return self._remove(re.compile(rf"\.(?:{self._names().pattern})\.[0-9a-f]+\.tmp"))

    def remove_outputs(self) -> list[Path]:
        """Remove every file of this run (checkpoints, rolling checkpoint, log, config and their
        temporary files), the rolling checkpoint first: a run killed midway leaves nothing that
        `--resume auto` could continue. Called under the run's lock by a new run that replaces
        it (`--overwrite`), once its inputs are checked."""
        names = self._names().pattern
        removed = self._remove(re.compile(re.escape(self.last_checkpoint.name)))
        return removed + self._remove(re.compile(rf"{names}|\.(?:{names})\.[0-9a-f]+\.tmp"))

    def _matching(self, names: re.Pattern) -> list[Path]:
        if not self.directory.is_dir():
            return []
        return sorted(path for path in self.directory.iterdir() if names.fullmatch(path.name))

    def _remove(self, names: re.Pattern) -> list[Path]:
        removed = self._matching(names)
        for path in removed:
            path.unlink(missing_ok=True)
        return removed


# Set by reproduce.py in the environment of the stages it runs (the grid's --out).
GRID_ENVIRONMENT = "REPRODUCE_GRID_OUT"


class RunLock:
    """Refuses a second run writing the same files while the first is alive.

    The lock file holds the owner's host and pid; a lock left by a dead process on this host
    is taken over, so a killed run never blocks its own resume.
    """

    @property
    def separate_run(self) -> str:
        """How the refusal says to avoid the clash: a stage run by a grid has no --id of its own."""
        return (
            "pass another --out for a separate grid"
            if GRID_ENVIRONMENT in os.environ
            else "use --id for a separate run"
        )

    def __init__(self, path: Path):
        self.path = path
        self.owner = f"{socket.gethostname()} {os.getpid()}"

    def holder(self) -> str | None:
        """'<host> <pid>' of the live process holding the lock, or None when it is free or stale."""
        try:
            owner = self.path.read_text().strip()
        except OSError:
            return None
        return owner if self._owner_alive() else None

    def _owner_alive(self) -> bool:
        try:
            host, pid = self.path.read_text().split()
        except (OSError, ValueError):
            return False  # unreadable or half-written: not a live run's lock
        if host != socket.gethostname():
            return True  # cannot check a process on another machine: assume it runs
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def __enter__(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if self._owner_alive():
                    raise UserError(
                        f"another run ({self.path.read_text().strip()}) is writing "
                        f"{self.path.parent}/{self.path.name[1:-5]}: wait for it to end, "
                        f"or {self.separate_run} (delete {self.path} if no run "
                        "is active)"
                    ) from None
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as handle:
                handle.write(self.owner)
            return self
        raise UserError(f"could not take the lock {self.path}: delete it if no run is active")

    def __exit__(self, *exc) -> None:
        self.path.unlink(missing_ok=True)


# The longest file name, in bytes, that the usual file systems (ext4, XFS, Btrfs, APFS) accept.
MAX_NAME_BYTES = 255


def temporary_path(path: Path) -> Path:
    """A fresh name for `atomic_write_bytes`' temporary file of `path`: `.<name>.<random>.tmp`."""
    return path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, then rename over the target.

    A crash or a full disk mid-write leaves the previous file untouched. The temporary file is
    created with the mode a plain `open` gives (0o666 less the umask), not mkstemp's 0o600, so
    colleagues on shared storage read results as they read any other file. Its name,
    `.<name>.<random>.tmp`, lets the next run of the same files remove it
    (`RunFiles.remove_temporary`) when a killed process left it behind. An error names `path`.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = temporary_path(path)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            break
        except FileExistsError:
            continue
        except OSError as error:
            error.filename = str(path)
            raise
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _sync_folder(path.parent)
    except BaseException as error:
        tmp.unlink(missing_ok=True)
        if isinstance(error, OSError):  # a failed write() names no file; the user needs the target's name
            error.filename, error.filename2 = str(path), None
        raise


def _sync_folder(folder: Path) -> None:
    """Make a rename durable before the next file is written, so that files written one after
    the other reach the disk in that order also on a power loss (the epoch commit relies on it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # a platform without folder handles (Windows): renames are ordered there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on a folder; the rename itself is done
    finally:
        os.close(fd)


def save_checkpoint(state: dict, path: Path) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def save_json(data: dict, path: Path) -> None:
    atomic_write_bytes(path, encode_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n"))


def read_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint on the CPU without running code from the file (`weights_only`)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"checkpoint {path} does not exist")
    if path.is_dir():
        raise UserError(f"checkpoint {path} is a folder: pass the .tar file written by the previous stage")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for truncated or foreign files
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(
            f"checkpoint {path} cannot be read ({reason[:160]}): it is truncated, corrupt or not a PyTorch checkpoint"
        ) from None
    if not isinstance(state, dict) or "backbone" not in state:
        raise UserError(
            f"checkpoint {path} has no 'backbone' entry: not a checkpoint of this suite or of the original code"
        )
    for key, value in state.items():
        if key in STATE_DICT_KEYS and not _is_state_dict(value):
            raise field_error(path, key, f"is a {type(value).__name__}, not a state dict of named tensors")
    _check_record(state, path)
    return state


def _check_record(state: dict, path: Path) -> None:
    """The entries of the suite's record of a run that the stages read, where the file holds
    them (the original code's files hold none): whole numbers in bounds, and names of the
    suite's methods and data sets (a data set's name becomes part of stage 2's file names)."""
    from datasets import DATASETS
    from methods import METHODS

    for key, low in (("epoch", 0), ("seed", 0), ("world_size", 1)):
        if key in state:
            check_number(state[key], 0, low, INTEGER_LIMIT, path, key)
    for key, names, kind in (("method", METHODS, "methods"), ("dataset", DATASETS, "data sets")):
        if key in state and not (isinstance(state[key], str) and state[key] in names):
            raise field_error(path, key, f"is {str(state[key])[:40]!r}, not one of the suite's {kind}")


# Entries that hold a module's state dict wherever they appear (the original code's keys).
STATE_DICT_KEYS = frozenset({"backbone", "online_backbone", "relation", "head", "classifier", "loss_fn"})


def _is_state_dict(value: object) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())


def stage1_method_by_keys(state: dict) -> str:
    """Name the method of a checkpoint of the original code from its keys (section 9)."""
    for key, method in (
        ("relation", "relationnet"),
        ("head", "simclr"),
        ("loss_fn", "deepinfomax"),
        ("classifier", "rotationnet or deepcluster"),
    ):
        if key in state:
            return method
    return "randomweights"


def refuse_other_kind(state: dict, path: str | Path, method: str) -> None:
    """Refuse, naming what the file is and where it belongs, a checkpoint that stage 1's
    `--method method` cannot start from: a stage-2 file or another method's checkpoint."""
    if "pretraining_method" in state:  # recorded by every stage-2 file of this suite
        raise UserError(
            f"checkpoint {path} is a stage-2 file (linear evaluation or fine-tuning of a "
            f"{state['pretraining_method']} backbone): "
            "score it with test.py --checkpoint; stage 1 starts from a stage-1 checkpoint"
        )
    kind = state.get("method") or stage1_method_by_keys(state)
    if method not in str(kind).split(" or "):
        raise UserError(
            f"checkpoint {path} is a stage-1 {kind} checkpoint, not {method}: pass --method "
            f"{str(kind).split(' or ')[0]} to continue it, or give it to train_linear_evaluation.py "
            "--checkpoint to evaluate it"
        )


def refuse_other_than_finetuning(state: dict, path: str | Path) -> None:
    """Refuse, naming what the file is, a checkpoint that a fine-tuning run cannot resume: any
    file but a fine-tuning run's (a stage-1 checkpoint, a linear classifier)."""
    args = state.get("args")
    if "pretraining_method" not in state:
        raise UserError(
            f"checkpoint {path} is not a stage-2 file: a fine-tuning run resumes from its own "
            "_last.tar; to fine-tune a stage-1 checkpoint, pass it as --checkpoint without --resume"
        )
    if not isinstance(args, dict) or args.get("finetune") is not True:
        raise UserError(
            f"checkpoint {path} is not a fine-tuning run's file (a linear classifier is saved "
            "once, whole): run the linear evaluation again without --resume"
        )


@lru_cache(maxsize=None)
def _backbone_state(name: str, stem: str | None = None) -> dict[str, torch.Tensor]:
    """The state dict of a backbone built on the meta device: names, shapes and dtypes only."""
    from backbones import build_backbone

    with torch.device("meta"):
        return build_backbone(name, stem).state_dict()


def _backbone_shapes(name: str, stem: str | None = None) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in _backbone_state(name, stem).items()}


def identify_backbone(state_dict: dict) -> tuple[str, str | None] | None:
    """The registered (backbone, stem) whose state-dict keys and shapes match, if any; the stem
    is None for backbones with a single stem."""
    from backbones import backbone_variants

    shapes = {key: tuple(value.shape) for key, value in state_dict.items()}
    for name, stem in backbone_variants():
        if _backbone_shapes(name, stem) == shapes:
            return name, stem
    return None


def _describe_variant(name: str, stem: str | None) -> str:
    return f"{name} backbone" if stem is None else f"{name} backbone with the {stem} stem"


def check_backbone(state: dict, backbone: str, path: str | Path, stem: str | None = "auto") -> str | None:
    """Refuse, with the fix, a checkpoint whose backbone is not `--backbone` or whose stem is not
    `stem` (the stem the stage builds; 'auto' takes the checkpoint's); returns the stem it
    holds (None for a backbone with a single stem).

    The stem is read from the weights (the shape of `conv1`), which the checkpoint's `stem`
    key records too; so a state dict converted from torchvision, without that key, works.
    Weights of another dtype (which loading would cast silently) or that are not finite (a
    diverged run's: every result from them would be chance) are refused too."""
    from backbones import STEMS, refuse_stem_without_choice

    refuse_stem_without_choice(backbone, stem)
    held = identify_backbone(state["backbone"])
    if held is None:
        raise UserError(
            f"checkpoint {path} holds a backbone this suite does not know "
            f"(its weights match none of the registered backbones)"
        )
    name, held_stem = held
    if name != backbone:
        fix = f"--backbone {name}"
        if held_stem is not None and stem in STEMS and stem != held_stem:
            fix += f" --stem {held_stem}"
        raise UserError(f"checkpoint {path} holds a {_describe_variant(name, held_stem)}, not {backbone}: pass {fix}")
    if stem in STEMS and stem != held_stem:
        raise UserError(
            f"checkpoint {path} holds a {_describe_variant(name, held_stem)}, not the {stem} stem: "
            f"pass --stem {held_stem}"
        )
    check_state_dict(state["backbone"], _backbone_state(name, held_stem), path, "backbone")
    return held_stem


class CsvLog:
    """The per-epoch CSV log of a run, rewritten atomically with each new row: whatever instant
    the process dies, the file holds whole rows under one header. Its `epoch` column counts from
    1, as the checkpoint names.

    The rows the file holds from before the first new row's epoch are kept and the later ones
    dropped, so a resumed log equals the log of a run that was never interrupted."""

    def __init__(self, path: Path):
        self.path = path
        self.rows: list[dict] | None = None
        self.columns: list[str] = []

    def append(self, row: dict) -> None:
        if self.rows is None:
            self.columns, rows = read_csv(self.path)
            self.rows = [
                kept for kept in rows if str(kept.get("epoch", "")).isdigit() and int(kept["epoch"]) < row["epoch"]
            ]
        self.rows.append(row)
        self.columns = list(dict.fromkeys([*self.columns, *row]))
        write_csv(self.path, self.columns, self.rows)


def read_csv(path: Path) -> tuple[list[str], list[dict]]:
    """The columns and rows of a CSV file (none when it does not exist); a file that is not
    UTF-8 CSV text gives one line naming it and the fix."""
    if not path.exists():
        return [], []
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            rows = list(reader)
            return list(reader.fieldnames or []), rows
    except (UnicodeDecodeError, csv.Error) as error:
        where = f"invalid byte at offset {error.start}" if isinstance(error, UnicodeDecodeError) else str(error)
        raise UserError(
            f"the log {path} is not readable CSV text ({where}): restore it, or move it aside to go on without its rows"
        ) from None


# Significant digits of the floats in CSV logs: enough for any float32 value and for float64
# sums (whose last digits are noise), and no `28.000000000000004`.
CSV_FLOAT_DIGITS = 8


def csv_row(row: dict) -> dict:
    """`row` with its floats written with CSV_FLOAT_DIGITS significant digits."""
    return {
        key: format(value, f".{CSV_FLOAT_DIGITS}g") if isinstance(value, float) else value for key, value in row.items()
    }


def write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    """Replace `path` atomically by a CSV of `rows` under `columns`."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(csv_row(row) for row in rows)
    atomic_write_bytes(path, encode_text(buffer.getvalue()))


def append_csv_row(path: Path, columns: list[str], row: dict) -> None:
    """Append one row, writing the header first when the file is new.

    A file written with other columns (by an earlier version) is first rewritten under
    `columns`, keeping its rows, so that no row lands under the wrong header."""
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    if not new:
        fieldnames, rows = read_csv(path)
        if fieldnames:
            union = list(dict.fromkeys([*fieldnames, *columns]))
            if union != fieldnames:
                write_csv(path, union, rows)
            columns = union
    with open(path, "a", newline="", **TEXT_ENCODING) as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerow(csv_row(row))
