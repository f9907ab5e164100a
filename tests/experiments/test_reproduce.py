"""reproduce.py: a real small grid end to end (interrupted, resumed, then only re-tabled), the
table's arithmetic, dry runs, and every flag given a bad value."""
from __future__ import annotations

import argparse
import csv
import json
import signal
import subprocess
import sys
import time

import pytest

import reproduce
from experiments.report import group_runs, markdown_table, write_results
from experiments.stage import run_main
from experiments.studies import PAPER, STUDIES, paper_value
from tests.helpers import REPO


def grid_argv(root, out, epochs="8"):
    return ["--study", "cifar10", "--methods", "relationnet,rotationnet", "--seeds", "1,2", "--epochs", epochs,
            "--linear_epochs", "2", "--K", "2", "--knn", "5", "--retrieval", "3", "--data_root", str(root),
            "--out", str(out), "--no_download", "--device", "cpu"]


def launch(argv):
    return subprocess.Popen([sys.executable, str(REPO / "reproduce.py"), *argv], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_a_grid_survives_an_interruption_and_a_second_call_only_rebuilds_the_table(small_cifar10_root, tmp_path):
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

    second = subprocess.run([sys.executable, str(REPO / "reproduce.py"), *argv], cwd=REPO, text=True,
                            capture_output=True, timeout=600)
    assert second.returncode == 0, second.stderr
    assert "train_unsupervised.py (resumed)" in second.stdout
    with open(out / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted((r["method"], r["seed"]) for r in rows) == [
        ("relationnet", "1"), ("relationnet", "2"), ("rotationnet", "1"), ("rotationnet", "2")]
    for row in rows:
        assert 0 <= float(row["accuracy"]) <= 100 and float(row["wall_seconds"]) > 0
        assert row["knn_accuracy"] and row["retrieval_precision"] and row["epochs"] == "8"
    table = (out / "table.md").read_text()
    assert table.count(" ± ") >= 4 and "| CIFAR-10 | conv4 | relationnet | 1, 2 |" in table
    assert "61.03" in table  # the paper's Conv-4 CIFAR-10 value beside relationnet
    for figure in ("figure.png", "curves_pretraining.png", "curves_evaluation.png"):
        assert (out / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    results_before = (out / "results.csv").read_bytes()
    third = subprocess.run([sys.executable, str(REPO / "reproduce.py"), *argv], cwd=REPO, text=True,
                           capture_output=True, timeout=300)
    assert third.returncode == 0, third.stderr
    assert "All 4 runs of the grid had finished" in third.stdout
    assert ".py ..." not in third.stdout  # no stage ran
    assert (out / "results.csv").read_bytes() == results_before

    other = subprocess.run([sys.executable, str(REPO / "reproduce.py"), *grid_argv(small_cifar10_root, out, "3")],
                           cwd=REPO, text=True, capture_output=True, timeout=300)
    assert other.returncode == 2 and len(other.stderr.strip().splitlines()) == 1
    assert "--epochs 8 -> 3" in other.stderr


def test_dry_run_prints_every_command_and_writes_nothing(small_cifar10_root, tmp_path, capsys):
    out = tmp_path / "grid"
    run_main(lambda: reproduce.main(grid_argv(small_cifar10_root, out) + ["--dry_run"]))
    commands = [line for line in capsys.readouterr().out.splitlines() if line.endswith(".py") or ".py " in line]
    scripts = [next(part for part in line.split() if part.endswith(".py")) for line in commands]
    assert len(commands) == 12
    assert [s.rsplit("/", 1)[-1] for s in scripts[:3]] == ["train_unsupervised.py", "train_linear_evaluation.py",
                                                           "test.py"]
    assert "--K 2" in commands[0] and "--data_size 64" in commands[0]
    assert "--data_size 128" in commands[6] and "--K" not in commands[6]  # rotationnet
    assert not out.exists()


def test_the_studies_use_the_papers_settings(tmp_path, capsys):
    argv = ["--data_root", str(tmp_path), "--out", str(tmp_path / "g"), "--dry_run", "--seeds", "1"]
    run_main(lambda: reproduce.main(["--study", "table1", "--methods", "relationnet"] + argv))
    lines = [line for line in capsys.readouterr().out.splitlines() if "train_unsupervised.py" in line]
    # cifar10 and cifar100 pretraining serve the transfer and grain conditions too
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
    assert len([line for line in lines if "train_unsupervised.py" in line]) == 5
    assert [line.split("--label_fraction ")[1].split()[0] for line in lines if "--label_fraction" in line] == \
        ["0.01", "0.1", "0.25", "0.5"]
    assert paper_value("cifar100", "relationnet", "resnet32", "") == (46.17, 0.17)
    assert paper_value("stl10_finetune", "simclr", "resnet34", "") == (89.31, 0.14)
    assert paper_value("cifar10", "relationnet", "conv4", "K4") is None
    assert len([key for key in PAPER if key[2] == "resnet32" and key[0] != "cifar10"]) == 7 * 5


def record(method, seed, accuracy, condition="cifar10", backbone="conv4"):
    return {"condition": condition, "variant": "", "method": method, "backbone": backbone, "seed": seed,
            "epochs": 3, "evaluation_epochs": 10, "train_subset": 0, "accuracy": accuracy, "top5": 90.0,
            "knn_accuracy": accuracy - 1, "retrieval_precision": None, "wall_seconds": 60.0,
            "stage1_checkpoint": "a.tar", "evaluation_checkpoint": "b.tar", "order": [0, 0, 0, 0, seed]}


def test_the_table_gives_mean_and_sample_std_over_seeds_beside_the_paper(tmp_path, monkeypatch):
    records = [record("relationnet", s, a) for s, a in ((1, 40.0), (2, 42.0), (3, 44.0))] + [record("simclr", 1, 30.0)]
    cells = group_runs(records)
    assert [c["method"] for c in cells] == ["relationnet", "simclr"]
    assert cells[0]["accuracy"] == (42.0, 2.0) and cells[0]["seeds"] == [1, 2, 3]
    table = markdown_table(cells, "title", "settings")
    assert "| CIFAR-10 | conv4 | relationnet | 1, 2, 3 | 42.00 ± 2.00 | 61.03 | -19.03 | 41.00 ± 2.00 | – | 3 / 10 |" \
        in table
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
    "--study": ["bogus"], "--conditions": ["bogus", "tiny"], "--methods": ["bogus", ","],
    "--backbone": ["resnet9"], "--seeds": ["-1", "a,b", ""], "--epochs": ["0", "-3", "abc"],
    "--linear_epochs": ["0", "abc"], "--train_subset": ["-1", "abc"], "--K": ["1", "0", "abc"],
    "--knn": ["-1", "abc"], "--retrieval": ["-1", "abc"], "--data_root": ["PATH"], "--out": ["FILE"],
    "--device": ["tpu", "cuda:x"],
}
SWITCHES = {"--no_download", "--dry_run"}


def test_the_flag_table_covers_every_flag():
    flags = {action.option_strings[0] for action in reproduce.parser()._actions
             if not isinstance(action, argparse._HelpAction)}
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
    argv = ["--study", "cifar10", "--data_root", str(small_cifar10_root), "--out", str(out), "--no_download",
            "--device", "cpu", "--epochs", "1", "--seeds", "1", flag, value]
    with pytest.raises(SystemExit) as exit_info:
        run_main(lambda: reproduce.main(argv))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert named in err, err
    assert not out.exists()


def test_study_restrictions_are_one_line_errors(tmp_path, capsys):
    for argv, named in ((["--study", "k_sweep", "--K", "4"], "--K"), (["--study", "k_sweep", "--methods", "simclr"],
                                                                      "--methods")):
        with pytest.raises(SystemExit):
            run_main(lambda: reproduce.main(argv + ["--data_root", str(tmp_path), "--out", str(tmp_path / "o")]))
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and named in err, err
    assert json.dumps(STUDIES["k_sweep"].methods) == '["relationnet"]'
