"""The epoch commit's pieces alone: completing a half-done commit, the log's rewrite, the
files a run owns (its stage-2 runs and other runs are not its), logs that are not text."""
from __future__ import annotations

import pytest
import torch

from engine.checkpoint import CsvLog, RunFiles, read_csv, save_checkpoint
from engine.commit import COMMIT, commit_epoch, finish_commit
from tests.helpers import load, one_line
from utils.errors import UserError


def test_a_commit_stopped_after_its_rolling_checkpoint_is_completed_from_it(tmp_path):
    log = CsvLog(tmp_path / "log.csv")
    state = {"backbone": {"w": torch.arange(3.0)}, "epoch": 1}
    commit_epoch(state, {"epoch": 0, "loss": 0.5}, log, [tmp_path / "run_epoch_1.tar"], tmp_path / "run_last.tar")
    (tmp_path / "run_epoch_1.tar").unlink()  # as if the process died before writing it and the log
    (tmp_path / "log.csv").unlink()
    journal = load(tmp_path / "run_last.tar")
    assert journal[COMMIT] == {"log": "log.csv", "row": {"epoch": 0, "loss": 0.5}, "checkpoints": ["run_epoch_1.tar"]}

    assert finish_commit(journal, tmp_path) == [tmp_path / "run_epoch_1.tar", tmp_path / "log.csv"]
    assert load(tmp_path / "run_epoch_1.tar").keys() == state.keys()  # the journal entry stays in _last.tar
    assert torch.equal(load(tmp_path / "run_epoch_1.tar")["backbone"]["w"], state["backbone"]["w"])
    assert read_csv(tmp_path / "log.csv") == (["epoch", "loss"], [{"epoch": "0", "loss": "0.5"}])
    assert finish_commit(journal, tmp_path) == []  # whole now: nothing to write
    assert finish_commit({"epoch": 1, "interrupted": {}}, tmp_path) == []  # a stop inside an epoch


def test_the_log_keeps_the_rows_before_the_first_new_epoch_and_no_later_ones(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("epoch,loss\n0,1.0\n1,0.9\n2,0.8\n3,0.7\n")  # a resume from epoch 2
    log = CsvLog(path)
    log.append({"epoch": 2, "loss": 0.85, "lr": 0.1})
    assert read_csv(path) == (["epoch", "loss", "lr"], [{"epoch": "0", "loss": "1.0", "lr": ""},
                                                        {"epoch": "1", "loss": "0.9", "lr": ""},
                                                        {"epoch": "2", "loss": "0.85", "lr": "0.1"}])


def test_a_log_that_is_not_text_is_one_line_naming_it(tmp_path):
    path = tmp_path / "log_run.csv"
    path.write_bytes(b"epoch,loss\n0,1.0\n1,\xff\xfe\n")
    with pytest.raises(UserError) as error:
        CsvLog(path).append({"epoch": 2, "loss": 0.5})
    assert str(path) in one_line(error.value) and "move it aside" in str(error.value)
    assert path.read_bytes().endswith(b"\xff\xfe\n")  # left as it was


def test_a_run_owns_its_files_and_not_those_named_after_it(tmp_path):
    files = RunFiles(tmp_path, "relationnet", "cifar10", "relationnet_cifar10_conv4_seed_1")
    own = ["relationnet_cifar10_conv4_seed_1_epoch_4.tar", "relationnet_cifar10_conv4_seed_1_last.tar",
           "relationnet_cifar10_conv4_seed_1.tar", "log_relationnet_cifar10_conv4_seed_1.csv",
           "config_relationnet_cifar10_conv4_seed_1.json"]
    own_temporary = [".relationnet_cifar10_conv4_seed_1_epoch_4.tar.0a1b2c3d.tmp",
                     ".log_relationnet_cifar10_conv4_seed_1.csv.ffff0000.tmp"]
    others = ["relationnet_cifar10_conv4_seed_1_epoch_4_linear_evaluation.tar",  # its stage 2
              "log_relationnet_cifar10_conv4_seed_1_epoch_4_linear_evaluation.csv",
              ".relationnet_cifar10_conv4_seed_1_epoch_4_linear_evaluation.tar.0a1b2c3d.tmp",
              "relationnet_cifar10_conv4_seed_10_epoch_4.tar", "relationnet_x_cifar10_conv4_seed_1_last.tar",
              ".relationnet_cifar10_conv4_seed_1.lock"]
    files.directory.mkdir(parents=True)
    for name in own + own_temporary + others:
        save_checkpoint({"backbone": {}}, files.directory / name)
    assert [path.name for path in files.outputs()] == sorted(own)
    assert [path.name for path in files.remove_temporary()] == sorted(own_temporary)
    assert [path.name for path in files.remove_outputs()][0] == "relationnet_cifar10_conv4_seed_1_last.tar"
    assert sorted(path.name for path in files.directory.iterdir()) == sorted(others)
