"""experiments/scheduler.py: a stage's command logged under a folder name that is not UTF-8,
and a test log of bad numbers that stops the grid."""

from __future__ import annotations

import os

import pytest

from experiments.grid_plan import Stage
from experiments.scheduler import GridStopped, Scheduler, Task
from tests.helpers import one_line, planned_grid


def test_a_grid_folder_whose_name_is_not_utf8_is_logged_with_an_escape(small_cifar10_root, tmp_path, monkeypatch):
    out = tmp_path / os.fsdecode(b"grid\xff")  # how Python holds such a name from the command line
    grid = planned_grid(small_cifar10_root, out)
    scheduler = Scheduler(grid, grid.tasks())
    monkeypatch.setattr("experiments.scheduler.start_child", lambda argv, log, slot, started, variables: None)
    scheduler.start(scheduler.pending[0])
    logged = (out / "logs" / "cifar10_randomweights_conv4_seed_1.log").read_text(encoding="utf-8")
    assert "--checkpoint_dir" in logged and str(out / "checkpoints").replace("\udcff", "\\udcff") in logged


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
    scheduler = Scheduler(grid, [Task(run.stages[2], [run], 1)])
    monkeypatch.setattr(
        "experiments.scheduler.start_child", lambda argv, log, slot, started, variables: started(FinishedChild())
    )
    with pytest.raises(GridStopped) as stopped:
        scheduler.run()
    message = one_line(stopped.value)
    assert stopped.value.exit_status == 1 and f"{run.test_log} cannot be read" in message and said in message
    assert "delete it" in message and not run.record.exists()
    assert grid.tasks()[-1].stage.kind is Stage.TEST  # the next call tests the run again


def test_the_grid_is_never_said_to_end_before_a_run_still_going(small_cifar10_root, tmp_path):
    grid = planned_grid(small_cifar10_root, tmp_path / "grid", "--seeds", "1", "2", "--jobs", "2")
    scheduler = Scheduler(grid, grid.tasks())
    first, second = scheduler.pending[:2]
    # two runs: 28 s of one still to go, 0 of the other; the stages' 28 s shared by 2 jobs is 14 s
    assert scheduler.grid_left([28.0, 0.0], {first: 28.0, second: 0.0}) == 28.0
    assert scheduler.grid_left([28.0, 30.0, 30.0], {first: 28.0}) == 44.0
    assert scheduler.grid_left([28.0, None], {first: 28.0}) is None
