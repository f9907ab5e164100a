"""Pieces every stage script shares: error reporting, start-up messages, the run's config."""

from __future__ import annotations

import argparse
import io
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, NamedTuple

import torch

from backbones import Backbone, build_backbone
from engine.checkpoint import read_checkpoint
from engine.commit import finish_commit, unfinished_commit
from engine.epoch_progress import check_resume_fields
from engine.run_files import RunFiles
from experiments.arguments import RunArguments
from experiments.flags import ResumeRules
from utils.atomic import TEXT_ENCODING, save_json
from utils.checkpoint_fields import INTEGER_LIMIT, check_number, field_error
from utils.console import say
from utils.entry import INTERRUPTED
from utils.errors import StopRequested, UserError
from utils.seeds import resolve_seed
from utils.threads import thread_settings

REPO = Path(__file__).resolve().parents[1]


class Terminated(Exception):
    """SIGTERM outside a training loop (which handles it itself, saving a checkpoint)."""


def _terminate(signum, frame) -> None:
    raise Terminated()


def run_main(main: Callable[[], None]) -> None:
    """Run a stage; a problem the user can fix becomes one line on stderr and exit status 2."""
    prog = Path(sys.argv[0]).name
    for stream in (sys.stdout, sys.stderr):  # printed paths as the files name them (TEXT_ENCODING)
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors=TEXT_ENCODING["errors"])
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main_thread else None
    # While the stage runs, Ctrl-C is Python's KeyboardInterrupt (the training loop turns it
    # into a stop after the step); before and after, the scripts' handler (utils/entry.py).
    previous_interrupt = signal.signal(signal.SIGINT, signal.default_int_handler) if in_main_thread else None
    try:
        try:
            main()
        finally:
            if previous_interrupt is not None:  # None: not in the main thread, or a handler set outside Python
                signal.signal(signal.SIGINT, previous_interrupt)
    except Terminated:
        sys.stderr.write(
            f"{prog}: terminated; files saved before are intact (a stage-1 run continues with --resume auto)\n"
        )
        sys.exit(128 + signal.SIGTERM)
    except StopRequested as stop:  # asked for: said as a stop, not as an error
        sys.stderr.write(f"{prog}: {stop}\n")
        sys.exit(stop.exit_status)
    except UserError as error:
        sys.stderr.write(f"{prog}: error: {error}\n")
        sys.exit(getattr(error, "exit_status", 2))
    except KeyboardInterrupt:  # outside the training loop, or a second Ctrl-C inside it
        sys.stderr.write(f"{prog}: {INTERRUPTED}\n")
        sys.exit(128 + signal.SIGINT)
    except OSError as error:  # a full disk, a read-only folder, a file where a folder should be
        where = f": {error.filename}" if error.filename else ""
        sys.stderr.write(f"{prog}: error: {error.strerror or error}{where}\n")
        sys.exit(1)
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


def stage_backbone(name: str, stem: str | None, device: torch.device, weights: dict | None = None) -> Backbone:
    """The backbone a stage runs, as every stage starts it: `name` built with `stem`, described,
    and loaded with a checkpoint's `weights` when given (checked against it by `check_backbone`)."""
    backbone = build_backbone(name, stem)
    # A machine without a GPU is no news on each run; a GPU left unused is.
    if device.type != "cuda" and torch.cuda.is_available():
        say("[INFO] Running on the CPU although CUDA is available.")
    trainable = sum(p.numel() for p in backbone.parameters() if p.requires_grad)
    say(f"[INFO] {name}{f' ({stem} stem)' if stem else ''} loaded in memory.")
    say(f"[INFO] Feature size: {backbone.feature_size}")
    say(f"[INFO] Feature extractor TOT trainable params: {trainable}")
    if torch.cuda.is_available():
        say(f"[INFO] Found {torch.cuda.device_count()} GPU(s) available.")
    say(f"[INFO] Device type: {device}")
    if weights is not None:
        say("[INFO] Loading checkpoint...")
        backbone.load_state_dict(weights)
    return backbone


def backbone_inputs_normalised(state: dict, path: str | Path) -> bool:
    """Whether the backbone of checkpoint `state` (read from `path`) is fed normalised images,
    as its `inputs_normalised` entry says (`Method.normalises_inputs` of the method that
    trained it, which stage 1 records and stage 2 carries over). A file without the entry was
    trained on normalised images: the original code's, and every file of this suite written
    before relic's views stayed in [0, 1], relic's included."""
    recorded = state.get("inputs_normalised", True)
    if type(recorded) is not bool:
        raise field_error(path, "inputs_normalised", f"is {str(recorded)[:40]!r}, not true or false")
    return recorded


def inputs_entry(normalised: bool) -> dict:
    """The checkpoint's `inputs_normalised` key; absent for normalised inputs, so that those
    checkpoints keep the keys of the original code."""
    return {} if normalised else {"inputs_normalised": False}


def stem_entry(stem: str | None) -> dict:
    """The checkpoint's `stem` key; absent for a backbone with a single stem, so that its
    checkpoints keep the keys of the original code."""
    return {"stem": stem} if stem else {}


def stored_seed(state: dict) -> int | None:
    """The seed a checkpoint records, when it is one a run could have used (0 to 2^31 - 1)."""
    seed = state.get("seed")
    return seed if type(seed) is int and 0 <= seed < 2**31 else None


def run_seed(args: argparse.Namespace, checkpoint: dict | None = None) -> int:
    """The run's seed: `--seed`, or for -1 one drawn now, which names the run's files and is
    recorded as the value used. `--resume PATH` with -1 takes the seed stored in the checkpoint;
    `--resume auto` needs the seed to find the run's files. A stage that reads the `checkpoint`
    of an earlier stage takes its seed for -1, so that the stages of one run share their seed
    (and its file names and subsets) by default."""
    resume = getattr(args, "resume", None)
    if args.seed >= 0:
        return args.seed
    if resume == "auto":
        raise UserError(
            "--resume auto with --seed -1: a run's files are named by the seed it drew; pass that "
            "--seed N (printed at the run's start and recorded in its config)"
        )
    stored = read_checkpoint(resume).get("seed") if resume else None
    if stored is not None:
        check_number(stored, 0, 0, INTEGER_LIMIT, resume, "seed")  # it names the run's files
        return stored
    if checkpoint is not None and stored_seed(checkpoint) is not None:
        seed = stored_seed(checkpoint)
        say(f"[INFO] Seed {seed}: the checkpoint's (--seed N chooses another)")
        return seed
    seed = resolve_seed(args.seed)
    say(f"[INFO] --seed -1: drew seed {seed}, which names this run's files")
    return seed


def code_version() -> dict:
    """The git commit of the code and whether it differs from it (tracked files), when the code
    is a git checkout; empty otherwise."""

    def git(*command: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(REPO), *command], capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    top = git("rev-parse", "--show-toplevel")
    if not top or Path(top).resolve() != REPO:  # not a checkout of this code (maybe a folder inside another)
        return {}
    commit = git("rev-parse", "HEAD")
    changes = git("status", "--porcelain", "--untracked-files=no")
    return {"git_commit": commit, "git_dirty": bool(changes)} if changes is not None else {"git_commit": commit}


def run_configuration(args: RunArguments, seed: int, device: torch.device, stage: str, **extra) -> dict:
    """The run's full configuration: every argument with the value used, the seed, the device,
    the versions of the code and of its libraries."""
    return {
        "stage": stage,
        "args": args.record(),
        "seed_used": seed,
        "device": str(device),
        **code_version(),
        "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "host": platform.node(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        **thread_settings(),
        "pid": os.getpid(),
        **extra,
    }


def record_config(path: Path, args: RunArguments, seed: int, device: torch.device, stage: str, **extra) -> None:
    """Write the run's full configuration (`run_configuration`) beside its checkpoint."""
    save_json(run_configuration(args, seed, device, stage, **extra), path)


class ResumePoint(NamedTuple):
    path: Path  # the checkpoint resumed from
    state: dict  # its content
    files: RunFiles  # the files of the run it continues
    unfinished: bool  # the stopped run had not written all the files of its last epoch

    def finish(self) -> None:
        """Write the files of the last epoch that the stopped run had not written
        (`finish_commit`). Called once the state is checked against the built method too, so
        a refused file writes nothing, and only by the one process of a torchrun run that
        writes files."""
        completed = finish_commit(self.state, self.files, self.path)
        if completed:
            say(
                f"[INFO] The stopped run had saved epoch {self.state['epoch']} but not all its files: wrote "
                + ", ".join(path.name for path in completed)
            )


def resume_point(
    args: RunArguments,
    files: RunFiles,
    rules: ResumeRules,
    world_size: int = 1,
    without_state: str = "it cannot be resumed",
    check_kind: Callable[[dict, Path], None] | None = None,
) -> ResumePoint:
    """The checkpoint `--resume auto|PATH` names and its state, after checking that it is a
    file of this stage (`check_kind`), that the run was made with the same arguments (`rules`:
    any value of those that may change; one the file does not record only at its default, as
    the code ran before its flag existed) and as many processes,
    that the entries the engine restores fit (`check_resume_fields`) and its epoch's commit names
    the run's own files. Writes nothing: `ResumePoint.finish` completes that commit once the
    stage has checked the rest of the state against the method it built.

    `auto` is the run's rolling checkpoint, the last file every run writes after an epoch or
    on a stop: never a numbered checkpoint, which could be another run's that used the name."""
    path = files.last_checkpoint if args.resume == "auto" else Path(args.resume)
    if args.resume == "auto" and not path.exists():
        raise UserError(
            f"--resume auto: no {path.name} in {files.directory} (the file every run of "
            f"{files.header} writes after its first epoch): start the run without --resume, "
            "or pass --resume PATH to continue from a numbered checkpoint"
        )
    state = read_checkpoint(path)
    if "epoch" not in state or "args" not in state:
        raise UserError(
            f"--resume {path}: written by the original code (no epoch or arguments stored); {without_state}"
        )
    if check_kind is not None:
        check_kind(state, path)
    stored = state["args"]
    if not isinstance(stored, dict) or not all(isinstance(key, str) for key in stored):
        raise UserError(
            f"--resume {path}: its 'args' entry is a {type(stored).__name__}, not the record of a "
            "run's arguments: the file is damaged or forged; resume from the file the run wrote"
        )
    record = args.record()
    may_change = rules.may_change
    missing = sorted(
        key
        for key, value in record.items()
        if key not in may_change and key not in stored and not same_value(value, rules.defaults.get(key, MISSING))
    )
    if missing:
        raise UserError(
            f"--resume {path}: the file does not record the run's "
            f"{', '.join('--' + key for key in missing[:5])}{' ...' if len(missing) > 5 else ''}, so "
            "it cannot be shown to be this run: start a new run, or continue its weights with "
            "--checkpoint PATH"
        )
    changed = [
        f"--{k} {stored[k]!r} -> {value!r}"
        for k, value in sorted(record.items())
        if k not in may_change and k in stored and not same_value(stored[k], value)
    ]
    if changed:
        raise UserError(
            f"--resume {path}: the run was made with other arguments ({'; '.join(changed)}); "
            "repeat its arguments or start a new run with --id"
        )
    if state.get("world_size", 1) != world_size:
        raise UserError(
            f"--resume {path}: the run was made with {state.get('world_size', 1)} process(es), "
            f"this one has {world_size}; resume it with as many (torchrun --nproc_per_node)"
        )
    check_resume_fields(state, world_size, path)
    return ResumePoint(path, state, files, unfinished_commit(state, files, path) is not None)


# The default of an argument whose flag declares none: never equal to a value.
MISSING = object()


def same_value(first: object, second: object) -> bool:
    """Equal and of the same type: a recorded 1 is not the flag's 1.0, nor True its 1."""
    return type(first) is type(second) and first == second


def finished_as_asked(resume: ResumePoint, epochs: int) -> bool:
    """Whether the resumed run had trained and saved all of the `epochs` it was started with:
    `--resume auto` on it has nothing left to do (a requeued job ends well). A run asked for
    fewer or more epochs than it was started with is not."""
    stored = resume.state["args"].get("epochs")
    return resume.state["epoch"] == epochs and stored == epochs and not resume.unfinished
