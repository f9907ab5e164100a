"""experiments/parallel.py: the CPU and GPU share of each job, the child's environment, the
progress read from a stage's CSV log and the live lines on a terminal and on a pipe."""

from __future__ import annotations

import io
import sys

import torch

from engine.csv_log import CsvLog
from experiments.parallel import (
    Activity,
    LiveLines,
    Slot,
    automatic_jobs,
    fit,
    make_slots,
    read_epoch_progress,
    start_child,
    visible_gpus,
)
from utils.threads import usable_cpus


def test_jobs_split_the_cpus_into_equal_shares_and_take_the_gpus_in_turn():
    slots = make_slots(2, [], [0, 1, 2, 3, 4])
    assert [slot.cpus for slot in slots] == [(0, 1), (2, 3, 4)] and slots[0].gpu is None
    slots = make_slots(3, ["4", "7"], [0, 1])  # more jobs than CPUs: one CPU each, shared
    assert [(slot.cpus, slot.gpu) for slot in slots] == [((0,), "4"), ((1,), "7"), ((0,), "4")]
    env = Slot(0, (2, 3), "7").environment({"OMP_NUM_THREADS": "16", "PATH": "/bin"})
    assert env == {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2", "CUDA_VISIBLE_DEVICES": "7", "PATH": "/bin"}
    assert visible_gpus(torch.device("cpu")) == []
    assert automatic_jobs(["0", "1"], 3) == 6
    assert 1 <= automatic_jobs([], 1) <= len(usable_cpus())


def test_a_child_runs_on_its_share_of_the_cpus_with_its_threads_in_its_own_session(tmp_path):
    cpu = usable_cpus()[-1]
    probe = (
        "import os, signal, torch; print(sorted(os.sched_getaffinity(0)), torch.get_num_threads(), "
        "os.getsid(0) == os.getpid(), signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, []))"
    )
    children = []
    with open(tmp_path / "log", "w") as log:
        start_child([sys.executable, "-c", probe], log, Slot(0, (cpu,)), children.append, {})
    assert children[0].wait(timeout=120) == 0
    assert (tmp_path / "log").read_text().split("\n")[0] == f"[{cpu}] 1 True False"


def test_progress_is_read_from_the_csv_log_whatever_the_epoch_numbering(tmp_path):
    log_path = tmp_path / "log.csv"
    assert read_epoch_progress(log_path) is None
    log = CsvLog(log_path)
    for epoch, loss in ((1, 0.9), (2, 0.75)):
        log.append({"epoch": epoch, "loss": loss, "seconds": 10})
    progress = read_epoch_progress(log_path)
    assert (progress.done, progress.loss) == (2, 0.75)
    with open(log_path, "a") as handle:
        handle.write("3,0.")  # a row being appended
    assert read_epoch_progress(log_path).done == 2

    activity = Activity("[2/6] cifar10_relationnet_conv4_seed_1", "stage 1/3 pretraining", 10, log_path, started=90.0)
    first = read_epoch_progress(log_path)
    assert activity.seconds_left(100.0, first, estimate=None) is None  # nothing trained yet in this process
    later = type(first)(5, 0.5)
    assert activity.seconds_left(120.0, later, estimate=None) == 10 * 5  # 3 new epochs in 30 s, 5 to go
    line = activity.line(120.0, later, 50.0, 65.0)
    assert line == (
        "[2/6] cifar10_relationnet_conv4_seed_1 | stage 1/3 pretraining | epoch 6/10 | loss 0.5 | "
        "elapsed 0:00:30 | left: run ~0:00:50, grid ~0:01:05"
    )
    fresh = Activity("[1/6] y", "stage 1/3 pretraining", 10, log_path, started=100.0)
    assert fresh.seconds_left(100.2, None, estimate=None) is None  # no log yet: it starts from epoch 0
    assert fresh.seconds_left(110.0, first, estimate=None) == 5 * 8  # 2 epochs in 10 s, 8 to go
    test = Activity("[2/6] x", "stage 3/3 test", 0, None, started=100.0)
    assert test.line(103.0, None, None, None) == "[2/6] x | stage 3/3 test | elapsed 0:00:03 | left: run ?, grid ?"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_live_lines_redraw_in_place_on_a_terminal_and_are_rationed_on_a_pipe():
    terminal = Terminal()
    live = LiveLines(terminal)
    live.status(["a 1", "b 1"], now=10.0)
    live.event("run 3 finished")
    live.status(["b 2"], now=10.5)  # at once after an event
    live.close()
    assert terminal.getvalue() == "a 1\nb 1\n\x1b[2F\x1b[Jrun 3 finished\nb 2\n\x1b[1F\x1b[J"

    pipe = io.StringIO()
    live = LiveLines(pipe, interval=30.0)
    for now in (100.0, 110.0, 131.0):
        live.status([f"a {now:.0f}"], now)
    live.event("done")
    assert pipe.getvalue() == "a 100\na 131\ndone\n"


def test_a_live_line_too_wide_for_the_terminal_shortens_the_run_name_first():
    line = "[1/4] cifar10_relationnet_conv4_seed_1 | stage 1/3 pretraining | epoch 2/3 | left: run ~0:01:05"
    assert fit(line, len(line)) == line
    short = fit(line, 80)
    assert len(short) == 80 and short.endswith("| stage 1/3 pretraining | epoch 2/3 | left: run ~0:01:05")
    assert short.startswith("[1/4] cifar") and "…" in short
    assert fit(line, 64) == "[1/4] … | stage 1/3 pretraining | epoch 2/3 | left: run ~0:01:05"[:64]
