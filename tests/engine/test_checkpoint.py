"""Checkpoint files: atomic saves that survive failures, and safe, clear loading."""

from __future__ import annotations

import errno
import os
import pickle
import stat
import zipfile

import pytest
import torch

from engine.checkpoint import check_backbone, read_checkpoint, save_checkpoint
from engine.csv_log import write_csv
from utils import atomic
from utils.atomic import save_json
from utils.errors import UserError


def test_a_failed_save_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "run_epoch_1.tar"
    save_checkpoint({"backbone": {"w": torch.ones(3)}, "epoch": 1}, path)

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint({"backbone": {"w": torch.zeros(3)}, "epoch": 2}, path)
    monkeypatch.undo()
    assert read_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left behind


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


def backbone_state(name: str, stem: str | None = None) -> dict:
    """A checkpoint of backbone `name`, freshly initialised."""
    from backbones import build_backbone

    return {"backbone": build_backbone(name, stem).state_dict()}


def refusal(*args) -> str:
    with pytest.raises(UserError) as error:
        check_backbone(*args)
    message = str(error.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    "damage, words",
    [
        (lambda weight: weight.long(), "is a torch.int64 tensor where this run holds torch.float32"),
        (lambda weight: torch.full_like(weight, float("nan")), "non-finite values"),
        (lambda weight: torch.full_like(weight, float("-inf")), "non-finite values"),
        (lambda weight: weight.to("meta"), "without values"),
    ],
)
def test_backbone_weights_that_loading_would_cast_or_that_are_not_finite_are_refused(damage, words):
    state = backbone_state("conv4")
    state["backbone"]["layer2.conv.weight"] = damage(state["backbone"]["layer2.conv.weight"])
    message = refusal(state, "conv4", "c.tar")
    assert message.startswith("checkpoint c.tar: its 'backbone.layer2.conv.weight' entry ") and words in message


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_atomic_writes_get_the_mode_a_plain_open_gives(tmp_path, umask):
    previous = os.umask(umask)
    try:
        save_checkpoint({"backbone": {"w": torch.ones(3)}}, tmp_path / "run_epoch_1.tar")
        save_json({"seed": 1}, tmp_path / "config_run.json")
        write_csv(tmp_path / "log_run.csv", ["epoch", "loss"], [{"epoch": 0, "loss": 1.5}])
        (tmp_path / "plain.txt").write_text("x")
    finally:
        os.umask(previous)
    modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in tmp_path.iterdir()}
    assert modes == dict.fromkeys(modes, 0o666 & ~umask)  # not mkstemp's 0o600


def test_the_stem_of_a_checkpoint_is_returned_and_checked():
    state = backbone_state("resnet18", "imagenet")
    assert check_backbone(state, "resnet18", "c.tar") == "imagenet"  # --stem auto takes the checkpoint's
    assert check_backbone(state, "resnet18", "c.tar", "imagenet") == "imagenet"
    assert refusal(state, "resnet18", "c.tar", "cifar").endswith("pass --stem imagenet")
