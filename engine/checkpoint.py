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
import socket
import tempfile
from functools import lru_cache
from pathlib import Path

import torch

from utils.errors import UserError

FORMAT_VERSION = 1


def run_header(method: str, dataset: str, backbone: str, seed: int, run_id: str = "") -> str:
    parts = [method] + ([run_id] if run_id else []) + [dataset, backbone, "seed", str(seed)]
    return "_".join(parts)


def evaluation_header(method: str, dataset: str, pretraining_dataset: str | None, backbone: str, seed: int,
                      run_id: str, epochs: int | None, finetune: bool, label_fraction: float = 1.0,
                      classifier: str = "linear") -> str:
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

    def latest_checkpoint(self) -> Path | None:
        """The checkpoint with the most training behind it (for `--resume auto`)."""
        candidates = []
        pattern = re.compile(re.escape(self.header) + r"_epoch_(\d+)\.tar$")
        if self.directory.is_dir():
            for path in self.directory.iterdir():
                match = pattern.match(path.name)
                if match:
                    candidates.append((int(match.group(1)), 0, path))
        if self.last_checkpoint.exists():
            epoch = read_checkpoint(self.last_checkpoint).get("epoch", 0)
            candidates.append((epoch, 1, self.last_checkpoint))
        return max(candidates)[2] if candidates else None


class RunLock:
    """Refuses a second run writing the same files while the first is alive.

    The lock file holds the owner's host and pid; a lock left by a dead process on this host
    is taken over, so a killed run never blocks its own resume.
    """
    separate_run = "use --id for a separate run"  # how the refusal says to avoid the clash

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
                    raise UserError(f"another run ({self.path.read_text().strip()}) is writing "
                                    f"{self.path.parent}/{self.path.name[1:-5]}: wait for it to end, "
                                    f"or {self.separate_run} (delete {self.path} if no run "
                                    "is active)") from None
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as handle:
                handle.write(self.owner)
            return self
        raise UserError(f"could not take the lock {self.path}: delete it if no run is active")

    def __exit__(self, *exc) -> None:
        self.path.unlink(missing_ok=True)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, then rename over the target.

    A crash or a full disk mid-write leaves the previous file untouched.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(state: dict, path: Path) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def save_json(data: dict, path: Path) -> None:
    atomic_write_bytes(path, (json.dumps(data, indent=2, sort_keys=True, default=str) + "\n").encode())


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
        raise UserError(f"checkpoint {path} cannot be read ({reason[:160]}): "
                        "it is truncated, corrupt or not a PyTorch checkpoint") from None
    if not isinstance(state, dict) or "backbone" not in state:
        raise UserError(f"checkpoint {path} has no 'backbone' entry: not a checkpoint of this "
                        "suite or of the original code")
    return state


@lru_cache(maxsize=None)
def _backbone_shapes(name: str, stem: str | None = None) -> dict[str, tuple[int, ...]]:
    from backbones import build_backbone
    with torch.device("meta"):
        backbone = build_backbone(name, stem)
    return {key: tuple(value.shape) for key, value in backbone.state_dict().items()}


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
    key records too; so a state dict converted from torchvision, without that key, works."""
    from backbones import STEMS, refuse_stem_without_choice
    refuse_stem_without_choice(backbone, stem)
    held = identify_backbone(state["backbone"])
    if held is None:
        raise UserError(f"checkpoint {path} holds a backbone this suite does not know "
                        f"(its weights match none of the registered backbones)")
    name, held_stem = held
    if name != backbone:
        fix = f"--backbone {name}"
        if held_stem is not None and stem in STEMS and stem != held_stem:
            fix += f" --stem {held_stem}"
        raise UserError(f"checkpoint {path} holds a {_describe_variant(name, held_stem)}, not {backbone}: pass {fix}")
    if stem in STEMS and stem != held_stem:
        raise UserError(f"checkpoint {path} holds a {_describe_variant(name, held_stem)}, not the {stem} stem: "
                        f"pass --stem {held_stem}")
    return held_stem


class CsvLog:
    """The per-epoch CSV log of a run. On resume, rows past the resumed epoch are dropped, so a
    resumed log equals the log of a run that was never interrupted."""

    def __init__(self, path: Path, columns: list[str], keep_epochs_below: int | None = None):
        self.path = path
        self.columns = columns
        rows = []
        if keep_epochs_below is not None and path.exists():
            with open(path, newline="") as handle:
                rows = [row for row in csv.DictReader(handle)
                        if row.get("epoch", "").isdigit() and int(row["epoch"]) < keep_epochs_below]
        self._rewrite(rows)

    def _rewrite(self, rows: list[dict]) -> None:
        write_csv(self.path, self.columns, rows)

    def append(self, row: dict) -> None:
        append_csv_row(self.path, self.columns, row)


def write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    """Replace `path` atomically by a CSV of `rows` under `columns`."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(path, buffer.getvalue().encode())


def append_csv_row(path: Path, columns: list[str], row: dict) -> None:
    """Append one row, writing the header first when the file is new.

    A file written with other columns (by an earlier version) is first rewritten under
    `columns`, keeping its rows, so that no row lands under the wrong header."""
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    if not new:
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            rows = list(reader)
        if reader.fieldnames:
            union = list(dict.fromkeys([*reader.fieldnames, *columns]))
            if union != list(reader.fieldnames):
                write_csv(path, union, rows)
            columns = union
    with open(path, "a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerow(row)
