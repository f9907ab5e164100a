"""Checkpoint files: atomic saves that survive failures, and safe, clear loading."""

from __future__ import annotations

import errno
import os
import pickle
import stat
import zipfile

import pytest
import torch

from engine import checkpoint
from engine.checkpoint import (
    atomic_write_bytes,
    check_backbone,
    identify_backbone,
    read_checkpoint,
    save_checkpoint,
    save_json,
    write_csv,
)
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
    "name,stem",
    [
        ("conv4", None),
        ("resnet34", None),
        ("resnet18", "cifar"),
        ("resnet18", "imagenet"),
        ("resnet50", "cifar"),
        ("resnet50", "imagenet"),
    ],
)
def test_the_backbone_and_stem_of_a_checkpoint_are_told_from_its_weights(name, stem):
    state = backbone_state(name, stem)
    assert identify_backbone(state["backbone"]) == (name, stem)
    assert check_backbone(state, name, "c.tar") == stem  # --stem auto takes the checkpoint's
    assert check_backbone(state, name, "c.tar", stem) == stem


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


def test_a_checkpoint_of_another_stem_or_backbone_is_refused_with_the_fix():
    cifar = backbone_state("resnet18", "cifar")
    assert (
        refusal(cifar, "resnet18", "c.tar", "imagenet")
        == "checkpoint c.tar holds a resnet18 backbone with the cifar stem, not the imagenet stem: pass --stem cifar"
    )
    assert (
        refusal(cifar, "resnet50", "c.tar")
        == "checkpoint c.tar holds a resnet18 backbone with the cifar stem, not resnet50: pass --backbone resnet18"
    )
    assert refusal(cifar, "resnet50", "c.tar", "imagenet").endswith("pass --backbone resnet18 --stem cifar")
    assert (
        refusal(backbone_state("conv4"), "resnet18", "c.tar", "cifar")
        == "checkpoint c.tar holds a conv4 backbone, not resnet18: pass --backbone conv4"
    )
    assert refusal(backbone_state("resnet50", "imagenet"), "resnet34", "c.tar").endswith("pass --backbone resnet50")


def test_a_stem_for_a_single_stem_backbone_is_refused_before_the_weights_are_compared():
    assert refusal(backbone_state("resnet34"), "resnet34", "c.tar", "imagenet").startswith(
        "--stem imagenet: backbone resnet34 has a single stem; drop --stem"
    )


def test_csv_logs_write_floats_with_fixed_significant_digits(tmp_path):
    path = tmp_path / "log.csv"
    checkpoint.append_csv_row(
        path, ["epoch", "accuracy", "loss"], {"epoch": 1, "accuracy": 28.000000000000004, "loss": 1 / 3}
    )
    checkpoint.write_csv(tmp_path / "rewritten.csv", ["loss"], [{"loss": 2 / 3}, {"loss": 1e-9 / 3}])
    assert path.read_text().splitlines()[1] == "1,28,0.33333333"
    assert (tmp_path / "rewritten.csv").read_text().splitlines()[1:] == ["0.66666667", "3.3333333e-10"]


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


def test_a_full_disk_names_the_file_being_written(tmp_path, monkeypatch, capsys):
    from experiments.stage import run_main

    path = tmp_path / "run" / "log_run.csv"

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.os, "fsync", disk_full)
    with pytest.raises(SystemExit) as exit_info:
        run_main(lambda: write_csv(path, ["epoch"], [{"epoch": 0}]))
    assert exit_info.value.code == 1
    assert capsys.readouterr().err.strip().endswith(f"error: No space left on device: {path}")
    assert not path.parent.exists() or not list(path.parent.iterdir())
