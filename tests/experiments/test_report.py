"""The grid's result files: written as any file the user's umask allows (17.3)."""

from __future__ import annotations

import os
import stat

from experiments.report import write_results


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
