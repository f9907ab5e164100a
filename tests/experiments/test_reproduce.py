"""reproduce.py: a real small grid end to end (interrupted, resumed, then only re-tabled), the
table's arithmetic, dry runs, and every flag given a bad value."""

from __future__ import annotations

import argparse
import csv
import io
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
from engine.locks import GRID_ENVIRONMENT, RunLock
from experiments.parallel import LiveLines
from experiments.report import group_runs, markdown_table, write_results
from experiments.stage import run_main
from experiments.studies import PAPER, STUDIES, paper_value
from tests.helpers import REPO, one_line


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


def record(method, seed, accuracy, condition="cifar10", backbone="conv4"):
    return {
        "condition": condition,
        "variant": "",
        "method": method,
        "backbone": backbone,
        "seed": seed,
        "epochs": 3,
        "evaluation_epochs": 10,
        "train_subset": 0,
        "accuracy": accuracy,
        "top5": 90.0,
        "knn_accuracy": accuracy - 1,
        "retrieval_precision": None,
        "wall_seconds": 60.0,
        "stage1_checkpoint": "a.tar",
        "evaluation_checkpoint": "b.tar",
        "order": [0, 0, 0, 0, seed],
    }


def test_the_table_gives_mean_and_sample_std_over_seeds_beside_the_paper(tmp_path, monkeypatch):
    records = [record("relationnet", s, a) for s, a in ((1, 40.0), (2, 42.0), (3, 44.0))] + [record("simclr", 1, 30.0)]
    cells = group_runs(records)
    assert [c["method"] for c in cells] == ["relationnet", "simclr"]
    assert cells[0]["accuracy"] == (42.0, 2.0) and cells[0]["seeds"] == [1, 2, 3]
    table = markdown_table(cells, "title", "settings")
    assert (
        "| CIFAR-10 | conv4 | relationnet | 1, 2, 3 | 42.00 ± 2.00 | 61.03 | -19.03 | 41.00 ± 2.00 | – | 3 / 10 |"
        in table
    )
    assert "| simclr | 1 | 30.00 | 60.43 | -30.43 |" in table
    monkeypatch.setattr("experiments.report.matplotlib_available", lambda: False)
    written = write_results(records, tmp_path, "title", "settings")
    assert [p.name for p in written] == ["results.csv", "table.md"]
    with open(tmp_path / "results.csv", newline="") as handle:
        assert len(list(csv.DictReader(handle))) == 4


def test_every_study_names_known_conditions_methods_and_backbones():
    from backbones import BACKBONES
    from experiments.studies import CONDITIONS
    from methods import METHODS

    for name, study in STUDIES.items():
        assert set(study.conditions) <= set(CONDITIONS), name
        assert set(study.methods) <= set(METHODS), name
        assert set(study.backbones) | set(study.backbone_of.values()) <= set(BACKBONES), name


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


def test_shards_partition_the_grid_and_keep_a_shared_pretraining_with_its_runs(tmp_path):
    args = reproduce.parser().parse_args(["--study", "table1", "--out", str(tmp_path), "--seeds", "1", "2"])
    args.child_device = "cpu"
    runs = reproduce.plan(args)
    shards = [reproduce.shard_of(runs, index, 3) for index in (1, 2, 3)]
    assert sorted(run.name for shard in shards for run in shard) == sorted(run.name for run in runs)
    for shard in shards:
        pretrainings = {run.stages[0].output for run in shard}
        assert [run for run in runs if run.stages[0].output in pretrainings and run not in shard] == []
        assert abs(len(shard) - len(runs) / 3) <= 3  # balanced by epochs, so by runs here
    assert [run.name for run in reproduce.shard_of(runs, 2, 3)] == [run.name for run in shards[1]]  # deterministic


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
    assert "2 of 2 runs done" in (out / "table.md").read_text()


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
    monkeypatch.setattr(reproduce, "LOCK_WAIT_SECONDS", 0.2)
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


def planned_grid(root, out, *flags) -> reproduce.Grid:
    """A one-run grid of randomweights as reproduce.main plans it, its events in `grid.live.stream`."""
    args = reproduce.parser().parse_args(
        [
            "--study",
            "cifar10",
            "--methods",
            "randomweights",
            "--seeds",
            "1",
            "--data_root",
            str(root),
            "--out",
            str(out),
            *flags,
        ]
    )
    args.child_device, args.gpus, args.jobs = "cpu", [], 1
    return reproduce.Grid(args, reproduce.plan(args), live=LiveLines(io.StringIO()))


def test_a_grid_folder_whose_name_is_not_utf8_is_logged_with_an_escape(small_cifar10_root, tmp_path, monkeypatch):
    out = tmp_path / os.fsdecode(b"grid\xff")  # how Python holds such a name from the command line
    grid = planned_grid(small_cifar10_root, out)
    scheduler = reproduce.Scheduler(grid, grid.tasks())
    monkeypatch.setattr(reproduce, "start_child", lambda argv, log, slot, started, variables: None)
    scheduler.start(scheduler.pending[0])
    logged = (out / "logs" / "cifar10_randomweights_conv4_seed_1.log").read_text(encoding="utf-8")
    assert "--checkpoint_dir" in logged and str(out / "checkpoints").replace("\udcff", "\\udcff") in logged


NESTED = "[" * 100_000 + "]" * 100_000  # json.loads recurses once per level


@pytest.mark.parametrize("content", [NESTED, '{"knn": [[1]]}'], ids=["nested", "wrong_type"])
def test_grid_json_of_another_shape_is_one_line_naming_it(small_cifar10_root, tmp_path, content):
    out = tmp_path / "grid"
    out.mkdir()
    (out / "grid.json").write_text(content)
    grid = planned_grid(small_cifar10_root, out)
    with pytest.raises(reproduce.UserError) as refused:
        grid.check_settings()
    assert f"{out / 'grid.json'} cannot be read" in one_line(refused.value)


def test_timings_and_records_of_another_shape_are_said_and_not_used(small_cifar10_root, tmp_path):
    out = tmp_path / "grid"
    (out / "runs").mkdir(parents=True)
    (out / "timings.json").write_text(NESTED)
    grid = planned_grid(small_cifar10_root, out)
    assert grid.timings == {} and "timings.json cannot be read (nested too deep)" in grid.live.stream.getvalue()
    run = grid.runs[0]
    record = {
        **grid.expected_record(run),
        "accuracy": 50.0,
        "top5": None,
        "knn_accuracy": None,
        "retrieval_precision": None,
        "wall_seconds": 1.0,
        "stage1_checkpoint": "a",
        "evaluation_checkpoint": "b",
        "order": list(run.order),
        "finished": "2024-01-01 00:00:00",
    }
    run.record.write_text(json.dumps(record))
    assert grid.record_of(run) == record
    for planted, said in (
        (NESTED, "nested too deep"),
        (json.dumps({**record, "order": None}), "'order' is None"),
        (json.dumps({k: v for k, v in record.items() if k != "order"}), "without 'order'"),
        (json.dumps({**record, "accuracy": float("nan")}), "'accuracy' is nan"),
    ):
        run.record.write_text(planted)
        assert grid.record_of(run, say=True) is None
        assert f"{run.record} cannot be read" in grid.live.stream.getvalue().splitlines()[-1]
        assert said in grid.live.stream.getvalue().splitlines()[-1]
        grid.report()  # the table is built without it


def test_one_grid_lock_per_out_folder_shared_only_by_the_shards_of_one_plan(small_cifar10_root, tmp_path, capsys):
    out = tmp_path / "grid"
    runs = planned_grid(small_cifar10_root, out, "--seeds", "1", "2").runs
    other_plan = planned_grid(small_cifar10_root, out, "--seeds", "3", "4").runs
    with reproduce.GridLock(out, runs, (1, 2)), reproduce.GridLock(out, runs, (2, 2)):
        for clashing, shard in ((runs, None), (runs, (1, 3)), (other_plan, (2, 2))):
            with pytest.raises(reproduce.UserError) as refused:
                reproduce.GridLock(out, clashing, shard).__enter__()
            assert "is being written by another grid" in one_line(refused.value)
            assert "pass another --out" in str(refused.value) and "--id" not in str(refused.value)
    assert not list(out.iterdir())  # every lock let go, the refused ones' too
    argv = [
        "--study",
        "cifar10",
        "--methods",
        "randomweights",
        "--seeds",
        "1",
        "--data_root",
        str(small_cifar10_root),
        "--out",
        str(out),
        "--no_download",
        "--device",
        "cpu",
    ]
    with reproduce.GridLock(out, planned_grid(small_cifar10_root, out).runs, None):
        with pytest.raises(SystemExit) as exit_info:
            run_main(lambda: reproduce.main(argv + ["--shard", "1/1"]))  # the same runs as the unsharded grid
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1 and "pass another --out" in err, err
    assert not (out / "logs").exists()


def test_a_stage_run_by_a_grid_is_not_told_to_use_id(tmp_path, monkeypatch):
    lock = tmp_path / ".run.lock"
    lock.write_text(f"{socket.gethostname()} {os.getpid()}")
    for grid_out, advice in ((None, "use --id"), (str(tmp_path), "pass another --out")):
        if grid_out:
            monkeypatch.setenv(GRID_ENVIRONMENT, grid_out)
        with pytest.raises(reproduce.UserError) as refused:
            RunLock(lock).__enter__()
        assert advice in str(refused.value)
    assert "--id" not in str(refused.value)


class FinishedChild:
    """A child process that has already exited with status 0."""

    def poll(self) -> int:
        return 0

    def send_signal(self, signum) -> None:
        pass


TEST_LOG_HEADER = (
    "time,dataset,seed,accuracy,top5,loss,images,seconds,checkpoint,knn_k,knn_accuracy,knn_top5,"
    "retrieval_k,retrieval_precision\n"
)


@pytest.mark.parametrize(
    "last_row, said",
    [
        ("t,cifar10,1,abc,90,1.0,100,1.0,c,200,40,80,10,30", "'accuracy' is 'abc'"),
        ("t,cifar10,1,1e9,90,1.0,100,1.0,c,200,40,80,10,30", "'accuracy' is '1e9'"),
        ("t,cifar10,1,50,nan,1.0,100,1.0,c,200,40,80,10,30", "'top5' is 'nan'"),
        ("t,cifar10,1,50,90,1.0,100,1.0,c,200,-inf,80,10,30", "'knn_accuracy' is '-inf'"),
        ("t,cifar10,1,50,90,1.0,100,1.0,c", "no 'knn_accuracy'"),
        ('t,cifar10,1,"50', "no 'top5'"),  # an unclosed quote swallows the rows after it
    ],
    ids=["text", "out_of_range", "nan", "inf", "missing_columns", "unclosed_quote"],
)
def test_a_test_log_of_bad_numbers_is_one_line_naming_it_and_its_run_is_tested_again(
    small_cifar10_root, tmp_path, monkeypatch, last_row, said
):
    out = tmp_path / "grid"
    grid = planned_grid(small_cifar10_root, out)
    run = grid.runs[0]
    run.test_log.parent.mkdir(parents=True)
    run.test_log.write_text(TEST_LOG_HEADER + last_row + "\n")
    scheduler = reproduce.Scheduler(grid, [reproduce.Task(run.stages[2], [run], 1)])
    monkeypatch.setattr(reproduce, "start_child", lambda argv, log, slot, started, variables: started(FinishedChild()))
    with pytest.raises(reproduce.GridStopped) as stopped:
        scheduler.run()
    message = one_line(stopped.value)
    assert stopped.value.exit_status == 1 and f"{run.test_log} cannot be read" in message and said in message
    assert "delete it" in message and not run.record.exists()
    assert [task.stage.script for task in grid.tasks()][-1] == "test.py"  # the next call tests the run again
