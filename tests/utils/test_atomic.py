"""Atomic writes: a write killed or failing midway leaves the previous file, and names the target."""

from __future__ import annotations

import errno
import os

import pytest

from engine.csv_log import write_csv
from utils import atomic
from utils.atomic import atomic_write_bytes


def test_a_write_killed_midway_never_replaces_the_file(tmp_path, monkeypatch):
    path = tmp_path / "log.csv"
    atomic_write_bytes(path, b"epoch,loss\n0,1.0\n")

    class Killed(BaseException):
        pass

    real_replace = os.replace

    def killed(*args):
        raise Killed

    monkeypatch.setattr(atomic.os, "replace", killed)
    with pytest.raises(Killed):
        atomic_write_bytes(path, b"partial")
    monkeypatch.setattr(atomic.os, "replace", real_replace)
    assert path.read_bytes() == b"epoch,loss\n0,1.0\n"
    assert len(list(tmp_path.iterdir())) == 1


def test_a_full_disk_names_the_file_being_written(tmp_path, monkeypatch, capsys):
    from experiments.stage import run_main

    path = tmp_path / "run" / "log_run.csv"

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", disk_full)
    with pytest.raises(SystemExit) as exit_info:
        run_main(lambda: write_csv(path, ["epoch"], [{"epoch": 0}]))
    assert exit_info.value.code == 1
    assert capsys.readouterr().err.strip().endswith(f"error: No space left on device: {path}")
    assert not path.parent.exists() or not list(path.parent.iterdir())
