"""reproduce.py: a real small grid end to end (interrupted, resumed, then only re-tabled), shards
side by side, a killed or failed grid, dry runs, and every flag given a bad value."""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import reproduce
from experiments.stage import run_main
from experiments.studies import PAPER, STUDIES, paper_value
from tests.helpers import REPO


def grid_argv(root, out, epochs="8"):
    return [
        "--study",
        "cifar10",
        "--methods",
        "relationnet",
        "rotationnet",
        "--seeds",
        "1",
        "2",
        "--epochs",
        epochs,
        "--linear_epochs",
        "2",
        "--K",
        "2",
        "--knn",
        "5",
        "--retrieval",
        "3",
        "--data_root",
        str(root),
        "--out",
        str(out),
        "--no_download",
        "--device",
        "cpu",
        "--jobs",
        "2",
    ]


def launch(argv):
    return subprocess.Popen(
        [sys.executable, str(REPO / "reproduce.py"), *argv],
        cwd=REPO,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def test_a_grid_of_two_jobs_survives_an_interruption_and_a_second_call_only_rebuilds_the_table(
    small_cifar10_root, tmp_path
):
    out = tmp_path / "grid"
    argv = grid_argv(small_cifar10_root, out)
    stage1 = out / "checkpoints" / "relationnet" / "cifar10"
    first = launch(argv)
    last = stage1 / "relationnet_cifar10_conv4_seed_1_last.tar"
    deadline = time.time() + 240
    while not last.exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert last.exists(), first.communicate()
    first.send_signal(signal.SIGTERM)
    stdout, stderr = first.communicate(timeout=120)
    assert first.returncode == 128 + signal.SIGTERM, (stdout, stderr)
    assert len(stderr.strip().splitlines()) == 1 and "run the same command again" in stderr, stderr
    assert stderr.startswith("reproduce.py: grid stopped by SIGTERM"), stderr  # a stop, not an error
    assert not (stage1 / "relationnet_cifar10_conv4_seed_1_epoch_8.tar").exists()  # stopped inside stage 1
    assert stdout.count("train_unsupervised.py ... (CPU") == 2  # seeds 1 and 2 side by side

    second = subprocess.run(
        [sys.executable, str(REPO / "reproduce.py"), *argv], cwd=REPO, text=True, capture_output=True, timeout=600
    )
    assert second.returncode == 0, second.stderr
    assert "train_unsupervised.py (resumed)" in second.stdout
    assert "| stage 1/3 pretraining | epoch " in second.stdout  # a live line (plain on a pipe)
    with open(out / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted((r["method"], r["seed"]) for r in rows) == [
        ("relationnet", "1"),
        ("relationnet", "2"),
        ("rotationnet", "1"),
        ("rotationnet", "2"),
    ]
    for row in rows:
        assert 0 <= float(row["accuracy"]) <= 100 and float(row["wall_seconds"]) > 0
        assert row["knn_accuracy"] and row["retrieval_precision"] and row["epochs"] == "8"
    table = (out / "table.md").read_text()
    assert table.count(" ± ") >= 4 and "| CIFAR-10 | conv4 | relationnet | 1, 2 |" in table
    assert "| 5-NN (%) | top-3 retrieval (%) |" in table and "k = 5" in table and "the 3 nearest" in table
    assert "Not the paper's protocol**: 8 stage-1 epochs instead of 200; 2 evaluation epochs instead of 100" in table
    assert "61.03" in table  # the paper's Conv-4 CIFAR-10 value beside relationnet
    for figure in ("figure.png", "curves_pretraining.png", "curves_evaluation.png"):
        assert (out / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    results_before = (out / "results.csv").read_bytes()
    third = subprocess.run(
        [sys.executable, str(REPO / "reproduce.py"), *argv], cwd=REPO, text=True, capture_output=True, timeout=300
    )
    assert third.returncode == 0, third.stderr
    assert "All 4 runs of the grid had finished" in third.stdout
    assert ".py ..." not in third.stdout  # no stage ran
    assert (out / "results.csv").read_bytes() == results_before

    # A planted record outside the plan is ignored; a truncated one of the plan and a truncated
    # timings.json are said and repaired: only that run's test runs again.
    planted = json.loads((out / "runs" / "cifar10_relationnet_conv4_seed_1.json").read_text())
    (out / "runs" / "cifar10_relationnet_conv4_seed_7.json").write_text(
        json.dumps({**planted, "seed": 7, "accuracy": 98.0})
    )
    truncated = out / "runs" / "cifar10_rotationnet_conv4_seed_2.json"
    truncated.write_text(truncated.read_text()[:40])
    (out / "timings.json").write_text('{"runs/a.json": 1')
    fourth = subprocess.run(
        [sys.executable, str(REPO / "reproduce.py"), *argv], cwd=REPO, text=True, capture_output=True, timeout=300
    )
    assert fourth.returncode == 0, fourth.stderr
    assert f"{truncated} cannot be read" in fourth.stdout and "timings.json cannot be read" in fourth.stdout
    assert fourth.stdout.count(".py ...") == 1 and "test.py ..." in fourth.stdout
    table = (out / "table.md").read_text()
    assert "98.00" not in table and "| 1, 2 |" in table and ", 7" not in table
    assert "left out: cifar10_relationnet_conv4_seed_7.json (its evaluation checkpoint" in table
    assert json.loads(truncated.read_text())["seed"] == 2

    other = subprocess.run(
        [sys.executable, str(REPO / "reproduce.py"), *grid_argv(small_cifar10_root, out, "3")],
        cwd=REPO,
        text=True,
        capture_output=True,
        timeout=300,
    )
    assert other.returncode == 2 and len(other.stderr.strip().splitlines()) == 1
    assert "--epochs 8 -> 3" in other.stderr


def test_dry_run_prints_every_command_and_writes_nothing(small_cifar10_root, tmp_path, capsys):
    out = tmp_path / "grid"
    run_main(lambda: reproduce.main(grid_argv(small_cifar10_root, out) + ["--dry_run"]))
    lines = capsys.readouterr().out.splitlines()
    commands = [line for line in lines if line.endswith(".py") or ".py " in line]
    scripts = [next(part for part in line.split() if part.endswith(".py")) for line in commands]
    assert len(commands) == 12
    assert lines[0].startswith(
        f"Grid {out} (study cifar10): 4 runs, 4 distinct pretrainings, 0 runs finished "
        "before; 12 stages to run (4 stage 1, 4 stage 2, 4 test), estimated epochs: 32 of "
        "stage 1 and 8 of stage 2"
    )
    assert [s.rsplit("/", 1)[-1] for s in scripts[:3]] == [
        "train_unsupervised.py",
        "train_linear_evaluation.py",
        "test.py",
    ]
    assert "--K 2" in commands[0] and "--data_size 64" in commands[0]
    assert "--data_size 128" in commands[6] and "--K" not in commands[6]  # rotationnet
    assert not out.exists()


def test_the_studies_use_the_papers_settings(tmp_path, capsys):
    argv = ["--data_root", str(tmp_path), "--out", str(tmp_path / "g"), "--dry_run", "--seeds", "1"]
    run_main(lambda: reproduce.main(["--study", "table1", "--methods", "relationnet"] + argv))
    lines = [line for line in capsys.readouterr().out.splitlines() if "train_unsupervised.py" in line]
    # cifar10 and cifar100 pretraining serve the transfer and grain conditions too, each said once
    assert len(lines) == 4
    by_dataset = {line.split("--dataset ")[1].split()[0]: line for line in lines}
    assert "--backbone resnet32" in by_dataset["cifar100"] and "--K 32" in by_dataset["cifar100"]
    assert "--K 16" in by_dataset["tiny"]
    assert "--backbone resnet34" in by_dataset["stl10"] and "--K 25" in by_dataset["stl10"]
    assert "--epochs 300" in by_dataset["stl10"] and "--epochs 200" in by_dataset["cifar100"]
    run_main(lambda: reproduce.main(["--study", "k_sweep"] + argv))
    lines = [line for line in capsys.readouterr().out.splitlines() if "train_unsupervised.py" in line]
    assert [line.split("--id ")[1].split()[0] for line in lines] == ["K2", "K4", "K8", "K16", "K32"]
    run_main(lambda: reproduce.main(["--study", "semi_supervised", "--methods", "simclr"] + argv))
    lines = capsys.readouterr().out.splitlines()
    assert len([line for line in lines if "train_unsupervised.py" in line]) == 1  # serves the 5 label shares
    assert [line.split("--label_fraction ")[1].split()[0] for line in lines if "--label_fraction" in line] == [
        "0.01",
        "0.1",
        "0.25",
        "0.5",
    ]
    assert paper_value("cifar100", "relationnet", "resnet32", "") == (46.17, 0.17)
    assert paper_value("stl10_finetune", "simclr", "resnet34", "") == (89.31, 0.14)
    assert paper_value("cifar10", "relationnet", "conv4", "K4") is None
    assert len([key for key in PAPER if key[2] == "resnet32" and key[0] != "cifar10"]) == 7 * 5


BAD_VALUES = {
    "--study": ["bogus"],
    "--conditions": ["bogus", "tiny"],
    "--methods": ["bogus", ","],
    "--backbone": ["resnet9"],
    "--seeds": ["-1", "a,b", ""],
    "--epochs": ["0", "-3", "abc"],
    "--linear_epochs": ["0", "abc"],
    "--train_subset": ["-1", "abc"],
    "--K": ["1", "0", "abc"],
    "--knn": ["-1", "abc"],
    "--retrieval": ["-1", "abc"],
    "--data_root": ["PATH"],
    "--out": ["FILE"],
    "--device": ["tpu", "cuda:x"],
    "--jobs": ["0", "abc"],
    "--jobs_per_gpu": ["0", "2"],
    "--shard": ["0/2", "3/2", "1", "a/b", "1/1000000000000", "1/100000000000000000000000"],
    "--wandb": ["", "a/b", "x" * 129],
    "--set": ["relationnet.K=1", "simclr.temperature=abc", "simclr", "bogus.K=2", "simclr.nothing=1"],
    "--keep": ["bogus"],
    "--tensorboard": ["FILE"],
}
SWITCHES = {"--no_download", "--dry_run"}


def test_the_flag_table_covers_every_flag():
    flags = {
        action.option_strings[0]
        for action in reproduce.parser()._actions
        if not isinstance(action, argparse._HelpAction)
    }
    assert flags == set(BAD_VALUES) | SWITCHES


@pytest.mark.parametrize("flag,value", [(f, v) for f, values in BAD_VALUES.items() for v in values])
def test_a_bad_value_is_one_line_naming_the_flag(small_cifar10_root, tmp_path, capsys, flag, value):
    out = tmp_path / "out"
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    named = flag
    if value == "PATH":
        value = named = str(tmp_path / "missing")
    elif value == "FILE":
        value = named = str(a_file)
    argv = [
        "--study",
        "cifar10",
        "--data_root",
        str(small_cifar10_root),
        "--out",
        str(out),
        "--no_download",
        "--device",
        "cpu",
        "--epochs",
        "1",
        "--seeds",
        "1",
        flag,
        value,
    ]
    with pytest.raises(SystemExit) as exit_info:
        run_main(lambda: reproduce.main(argv))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert named in err, err
    assert not out.exists()


def test_study_restrictions_are_one_line_errors(tmp_path, capsys):
    for argv, named in (
        (["--study", "k_sweep", "--K", "4"], "--K"),
        (["--study", "k_sweep", "--methods", "simclr"], "--methods"),
    ):
        with pytest.raises(SystemExit):
            run_main(lambda: reproduce.main(argv + ["--data_root", str(tmp_path), "--out", str(tmp_path / "o")]))
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and named in err, err
    assert json.dumps(STUDIES["k_sweep"].methods) == '["relationnet"]'


def test_list_flags_take_commas_spaces_or_both():
    args = reproduce.parser().parse_args(
        [
            "--seeds",
            "1",
            "2,3",
            "2",
            "--methods",
            "relationnet",
            "simclr,standard",
            "--conditions",
            "cifar10",
            "--backbone",
            "conv4",
            "resnet8",
        ]
    )
    assert args.seeds == [1, 2, 3] and args.methods == ["relationnet", "simclr", "standard"]
    assert args.conditions == ["cifar10"] and args.backbone == ["conv4", "resnet8"]
    assert reproduce.parser().parse_args([]).seeds == [1, 2, 3]


def test_two_shards_run_side_by_side_on_one_folder_and_either_builds_the_whole_table(small_cifar10_root, tmp_path):
    out = tmp_path / "grid"
    argv = [
        "--study",
        "cifar10",
        "--methods",
        "randomweights",
        "--seeds",
        "1",
        "2",
        "--linear_epochs",
        "1",
        "--knn",
        "5",
        "--retrieval",
        "3",
        "--data_root",
        str(small_cifar10_root),
        "--out",
        str(out),
        "--no_download",
        "--device",
        "cpu",
        "--jobs",
        "1",
    ]
    shards = [launch(argv + ["--shard", f"{index}/2"]) for index in (1, 2)]
    outputs = [shard.communicate(timeout=300) for shard in shards]
    for shard, (stdout, stderr) in zip(shards, outputs):
        assert shard.returncode == 0, stderr
        assert stdout.count("test.py finished") == 1  # each shard ran one of the two runs
    assert "seed_1: test accuracy" in outputs[0][0] and "seed_2: test accuracy" in outputs[1][0]
    assert len(json.loads((out / "timings.json").read_text())) == 6  # both shards' stages, none lost
    again = subprocess.run(
        [sys.executable, str(REPO / "reproduce.py"), *argv, "--shard", "2/2"],
        cwd=REPO,
        text=True,
        capture_output=True,
        timeout=300,
    )
    assert again.returncode == 0 and "rebuilding the table only" in again.stdout, again.stderr
    assert "| CIFAR-10 | conv4 | randomweights | 1, 2 |" in (out / "table.md").read_text()
    assert "2 of this command's 2 runs" in (out / "table.md").read_text()


def test_a_killed_grid_takes_its_children_with_it_and_a_held_stage_says_what_to_do(
    small_cifar10_root, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "grid"
    argv = grid_argv(small_cifar10_root, out, epochs="100")
    grid = launch(argv[: argv.index("--jobs")] + ["--jobs", "1"])
    lock = out / "checkpoints" / "relationnet" / "cifar10" / ".relationnet_cifar10_conv4_seed_1.lock"
    log = lock.parent / "log_relationnet_cifar10_conv4_seed_1.csv"
    deadline = time.time() + 240
    while not log.exists() and grid.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert log.exists(), grid.communicate()
    child = int(lock.read_text().split()[1])
    grid.kill()
    grid.communicate()
    deadline = time.time() + 60
    while (
        Path(f"/proc/{child}").exists()
        and "zombie" not in Path(f"/proc/{child}/status").read_text(errors="replace")
        and time.time() < deadline
    ):
        time.sleep(0.1)
    assert not Path(f"/proc/{child}").exists() or "zombie" in Path(f"/proc/{child}/status").read_text()
    assert not lock.exists()  # it stopped after its step, saved and let go

    # A stage held by a live process: the grid waits a little, then one line says whom and what to do.
    lock.write_text(f"{socket.gethostname()} {os.getpid()}")
    monkeypatch.setattr("experiments.scheduler.LOCK_WAIT_SECONDS", 0.2)
    with pytest.raises(SystemExit) as exit_info:
        run_main(lambda: reproduce.main(argv))
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 1 and len(err.splitlines()) == 1, err
    assert f"{lock} is held by process" in err and f"kill {os.getpid()}" in err
    lock.unlink()
    grid_lock = out / ".reproduce.lock"
    grid_lock.write_text(f"{socket.gethostname()} {os.getpid()}")
    with pytest.raises(SystemExit):
        run_main(lambda: reproduce.main(argv))
    err = capsys.readouterr().err.strip()
    assert "pass another --out" in err and "--id" not in err, err


def test_a_truncated_grid_json_is_one_line_naming_it(small_cifar10_root, tmp_path, capsys):
    out = tmp_path / "grid"
    out.mkdir()
    (out / "grid.json").write_text('{"study": "cif')
    with pytest.raises(SystemExit) as exit_info:
        run_main(lambda: reproduce.main(grid_argv(small_cifar10_root, out)))
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1 and f"{out / 'grid.json'} cannot be read" in err


def test_a_failed_stage_stops_the_other_jobs_and_is_one_line_naming_the_run_and_its_log(
    small_cifar10_root, tmp_path, capsys
):
    out = tmp_path / "grid"
    planted = out / "checkpoints" / "randomweights" / "cifar10" / "randomweights_cifar10_conv4_seed_1.tar"
    planted.parent.mkdir(parents=True)
    planted.write_bytes(b"not a checkpoint")  # stage 1 of seed 1 looks done; its stage 2 fails on it
    argv = [
        "--study",
        "cifar10",
        "--methods",
        "randomweights",
        "--seeds",
        "1",
        "2",
        "--linear_epochs",
        "1",
        "--data_root",
        str(small_cifar10_root),
        "--out",
        str(out),
        "--no_download",
        "--device",
        "cpu",
        "--jobs",
        "2",
    ]
    with pytest.raises(SystemExit) as exit_info:
        run_main(lambda: reproduce.main(argv))
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 1 and len(err.splitlines()) == 1, err
    assert "train_linear_evaluation.py failed for run cifar10_randomweights_conv4_seed_1" in err
    assert f"{planted} cannot be read" in err and str(out / "logs") in err
    assert not (out / "runs" / "cifar10_randomweights_conv4_seed_2.json").exists()  # nothing new started
