"""Stage scripts side by side on one machine: which CPUs and GPU each child gets, children
that die with the grid, and the live lines that show what they are doing.

Two runs sharing 2 cores slow each other down when OpenMP's idle threads spin (a Conv-4
epoch of 4,000 images: 25 s each instead of 10 s alone). So every child gets its own share
of the CPUs the grid may use (threads and affinity, which no other child uses, so its threads'
waiting takes nothing from another), and on CUDA its own GPU.
"""

from __future__ import annotations

import csv
import ctypes
import io
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Callable

import torch

from utils.runtime import available_memory, format_duration
from utils.threads import THREAD_VARIABLES, usable_cpus

# A CPU job's memory need, for the automatic --jobs: relationnet Conv-4 at K 32 peaks at
# 1.5 GB, ResNet-32 in fp32 above 3 GB.
MEMORY_PER_CPU_JOB = 4 * 2**30
PR_SET_PDEATHSIG = 1  # linux/prctl.h
_LIBC = None
if sys.platform.startswith("linux"):
    try:  # loaded here: a forked child should not load libraries before exec
        _LIBC = ctypes.CDLL(None, use_errno=True)
    except OSError:
        pass


def visible_gpus(device) -> list[str]:
    """The CUDA_VISIBLE_DEVICES values of the GPUs a grid on `device` may use (none on the CPU)."""
    if device.type != "cuda":
        return []
    parent = os.environ.get("CUDA_VISIBLE_DEVICES")
    names = (
        [name.strip() for name in parent.split(",")]
        if parent
        else [str(index) for index in range(torch.cuda.device_count())]
    )
    return [names[device.index]] if device.index is not None else names


def automatic_jobs(gpus: list[str], jobs_per_gpu: int) -> int:
    """One job per GPU (times `jobs_per_gpu`); on the CPU one per usable core, as far as the
    available memory allows."""
    if gpus:
        return len(gpus) * jobs_per_gpu
    memory = available_memory(torch.device("cpu"))
    by_memory = len(usable_cpus()) if memory is None else max(1, memory // MEMORY_PER_CPU_JOB)
    return max(1, min(len(usable_cpus()), by_memory))


@dataclass(frozen=True)
class Slot:
    """Where one child runs: its CPUs (and threads) and its GPU, if any."""

    index: int
    cpus: tuple[int, ...]
    gpu: str | None = None

    def describe(self) -> str:
        listed = ",".join(map(str, self.cpus)) if len(self.cpus) <= 4 else f"{self.cpus[0]}..{self.cpus[-1]}"
        cpus = f"CPU{'s' if len(self.cpus) > 1 else ''} {listed}"
        return cpus + (f", GPU {self.gpu}" if self.gpu is not None else "")

    def environment(self, base: dict[str, str]) -> dict[str, str]:
        env = dict(base)
        for name in THREAD_VARIABLES:
            env[name] = str(len(self.cpus))
        if self.gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = self.gpu
        return env


def make_slots(jobs: int, gpus: list[str], cpus: list[int]) -> list[Slot]:
    """`jobs` slots over the GPUs (round robin) and the CPUs (contiguous, equal shares; with more
    jobs than CPUs, one CPU each, shared)."""
    slots = []
    for index in range(jobs):
        if jobs <= len(cpus):
            share = tuple(cpus[index * len(cpus) // jobs : (index + 1) * len(cpus) // jobs])
        else:
            share = (cpus[index % len(cpus)],)
        slots.append(Slot(index, share, gpus[index % len(gpus)] if gpus else None))
    return slots


STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def _child_setup(parent: int, cpus: tuple[int, ...]) -> None:
    """In the child before exec: die with the grid (SIGTERM, so the stage saves a resumable
    checkpoint after its current step), stay on the slot's CPUs, and take the stop signals
    that `start_child` held back in the grid."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    if _LIBC is not None:
        _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the grid died before the line above
            os._exit(1)
    if cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cpus)


def start_child(
    argv: list[str], log: IO, slot: Slot, started: Callable[[subprocess.Popen], None], variables: dict[str, str]
) -> None:
    """A stage script in its own session (a terminal's Ctrl-C reaches the grid only, which
    forwards it once), with its output in `log` and `variables` added to its environment.
    SIGINT and SIGTERM wait until `started` has registered the child, so a stop asked
    meanwhile reaches it too."""
    parent = os.getpid()
    held = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        started(
            subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=slot.environment({**os.environ, **variables}),
                cwd=os.getcwd(),
                preexec_fn=lambda: _child_setup(parent, slot.cpus),
            )
        )
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


@dataclass
class EpochProgress:
    done: int
    loss: float | None


def read_epoch_progress(log: Path | None) -> EpochProgress | None:
    """Epochs finished and the last loss, from a stage's per-epoch CSV log (one row per epoch:
    rows are counted, so the epochs' numbering does not matter)."""
    if log is None or not log.exists():
        return None
    try:
        text = log.read_text(errors="replace")
        complete = text[: text.rfind("\n") + 1]  # without a row still being appended
        rows = [row for row in csv.DictReader(io.StringIO(complete, newline="")) if row.get("loss")]
    except (OSError, csv.Error):
        return None  # being rewritten: the next look will do
    try:
        loss = float(rows[-1]["loss"]) if rows else None
    except ValueError:
        loss = None
    return EpochProgress(len(rows), loss)


@dataclass
class Activity:
    """What one running child is doing, for its live line."""

    label: str  # "[3/10] cifar10_relationnet_conv4_seed_1"
    stage: str  # "stage 1/3 pretraining"
    epochs: int  # 0: a stage without epochs (the test)
    log: Path | None
    started: float = field(default_factory=time.time)
    first_seen: EpochProgress | None = None  # epochs already done when it started (a resume)

    def seconds_left(self, now: float, progress: EpochProgress | None, estimate: float | None) -> float | None:
        if self.first_seen is None:  # the first look comes right after the start
            self.first_seen = progress or EpochProgress(0, None)
        if progress is not None and self.epochs:
            new = progress.done - self.first_seen.done
            if new > 0:
                return (now - self.started) / new * max(0, self.epochs - progress.done)
        return None if estimate is None else max(0.0, estimate - (now - self.started))

    def line(self, now: float, progress: EpochProgress | None, left: float | None, grid_left: float | None) -> str:
        parts = [self.label, self.stage]
        if self.epochs:
            done = progress.done if progress else 0
            parts.append(f"epoch {min(done + 1, self.epochs)}/{self.epochs}")
            if progress and progress.loss is not None:
                parts.append(f"loss {progress.loss:.4g}")
        parts.append(f"elapsed {format_duration(now - self.started)}")
        parts.append(
            "left: run "
            + ("?" if left is None else f"~{format_duration(left)}")
            + ", grid "
            + ("?" if grid_left is None else f"~{format_duration(grid_left)}")
        )
        return " | ".join(parts)


def fit(line: str, width: int) -> str:
    """`line` in at most `width` characters: its first field (the run's name) shortened in the
    middle first, down to its number (`[3/10]`, which ties the line to the events above), so
    that the epoch, loss and times after it stay on a narrow terminal; then the end is cut."""
    if len(line) <= width:
        return line
    label, separator, rest = line.partition(" | ")
    number = label.split(" ", 1)[0]
    keep = max(width - len(separator) - len(rest) - 1, len(number) + 1)  # label characters besides "…"
    if separator and keep < len(label):
        head = max(keep - keep // 2, len(number) + 1)
        line = label[:head] + "…" + label[len(label) - (keep - head) :] + separator + rest
    return line[:width]


class LiveLines:
    """Events as plain lines, and under them one line per running stage: redrawn in place on a
    terminal, printed every `interval` seconds otherwise (a log file stays readable)."""

    def __init__(self, stream: IO = sys.stdout, interval: float = 30.0):
        self.stream = stream
        self.tty = stream.isatty()
        self.interval = 1.0 if self.tty else interval
        self.drawn = 0
        self.last = 0.0

    def _erase(self) -> None:
        if self.drawn:
            self.stream.write(f"\x1b[{self.drawn}F\x1b[J")
            self.drawn = 0

    def event(self, text: str) -> None:
        self._erase()
        self.stream.write(text + "\n")
        self.stream.flush()
        self.last = 0.0 if self.tty else self.last  # a terminal redraws its lines at once

    def status(self, lines: list[str], now: float) -> None:
        if not lines or now - self.last < self.interval:
            return
        self.last = now
        self._erase()
        width = shutil.get_terminal_size().columns - 1
        for line in lines:
            self.stream.write((fit(line, width) if self.tty else line) + "\n")
        self.drawn = len(lines) if self.tty else 0
        self.stream.flush()

    def close(self) -> None:
        self._erase()
        self.stream.flush()
