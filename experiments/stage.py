"""Pieces every stage script shares: error reporting, start-up messages, the run's config."""
from __future__ import annotations

import argparse
import os
import platform
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from engine.checkpoint import RunFiles, read_checkpoint, save_json
from utils.errors import UserError
from utils.threads import thread_settings


class Terminated(Exception):
    """SIGTERM outside a training loop (which handles it itself, saving a checkpoint)."""


def _terminate(signum, frame) -> None:
    raise Terminated()


def run_main(main: Callable[[], None]) -> None:
    """Run a stage; a problem the user can fix becomes one line on stderr and exit status 2."""
    prog = Path(sys.argv[0]).name
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main_thread else None
    try:
        main()
    except Terminated:
        sys.stderr.write(f"{prog}: terminated; files saved before are intact (a stage-1 run "
                         "continues with --resume auto)\n")
        sys.exit(128 + signal.SIGTERM)
    except UserError as error:
        sys.stderr.write(f"{prog}: error: {error}\n")
        sys.exit(getattr(error, "exit_status", 2))
    except KeyboardInterrupt:  # outside the training loop, or a second Ctrl-C inside it
        sys.stderr.write(f"{prog}: interrupted; files saved before are intact (a stage-1 run "
                         "continues with --resume auto)\n")
        sys.exit(130)
    except OSError as error:  # a full disk, a read-only folder, a file where a folder should be
        where = f": {error.filename}" if error.filename else ""
        sys.stderr.write(f"{prog}: error: {error.strerror or error}{where}\n")
        sys.exit(1)
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


def describe_backbone(name: str, backbone: nn.Module, device: torch.device, stem: str | None = None) -> None:
    if device.type != "cuda":
        print("[WARNING] CUDA is not available." if not torch.cuda.is_available()
              else "[INFO] Running on the CPU although CUDA is available.")
    trainable = sum(p.numel() for p in backbone.parameters() if p.requires_grad)
    print(f"[INFO] {name}{f' ({stem} stem)' if stem else ''} loaded in memory.")
    print(f"[INFO] Feature size: {backbone.feature_size}")
    print(f"[INFO] Feature extractor TOT trainable params: {trainable}")
    print(f"[INFO] Found {torch.cuda.device_count()} GPU(s) available.")
    print(f"[INFO] Device type: {device}")


def stem_entry(stem: str | None) -> dict:
    """The checkpoint's `stem` key; absent for a backbone with a single stem, so that its
    checkpoints keep the keys of the original code."""
    return {"stem": stem} if stem else {}


def record_config(path: Path, args: argparse.Namespace, seed: int, device: torch.device,
                  stage: str, **extra) -> None:
    """Write the run's full configuration beside its checkpoint."""
    save_json({"stage": stage, "args": vars(args), "seed_used": seed, "device": str(device),
               "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
               "started": time.strftime("%Y-%m-%d %H:%M:%S"), "host": platform.node(),
               "python": platform.python_version(), "torch": torch.__version__,
               **thread_settings(), "pid": os.getpid(), **extra}, path)


def resume_point(args: argparse.Namespace, files: RunFiles, may_change: set[str], world_size: int = 1,
                 without_state: str = "it cannot be resumed") -> tuple[Path, dict]:
    """The checkpoint `--resume auto|PATH` names and its state, after checking that the run
    was made with the same arguments (except `may_change`) and as many processes."""
    path = files.latest_checkpoint() if args.resume == "auto" else Path(args.resume)
    if path is None:
        raise UserError(f"--resume auto: no checkpoint of {files.header} in {files.directory}; "
                        "start the run without --resume")
    state = read_checkpoint(path)
    if "epoch" not in state or "args" not in state:
        raise UserError(f"--resume {path}: written by the original code (no epoch or arguments "
                        f"stored); {without_state}")
    stored = state["args"]
    changed = [f"--{k} {stored[k]!r} -> {value!r}" for k, value in sorted(vars(args).items())
               if k not in may_change and k in stored and stored[k] != value]
    if changed:
        raise UserError(f"--resume {path}: the run was made with other arguments ({'; '.join(changed)}); "
                        "repeat its arguments or start a new run with --id")
    if state.get("world_size", 1) != world_size:
        raise UserError(f"--resume {path}: the run was made with {state.get('world_size', 1)} process(es), "
                        f"this one has {world_size}; resume it with as many (torchrun --nproc_per_node)")
    return path, state
