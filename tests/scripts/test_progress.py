"""What a person sees while stage 1 trains: on a terminal (a pseudo-terminal here) the progress
bar shows the loss, `epoch N/total` and the run's remaining time; piped, the epoch lines alone.
Epochs count from 1 everywhere: lines, bar, the CSV log and the checkpoint names."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import sys
import termios

import experiments.pretraining as stage1
from tests.helpers import REPO, load, read_log, run_stage, stage_arguments


def stage1_command(root, out) -> list[str]:
    return [
        sys.executable,
        "train_unsupervised.py",
        *stage_arguments(root, out),
        "--method",
        "relationnet",
        "--K",
        "2",
        "--data_size",
        "50",
        "--epochs",
        "2",
    ]


def run_on_a_terminal(command: list[str]) -> str:
    """Everything the command writes to a 120-column pseudo-terminal (its stdout and stderr)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    child = subprocess.Popen(command, cwd=REPO, stdin=slave, stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    chunks = []
    while True:
        ready, _, _ = select.select([master], [], [], 300)
        if not ready:
            child.kill()
            break
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert child.wait(timeout=60) == 0, b"".join(chunks).decode(errors="replace")[-2000:]
    return b"".join(chunks).decode(errors="replace")


def test_the_bar_shows_the_loss_epoch_and_time_left_on_a_terminal(small_cifar10_root, tmp_path):
    screen = run_on_a_terminal(stage1_command(small_cifar10_root, tmp_path))
    assert "Epoch 1/2:" in screen and "Epoch 2/2:" in screen  # the bars
    assert "loss=" in screen and "run left" in screen
    assert "Epoch 1/2 [" in screen and "Epoch 2/2 [" in screen  # the epoch lines


def test_piped_output_has_epoch_lines_and_every_count_is_one_based(small_cifar10_root, tmp_path, capsys):
    # In this process, under pytest's capture: stdout and stderr are pipes, not a terminal.
    run_stage(stage1, stage1_command(small_cifar10_root, tmp_path)[2:])
    shown = capsys.readouterr()
    assert "loss=" not in shown.out + shown.err  # no bar when nobody watches
    lines = [line for line in shown.out.splitlines() if line.startswith("Epoch ")]
    assert [line.split()[1] for line in lines] == ["1/2", "2/2"] and "run left 0:00:00" in lines[1]
    folder = tmp_path / "relationnet" / "cifar10"
    rows = read_log(folder / "log_relationnet_cifar10_conv4_seed_1.csv")
    assert [row["epoch"] for row in rows] == ["1", "2"]
    for row in rows:  # row N is the state saved as _epoch_N.tar
        assert load(folder / f"relationnet_cifar10_conv4_seed_1_epoch_{row['epoch']}.tar")["epoch"] == int(row["epoch"])
