"""Checkpoint files: atomic saves that survive failures, and safe, clear loading."""
from __future__ import annotations

import errno
import os
import pickle
import zipfile

import pytest
import torch

from engine import checkpoint
from engine.checkpoint import atomic_write_bytes, read_checkpoint, save_checkpoint
from utils.errors import UserError


def test_a_failed_save_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "run_epoch_1.tar"
    save_checkpoint({"backbone": {"w": torch.ones(3)}, "epoch": 1}, path)

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(checkpoint.os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint({"backbone": {"w": torch.zeros(3)}, "epoch": 2}, path)
    monkeypatch.undo()
    assert read_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left behind


def test_a_write_killed_midway_never_replaces_the_file(tmp_path, monkeypatch):
    path = tmp_path / "log.csv"
    atomic_write_bytes(path, b"epoch,loss\n0,1.0\n")

    class Killed(BaseException):
        pass

    real_replace = os.replace

    def killed(*args):
        raise Killed
    monkeypatch.setattr(checkpoint.os, "replace", killed)
    with pytest.raises(Killed):
        atomic_write_bytes(path, b"partial")
    monkeypatch.setattr(checkpoint.os, "replace", real_replace)
    assert path.read_bytes() == b"epoch,loss\n0,1.0\n"
    assert len(list(tmp_path.iterdir())) == 1


class Payload:
    """Unpickling this would run code; `weights_only` loading must refuse it."""

    def __reduce__(self):
        return (os.system, ("echo should-not-run",))


@pytest.mark.parametrize("kind", ["text", "truncated", "zip", "code", "list", "no_backbone"])
def test_foreign_and_broken_files_give_one_line_errors(tmp_path, kind):
    path = tmp_path / "file.tar"
    good = tmp_path / "good.tar"
    torch.save({"backbone": {"w": torch.ones(100)}}, good)
    if kind == "text":
        path.write_text("not a checkpoint\n")
    elif kind == "truncated":
        path.write_bytes(good.read_bytes()[:-200])
    elif kind == "zip":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("readme.txt", "hello")
    elif kind == "code":
        path.write_bytes(pickle.dumps({"backbone": Payload()}))
    elif kind == "list":
        torch.save([torch.ones(2)], path)
    else:
        torch.save({"state_dict": {}}, path)
    with pytest.raises(UserError) as error:
        read_checkpoint(path)
    message = str(error.value)
    assert "\n" not in message and str(path) in message
