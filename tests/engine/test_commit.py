"""The epoch commit's pieces alone: completing a half-done commit, the log's rewrite, the
files a run owns (its stage-2 runs and other runs are not its), logs that are not text."""

from __future__ import annotations

import pytest
import torch

from engine.checkpoint import save_checkpoint
from engine.commit import COMMIT, commit_epoch, finish_commit
from engine.csv_log import CsvLog, read_csv
from engine.run_files import RunFiles
from tests.helpers import load, one_line
from utils.errors import UserError

HEADER = "relationnet_cifar10_conv4_seed_1"


def run_files(tmp_path) -> RunFiles:
    files = RunFiles(tmp_path, "relationnet", "cifar10", HEADER)
    files.directory.mkdir(parents=True)
    return files


def journal_of(files: RunFiles, epoch: int = 1) -> dict:
    """The rolling checkpoint of a commit stopped after its first step."""
    state = {"backbone": {"w": torch.arange(3.0)}, "epoch": epoch}
    commit_epoch(
        state, {"epoch": epoch, "loss": 0.5}, CsvLog(files.log), [files.epoch_checkpoint(epoch)], files.last_checkpoint
    )
    files.epoch_checkpoint(epoch).unlink()  # as if the process died before writing it and the log
    files.log.unlink()
    return load(files.last_checkpoint)


def test_a_commit_stopped_after_its_rolling_checkpoint_is_completed_from_it(tmp_path):
    files = run_files(tmp_path)
    journal = journal_of(files)
    assert journal[COMMIT] == {
        "log": files.log.name,
        "row": {"epoch": 1, "loss": 0.5},
        "checkpoints": [files.epoch_checkpoint(1).name],
    }

    assert finish_commit(journal, files, files.last_checkpoint) == [files.epoch_checkpoint(1), files.log]
    saved = load(files.epoch_checkpoint(1))
    assert saved.keys() == {"backbone", "epoch"}  # the journal entry stays in _last.tar
    assert torch.equal(saved["backbone"]["w"], torch.arange(3.0))
    assert read_csv(files.log) == (["epoch", "loss"], [{"epoch": "1", "loss": "0.5"}])
    assert finish_commit(journal, files, files.last_checkpoint) == []  # whole now: nothing to write
    assert finish_commit({"epoch": 1, "interrupted": {}}, files, files.last_checkpoint) == []  # a stop inside an epoch


FORGED = {
    "an absolute log path": lambda pending, victim: {**pending, "log": str(victim / "rc")},
    "a log path out of the folder": lambda pending, victim: {**pending, "log": "../../../victim/rc"},
    "another run's log": lambda pending, victim: {**pending, "log": "log_simclr_cifar10_conv4_seed_1.csv"},
    "an absolute checkpoint path": lambda pending, victim: {**pending, "checkpoints": [str(victim / "important.txt")]},
    "a checkpoint path out of the folder": lambda pending, victim: {**pending, "checkpoints": ["../x.tar"]},
    "another epoch's checkpoint": lambda pending, victim: {**pending, "checkpoints": [f"{HEADER}_epoch_7.tar"]},
    "a checkpoints string": lambda pending, victim: {**pending, "checkpoints": f"{HEADER}.tar"},
    "a text in the row": lambda pending, victim: {**pending, "row": {"epoch": 1, "x": "x;touch PWNED;"}},
    "a column that is no name": lambda pending, victim: {**pending, "row": {"epoch": 1, "a,b\nc": 1.0}},
    "a row of another epoch": lambda pending, victim: {**pending, "row": {"epoch": 2, "loss": 0.5}},
    "a row that is a list": lambda pending, victim: {**pending, "row": [1, 2]},
    "an extra key": lambda pending, victim: {**pending, "run": "rm -rf"},
    "a string": lambda pending, victim: "x",
    "a log that is a number": lambda pending, victim: {**pending, "log": 5},
}


@pytest.mark.parametrize("forgery", FORGED)
def test_a_forged_commit_is_refused_before_anything_is_written(tmp_path, forgery):
    files = run_files(tmp_path / "out")
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "important.txt").write_text("keep me")
    journal = journal_of(files)
    journal[COMMIT] = FORGED[forgery](journal[COMMIT], victim)
    before = sorted(path.name for path in files.directory.iterdir())
    with pytest.raises(UserError) as error:
        finish_commit(journal, files, files.last_checkpoint)
    assert "epoch_commit" in one_line(error.value) and str(files.last_checkpoint) in str(error.value)
    assert sorted(path.name for path in files.directory.iterdir()) == before
    assert sorted(path.name for path in victim.iterdir()) == ["important.txt"]
    assert (victim / "important.txt").read_text() == "keep me"


@pytest.mark.parametrize("epoch", [0, -5, "1", 1.0, None])
def test_a_commit_of_a_state_without_a_whole_epoch_is_refused(tmp_path, epoch):
    files = run_files(tmp_path)
    journal = journal_of(files)
    with pytest.raises(UserError):
        finish_commit({**journal, "epoch": epoch}, files, files.last_checkpoint)
    assert not files.log.exists()


def test_the_log_keeps_the_rows_before_the_first_new_epoch_and_no_later_ones(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("epoch,loss\n0,1.0\n1,0.9\n2,0.8\n3,0.7\n")  # a resume from epoch 2
    log = CsvLog(path)
    log.append({"epoch": 2, "loss": 0.85, "lr": 0.1})
    assert read_csv(path) == (
        ["epoch", "loss", "lr"],
        [
            {"epoch": "0", "loss": "1.0", "lr": ""},
            {"epoch": "1", "loss": "0.9", "lr": ""},
            {"epoch": "2", "loss": "0.85", "lr": "0.1"},
        ],
    )


def test_a_log_that_is_not_text_is_one_line_naming_it(tmp_path):
    path = tmp_path / "log_run.csv"
    path.write_bytes(b"epoch,loss\n0,1.0\n1,\xff\xfe\n")
    with pytest.raises(UserError) as error:
        CsvLog(path).append({"epoch": 2, "loss": 0.5})
    assert str(path) in one_line(error.value) and "move it aside" in str(error.value)
    assert path.read_bytes().endswith(b"\xff\xfe\n")  # left as it was


def test_a_run_owns_its_files_and_not_those_named_after_it(tmp_path):
    files = RunFiles(tmp_path, "relationnet", "cifar10", "relationnet_cifar10_conv4_seed_1")
    own = [
        "relationnet_cifar10_conv4_seed_1_epoch_4.tar",
        "relationnet_cifar10_conv4_seed_1_last.tar",
        "relationnet_cifar10_conv4_seed_1.tar",
        "log_relationnet_cifar10_conv4_seed_1.csv",
        "config_relationnet_cifar10_conv4_seed_1.json",
    ]
    own_temporary = [
        ".relationnet_cifar10_conv4_seed_1_epoch_4.tar.0a1b2c3d.tmp",
        ".log_relationnet_cifar10_conv4_seed_1.csv.ffff0000.tmp",
    ]
    others = [
        "relationnet_cifar10_conv4_seed_1_epoch_4_linear_evaluation.tar",  # its stage 2
        "log_relationnet_cifar10_conv4_seed_1_epoch_4_linear_evaluation.csv",
        ".relationnet_cifar10_conv4_seed_1_epoch_4_linear_evaluation.tar.0a1b2c3d.tmp",
        "relationnet_cifar10_conv4_seed_10_epoch_4.tar",
        "relationnet_x_cifar10_conv4_seed_1_last.tar",
        ".relationnet_cifar10_conv4_seed_1.lock",
    ]
    files.directory.mkdir(parents=True)
    for name in own + own_temporary + others:
        save_checkpoint({"backbone": {}}, files.directory / name)
    assert [path.name for path in files.outputs()] == sorted(own)
    assert [path.name for path in files.remove_temporary()] == sorted(own_temporary)
    assert [path.name for path in files.remove_outputs()][0] == "relationnet_cifar10_conv4_seed_1_last.tar"
    assert sorted(path.name for path in files.directory.iterdir()) == sorted(others)
