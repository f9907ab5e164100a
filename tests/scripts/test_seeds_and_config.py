"""`--seed -1` names every stage's files by the seed stage 1 drew, `--resume auto` on a finished
run succeeds with one line, and each run's config records
the value used for every default (the learning rate, the method) and the code's version."""

from __future__ import annotations

import json

import pytest

import experiments.linear_evaluation as stage2
import experiments.pretraining as stage1
import experiments.testing as stage3
from experiments import stage
from tests.helpers import read_log, run_stage, stage_arguments


def drawn_seed(output: str) -> int:
    line = next(line for line in output.splitlines() if line.startswith("[INFO] --seed -1: drew seed"))
    return int(line.split()[5].rstrip(","))


def test_a_drawn_seed_names_the_files_of_every_stage_and_a_second_run_is_not_refused(
    small_cifar10_root, tmp_path, capsys
):
    args = stage_arguments(small_cifar10_root, tmp_path, seed=-1)
    folder = tmp_path / "relationnet" / "cifar10"
    seeds = []
    for _ in range(2):  # the second default run draws another seed: no duplicate to refuse
        run_stage(stage1, args + ["--method", "relationnet", "--K", "2", "--data_size", "100", "--epochs", "1"])
        seeds.append(drawn_seed(capsys.readouterr().out))
    assert seeds[0] != seeds[1] and not list(folder.glob("*seed_-1*"))
    header = f"relationnet_cifar10_conv4_seed_{seeds[0]}"
    config = json.loads((folder / f"config_{header}.json").read_text())
    assert config["args"]["seed"] == config["seed_used"] == seeds[0]

    # Stages 2 and 3 take the seed of the checkpoint they read: the run's files share it.
    run_stage(stage2, args + ["--checkpoint", str(folder / f"{header}_epoch_1.tar"), "--epochs", "1"])
    assert f"[INFO] Seed {seeds[0]}: the checkpoint's" in capsys.readouterr().out
    linear = folder / f"{header}_epoch_1_linear_evaluation.tar"
    assert linear.exists()
    run_stage(stage3, args + ["--checkpoint", str(linear)])
    assert f"[INFO] Seed {seeds[0]}: the checkpoint's" in capsys.readouterr().out
    assert read_log(folder / f"log_{linear.stem}_test.csv")[0]["seed"] == str(seeds[0])

    with pytest.raises(SystemExit):
        run_stage(stage1, args + ["--method", "relationnet", "--K", "2", "--epochs", "2", "--resume", "auto"])
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "--resume auto with --seed -1" in error and "pass that --seed N" in error
    # A checkpoint named by path gives its seed: the run continues under its own name.
    last = folder / f"{header}_last.tar"
    run_stage(
        stage1,
        args + ["--method", "relationnet", "--K", "2", "--data_size", "100", "--epochs", "2", "--resume", str(last)],
    )
    assert (folder / f"{header}_epoch_2.tar").exists() and "Resuming" in capsys.readouterr().out
    # Nothing left to train: one line and a success, so that a requeued job ends well.
    finished = ["--method", "relationnet", "--K", "2", "--data_size", "100", "--seed", str(seeds[0])]
    run_stage(stage1, args + finished + ["--epochs", "2", "--resume", "auto"])
    said = capsys.readouterr()
    assert said.out.strip() == f"[INFO] Nothing left to do: run {header} has trained its 2 epochs", said.out
    with pytest.raises(SystemExit) as refused:  # asked for fewer epochs than it trained: still an error
        run_stage(stage1, args + finished + ["--epochs", "1", "--resume", "auto"])
    assert refused.value.code == 2 and "nothing to train" in capsys.readouterr().err


def test_the_config_records_resolved_defaults_and_the_code_version(small_cifar10_root, tmp_path, monkeypatch):
    args = stage_arguments(small_cifar10_root, tmp_path)
    run_stage(stage1, args + ["--method", "simclr", "--data_size", "100", "--epochs", "1"])
    folder = tmp_path / "simclr" / "cifar10"
    config = json.loads((folder / "config_simclr_cifar10_conv4_seed_1.json").read_text())
    assert config["args"]["lr"] == 1e-3 and config["args"]["data_size"] == 100
    if (stage.REPO / ".git").exists():  # a git checkout (a worktree's .git is a file)
        assert len(config["git_commit"]) == 40 and isinstance(config["git_dirty"], bool)
    run_stage(stage2, args + ["--checkpoint", str(folder / "simclr_cifar10_conv4_seed_1_epoch_1.tar"), "--epochs", "1"])
    linear_config = json.loads(
        (folder / "config_simclr_cifar10_conv4_seed_1_epoch_1_linear_evaluation.json").read_text()
    )
    assert linear_config["args"]["method"] == "simclr"  # read from the checkpoint, recorded as used
    monkeypatch.setattr(stage, "REPO", tmp_path)  # not a git checkout: no version keys at all
    assert stage.code_version() == {}
