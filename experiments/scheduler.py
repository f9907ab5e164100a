"""The scheduler of a grid's stages: each in a child process in its own slot of CPUs (and GPU),
started when the stage it needs has finished, its progress shown on live lines."""

from __future__ import annotations

import shlex
import signal
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from engine.locks import GRID_ENVIRONMENT, RunLock
from experiments.grid_plan import Run, RunStage, Stage
from experiments.parallel import Activity, Slot, make_slots, read_epoch_progress, start_child
from utils.atomic import TEXT_ENCODING
from utils.errors import StopRequested, UserError
from utils.threads import usable_cpus

if TYPE_CHECKING:  # the grid imports this module to run its tasks
    from experiments.grid import Grid

# How long a stage whose lock an earlier grid's child still holds is waited for: a killed
# grid's children stop after their current step (parent-death signal).
LOCK_WAIT_SECONDS = 30.0


class GridStopped(UserError):
    def __init__(self, message: str, exit_status: int):
        super().__init__(message)
        self.exit_status = exit_status


def last_error(log_path: Path) -> str:
    lines = [line.strip() for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if "error:" in line or "interrupted" in line or "stopped" in line]
    return (errors or lines or ["no output"])[-1]


@dataclass(eq=False)
class Task:
    """One stage to run: a stage-1 run shared by several runs is one task."""

    stage: RunStage
    runs: list[Run]
    number: int  # the first run's place in the grid, 1-based
    needs: "Task | None" = None
    done: bool = False
    started: float = 0.0

    def label(self, total: int) -> str:
        shared = f" (+{len(self.runs) - 1} runs)" if len(self.runs) > 1 else ""
        return f"[{self.number}/{total}] {self.runs[0].name}{shared}"

    @property
    def stage_name(self) -> str:
        return {
            Stage.PRETRAIN: "stage 1/3 pretraining",
            Stage.EVALUATE: "stage 2/3 " + ("fine-tuning" if self.runs[0].condition.finetune else "linear evaluation"),
            Stage.TEST: "stage 3/3 test",
        }[self.stage.kind]


class Scheduler:
    """Runs a grid's tasks in `--jobs` child processes, each in its own slot of CPUs (and GPU); a
    task starts when the one it needs has finished. A failure or SIGINT/SIGTERM stops every
    child after its current step (they save a resumable checkpoint), and then the grid."""

    def __init__(self, grid: Grid, tasks: list[Task]):
        self.grid = grid
        self.live = grid.live
        self.pending = tasks
        self.total = len(grid.runs)
        self.free = make_slots(grid.args.jobs, grid.args.gpus, usable_cpus())
        self.running: dict[Task, tuple[subprocess.Popen, Slot, Activity]] = {}
        self.seconds_per_unit: dict[tuple[Stage, str], list[float]] = {}
        self.stop_signal: int | None = None
        self.failure: str | None = None

    def run(self) -> None:
        previous = {s: signal.signal(s, self.on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            while self.pending or self.running:
                if self.stop_signal is None and self.failure is None:
                    self.start_ready()
                self.collect()
                if not self.running and (self.stop_signal is not None or self.failure is not None):
                    break
                self.show()
                time.sleep(0.2)
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            self.live.close()
        if self.stop_signal is not None:
            raise StopRequested(
                self.stop_signal,
                f"grid stopped by {signal.Signals(self.stop_signal).name}; run the same command "
                "again to continue it: finished runs are kept and an interrupted training "
                "resumes from its last checkpoint",
            )
        if self.failure is not None:
            raise GridStopped(self.failure, 1)

    def on_signal(self, signum, frame) -> None:
        """Ctrl-C reaches the grid only (the children have their own sessions): pass it on, so a
        second one stops them at once, as it would a stage run by hand."""
        self.stop_signal = self.stop_signal or signum
        for child, _, _ in self.running.values():
            child.send_signal(signum)

    def start_ready(self) -> None:
        for task in list(self.pending):
            if not self.free:
                return
            if task.needs is not None and not task.needs.done:
                continue
            self.failure = self.held_elsewhere(task)
            if self.failure is not None:
                self.stop_all()
                return
            self.pending.remove(task)
            self.start(task)

    def stop_all(self) -> None:
        for child, _, _ in self.running.values():
            child.send_signal(signal.SIGTERM)

    def held_elsewhere(self, task: Task) -> str | None:
        """A stage still held by a process of an earlier grid (stopping after a kill of the grid)
        or by a run started by hand would fail on its lock: wait a little, then say whom to wait for."""
        if task.stage.files is None:
            return None
        lock = RunLock(task.stage.files.lock)
        deadline = time.time() + LOCK_WAIT_SECONDS
        holder = lock.holder()
        while holder is not None and time.time() < deadline and self.stop_signal is None:
            time.sleep(0.5)
            holder = lock.holder()
        if holder is None:
            return None
        return (
            f"{task.stage.files.lock} is held by process {holder} (a stage of an earlier grid that is "
            f"still stopping, or a run started by hand): wait for it to end and run the same command "
            f"again, or end it with `kill {holder.split()[-1]}` (it saves a resumable checkpoint first)"
        )

    def start(self, task: Task) -> None:
        slot = self.free.pop(0)
        argv = self.grid.command(task)
        log_path = self.grid.out / "logs" / f"{task.runs[0].name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        label = task.label(self.total)
        files = task.stage.files
        activity = Activity(label, task.stage_name, task.stage.epochs, files.log if files else None)
        task.started = time.time()

        def register(child: subprocess.Popen) -> None:
            self.running[task] = (child, slot, activity)

        with open(log_path, "a", **TEXT_ENCODING) as log:
            log.write(f"\n$ {shlex.join(argv)}\n")
            log.flush()
            start_child(argv, log, slot, register, {GRID_ENVIRONMENT: str(self.grid.out)})
        self.live.event(
            f"{label}: {task.stage.kind.script} {'(resumed) ' if '--resume' in argv else ''}..."
            + (f" ({slot.describe()})" if self.grid.args.jobs > 1 else "")
        )

    def collect(self) -> None:
        for task, (child, slot, _) in list(self.running.items()):
            status = child.poll()
            if status is None:
                continue
            del self.running[task]
            self.free.append(slot)
            self.free.sort(key=lambda s: s.index)
            seconds = time.time() - task.started
            self.grid.add_timing(task.stage, seconds)
            label = task.label(self.total)
            log = self.grid.out / "logs" / f"{task.runs[0].name}.log"
            if status != 0:
                if self.stop_signal is None and self.failure is None:
                    self.failure = (
                        f"{task.stage.kind.script} failed for run {task.runs[0].name} (exit status {status}): "
                        f"{last_error(log)} [full output: {log}]; runs finished before are kept"
                    )
                    self.stop_all()
                continue
            task.done = True
            self.seconds_per_unit.setdefault((task.stage.kind, task.runs[0].method), []).append(
                seconds / max(1, task.stage.epochs)
            )
            self.live.event(f"{label}: {task.stage.kind.script} finished in {seconds:.0f}s")
            if task.stage.kind is Stage.TEST:
                try:
                    self.grid.save_record(task.runs[0])
                except UserError as unreadable:
                    self.failure = self.failure or f"{unreadable}; runs finished before are kept"
                    self.stop_all()

    def estimate(self, task: Task) -> float | None:
        """Seconds a task should take, from the tasks of its stage (and method) done so far."""
        same = self.seconds_per_unit.get((task.stage.kind, task.runs[0].method))
        if not same:
            same = [
                v for (stage, _), values in self.seconds_per_unit.items() if stage is task.stage.kind for v in values
            ]
        return statistics.fmean(same) * max(1, task.stage.epochs) if same else None

    def show(self) -> None:
        now = time.time()
        left = {}
        progress = {}
        for task, (_, _, activity) in self.running.items():
            progress[task] = read_epoch_progress(activity.log)
            left[task] = activity.seconds_left(now, progress[task], self.estimate(task))
        runs_left = {}
        for task in self.running:
            later = [self.estimate(t) for t in self.pending if t.runs[0] is task.runs[0]]
            runs_left[task] = None if left[task] is None or None in later else left[task] + sum(later)
        grid_left = self.grid_left(list(left.values()) + [self.estimate(task) for task in self.pending], runs_left)
        lines = [
            activity.line(now, progress[task], runs_left[task], grid_left)
            for task, (_, _, activity) in self.running.items()
        ]
        self.live.status(lines, now)

    def grid_left(self, stages_left: list[float | None], runs_left: dict[Task, float | None]) -> float | None:
        """Seconds until the grid ends: its stages' time shared by the jobs, and never less than
        the longest run still going (its stages follow one another, whatever the jobs)."""
        if any(seconds is None for seconds in stages_left):
            return None
        shared = sum(seconds for seconds in stages_left if seconds is not None) / self.grid.args.jobs
        return max([shared, *(seconds for seconds in runs_left.values() if seconds is not None)])
