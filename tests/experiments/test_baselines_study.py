"""The `baselines` study: its grid, the batch of each reference, and the table's published
numbers with their sources."""

from __future__ import annotations

import reproduce
from experiments.report import group_runs, markdown_table
from experiments.stage import run_main
from experiments.studies import COMPARABLE, PUBLISHED, SOURCES, STUDIES


def test_the_grid_runs_every_method_on_cifar10_and_cifar100_with_resnet18(tmp_path, capsys):
    run_main(
        lambda: reproduce.main(
            [
                "--study",
                "baselines",
                "--seeds",
                "1,2,3",
                "--dry_run",
                "--data_root",
                str(tmp_path),
                "--out",
                str(tmp_path / "g"),
            ]
        )
    )
    lines = [line for line in capsys.readouterr().out.splitlines() if "train_unsupervised.py" in line]
    assert len(lines) == 2 * 9 * 3 and all("--backbone resnet18" in line for line in lines)
    methods = STUDIES["baselines"].methods
    assert {"byol", "simsiam", "barlowtwins", "vicreg", "relic", "relationnet", "standard"} <= set(methods)
    batch = {line.split("--method ")[1].split()[0]: line.split("--data_size ")[1].split()[0] for line in lines}
    assert batch == {
        **{m: "256" for m in ("relic", "byol", "simsiam", "barlowtwins", "vicreg")},
        "relationnet": "64",
        "simclr": "128",
        "standard": "128",
        "randomweights": "128",
    }
    # The rows follow the methods' order, the paper's first.
    assert [line.split("--method ")[1].split()[0] for line in lines[:27:3]] == [
        "relationnet",
        "simclr",
        "standard",
        "randomweights",
        "relic",
        "byol",
        "simsiam",
        "barlowtwins",
        "vicreg",
    ]


def test_the_table_shows_the_published_number_and_its_source():
    assert all(source in SOURCES for _, source in PUBLISHED.values())
    records = [
        {
            "condition": "cifar100",
            "variant": "",
            "method": "byol",
            "backbone": "resnet18",
            "seed": seed,
            "epochs": 1000,
            "evaluation_epochs": 100,
            "accuracy": accuracy,
            "knn_accuracy": None,
            "retrieval_precision": None,
            "wall_seconds": 10.0,
        }
        for seed, accuracy in ((1, 69.0), (2, 71.0))
    ]
    table = markdown_table(group_runs(records), "title", "settings")
    assert "| CIFAR-100 | resnet18 | byol | 1, 2 | 70.00 ± 1.41 | – | 70.46 (solo-learn) | -0.46 |" in table
    assert "Published (solo-learn): solo-learn (da Costa et al., JMLR 2022)" in table
    assert "Comparable column: online probe (%)" in table and "online probe (%) |" not in table


def test_the_table_puts_the_online_probe_beside_the_offline_accuracy():
    assert set(COMPARABLE) == set(SOURCES)  # every published number says which column it compares with
    records = [
        {
            "condition": "cifar10",
            "variant": "",
            "method": "simclr",
            "backbone": "resnet18",
            "seed": seed,
            "epochs": 1000,
            "evaluation_epochs": 100,
            "accuracy": accuracy,
            "knn_accuracy": None,
            "retrieval_precision": None,
            "probe_accuracy": probe,
            "wall_seconds": 10.0,
        }
        for seed, accuracy, probe in ((1, 88.0, 90.0), (2, 90.0, 91.0))
    ]
    table = markdown_table(group_runs(records), "title", "settings")
    assert "| backbone | method | seeds | accuracy (%) | online probe (%) | paper |" in table
    assert "| 1, 2 | 89.00 ± 1.41 | 90.50 ± 0.71 | – | 90.74 (solo-learn) |" in table
    assert "Online probe: top-1 of stage 1's online linear classifier" in table
