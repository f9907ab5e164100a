"""experiments/grid.py: a grid's files read back (grid.json, timings.json, the runs' records),
and the lock that keeps other grids off its folder."""

from __future__ import annotations

import json
import os
import socket

import pytest

import reproduce
from engine.locks import GRID_ENVIRONMENT, RunLock
from experiments.grid import GridLock
from experiments.stage import run_main
from tests.helpers import one_line, planned_grid
from utils.errors import UserError

NESTED = "[" * 100_000 + "]" * 100_000  # json.loads recurses once per level


@pytest.mark.parametrize("content", [NESTED, '{"knn": [[1]]}'], ids=["nested", "wrong_type"])
def test_grid_json_of_another_shape_is_one_line_naming_it(small_cifar10_root, tmp_path, content):
    out = tmp_path / "grid"
    out.mkdir()
    (out / "grid.json").write_text(content)
    grid = planned_grid(small_cifar10_root, out)
    with pytest.raises(UserError) as refused:
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
    with GridLock(out, runs, (1, 2)), GridLock(out, runs, (2, 2)):
        for clashing, shard in ((runs, None), (runs, (1, 3)), (other_plan, (2, 2))):
            with pytest.raises(UserError) as refused:
                GridLock(out, clashing, shard).__enter__()
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
    with GridLock(out, planned_grid(small_cifar10_root, out).runs, None):
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
        with pytest.raises(UserError) as refused:
            RunLock(lock).__enter__()
        assert advice in str(refused.value)
    assert "--id" not in str(refused.value)


def finished_record(grid, run, accuracy: float) -> dict:
    """The record a finished run of `grid` leaves, written to its file."""
    record = {
        **grid.expected_record(run),
        "accuracy": accuracy,
        "top5": None,
        "knn_accuracy": accuracy - 1,
        "retrieval_precision": None,
        "wall_seconds": 1.0,
        "stage1_checkpoint": str(run.stages[0].output),
        "evaluation_checkpoint": str(run.stages[1].output),
        "order": list(run.order),
        "finished": "2024-01-01 00:00:00",
    }
    run.record.parent.mkdir(parents=True, exist_ok=True)
    run.record.write_text(json.dumps(record))
    run.test_log.parent.mkdir(parents=True, exist_ok=True)
    run.test_log.write_text(f"accuracy\n{accuracy}\n")  # the log the record was read from
    return record


def test_a_grid_of_one_more_seed_tabulates_every_record_of_its_folder_and_says_which(small_cifar10_root, tmp_path):
    out = tmp_path / "grid"
    earlier = planned_grid(small_cifar10_root, out, "--seeds", "1", "2", "3", "--linear_epochs", "3")
    for run, accuracy in zip(earlier.runs, (10.0, 12.0, 14.0)):
        finished_record(earlier, run, accuracy)
    other_settings = planned_grid(small_cifar10_root, out, "--seeds", "5", "--linear_epochs", "4")
    finished_record(other_settings, other_settings.runs[0], 50.0)
    added = planned_grid(small_cifar10_root, out, "--seeds", "4", "--linear_epochs", "3")
    finished_record(added, added.runs[0], 16.0)
    added.report()
    table = (out / "table.md").read_text()
    assert "| 1, 2, 3, 4 | 13.00 ± 2.58 |" in table, table
    assert "1 of this command's 1 runs, and 3 finished before" in table and "randomweights seeds 1, 2, 3" in table
    assert (
        "left out: cifar10_randomweights_conv4_seed_5.json (made with other settings: evaluation_epochs 4 -> 3)"
        in table
    )
    assert len((out / "results.csv").read_text().splitlines()) == 5  # the header and four runs
    # a record copied under another seed's name is not what a run left: said, not tabulated
    copied = json.loads(earlier.runs[0].record.read_text())
    (out / "runs" / "cifar10_randomweights_conv4_seed_9.json").write_text(json.dumps({**copied, "seed": 9}))
    added.report()
    table = (out / "table.md").read_text()
    assert "| 1, 2, 3, 4 |" in table and "seed_9.json (its evaluation checkpoint" in table
    assert "is not of seed 9)" in table


def test_titles_say_what_the_grid_ran_and_a_short_schedule_says_so_beside_the_paper(small_cifar10_root, tmp_path):
    out = tmp_path / "grid"
    grid = planned_grid(
        small_cifar10_root, out, "--study", "baselines", "--conditions", "cifar10", "--backbone", "conv4",
        "--methods", "simclr", "byol", "--epochs", "3", "--train_subset", "2000",
    )  # fmt: skip
    for run in grid.runs:
        finished_record(grid, run, 30.0)
    grid.report()
    table = (out / "table.md").read_text()
    assert table.startswith("# CIFAR-10, conv4: simclr, byol; seed 1 (study baselines)\n"), table
    assert "ResNet-18" not in table and "CIFAR-100" not in table
    assert "2000 training images (seeded, class-balanced) for stage 1, the linear classifier and the kNN" in table
    assert "byol's learning-rate warm-up scaled with the schedule: 0 of 3 epochs instead of 10 of 200" in table


def test_a_record_whose_knn_voted_with_every_training_label_is_tested_again(small_cifar10_root, tmp_path):
    grid = planned_grid(small_cifar10_root, tmp_path / "grid", "--train_subset", "100")
    run = grid.runs[0]
    record = finished_record(grid, run, 30.0)
    assert grid.record_of(run) == record
    assert ["--knn", "200", "--train_subset", "100"] == run.stages[2].argv[-6:-2]
    del record["knn_train_subset"]  # a record of an earlier version: kNN over all the labels
    run.record.write_text(json.dumps(record))
    assert grid.record_of(run) is None
