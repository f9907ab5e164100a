"""The `baselines` study: its grid, the batch of each reference, and the table's published
numbers with their sources."""

from __future__ import annotations

import reproduce
from experiments.grid_cli import grid_arguments, grid_parser
from experiments.grid_files import read_probe_accuracy
from experiments.grid_plan import Run, plan
from experiments.report import group_runs, markdown_table
from experiments.stage import run_main
from experiments.studies import COMPARABLE, MODERN_METHODS, PUBLISHED, SOURCES, STUDIES


def planned_study(tmp_path, study: str, *flags: str) -> list[Run]:
    """The runs `reproduce.py --study <study>` plans, on the CPU."""
    argv = ["--study", study, "--seeds", "1", "--out", str(tmp_path / "g"), "--device", "cpu", *flags]
    return plan(grid_arguments(grid_parser().parse_args(argv)))


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


def test_the_modern_study_puts_the_five_methods_beside_the_baselines_with_the_online_probe(tmp_path):
    runs = planned_study(tmp_path, "modern", "--epochs", "40")
    stage1 = {run.method: run.stages[0].argv for run in runs if run.condition.name == "cifar10"}
    assert {"mocov2plus", "mocov3", "swav", "dino", "nnclr", "byol", "relic", "relationnet"} <= set(stage1)
    for method, argv in stage1.items():
        probed = method != "randomweights"  # a backbone that does not train has nothing to probe
        assert ("--online_probe" in argv) is probed, method
        if probed:  # solo-learn's 10 warm-up epochs of 200, scaled to the 40 of this grid
            assert argv[argv.index("--probe_warmup_epochs") + 1] == "2"
        if method in MODERN_METHODS:
            assert argv[argv.index("--data_size") + 1] == "256"  # solo-learn's batch
    dino = next(run for run in runs if run.method == "dino")
    assert (
        "the online probe's warm-up scaled with the schedule: 2 of 40 epochs instead of 10 of 200" in dino.adjustments
    )
    full = planned_study(tmp_path, "modern", "--methods", "mocov3", "--conditions", "cifar10")
    assert "--probe_warmup_epochs" not in full[0].stages[0].argv and "--online_probe" in full[0].stages[0].argv
    assert {PUBLISHED[(condition, method)][0] for condition in ("cifar10",) for method in MODERN_METHODS} == {
        92.94,
        93.10,
        89.17,
        89.52,
        91.88,
    }


def test_a_record_takes_the_probe_accuracy_of_the_last_epoch_that_logged_it(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text("epoch,loss,val_probe_accuracy\n1,5.0,20.5\n2,4.0,31.25\n3,3.5,\n")
    assert read_probe_accuracy(log) == 31.25
    log.write_text("epoch,loss,test_probe_accuracy\n1,5.0,12.0\n")
    assert read_probe_accuracy(log) == 12.0
    log.write_text("epoch,loss,val_probe_accuracy\n1,5.0,250\n")  # not a percentage: not believed
    assert read_probe_accuracy(log) is None
    log.write_text("epoch,loss\n1,5.0\n")
    assert read_probe_accuracy(log) is None and read_probe_accuracy(tmp_path / "missing.csv") is None
