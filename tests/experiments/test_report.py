"""experiments/report.py: the table's arithmetic over seeds, and the grid's result files written
as any file the user's umask allows."""

from __future__ import annotations

import csv
import os
import stat

from experiments.report import group_runs, markdown_table, write_results


def test_results_and_table_are_readable_as_a_plain_open_makes_them(tmp_path):
    record = {
        "condition": "cifar10",
        "variant": "",
        "method": "relationnet",
        "backbone": "conv4",
        "seed": 1,
        "epochs": 1,
        "evaluation_epochs": 1,
        "train_subset": 0,
        "accuracy": 40.0,
        "top5": 80.0,
        "knn_accuracy": None,
        "retrieval_precision": None,
        "wall_seconds": 3.0,
        "stage1_checkpoint": "a.tar",
        "evaluation_checkpoint": "b.tar",
    }
    previous = os.umask(0o002)
    try:
        written = write_results([record], tmp_path, "CIFAR-10", "settings")
    finally:
        os.umask(previous)
    assert {"results.csv", "table.md"} <= {path.name for path in written}
    for path in written:
        assert stat.S_IMODE(path.stat().st_mode) == 0o664, path.name


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
