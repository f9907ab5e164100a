"""What a stage leaves, replaces and continues: --overwrite leaves nothing of the old run that
a resume could pick up, --resume auto continues only the run that owns the files, a log that is
not text stops a resume in one line, test.py prints its result before writing its log
(--log_dir), and a checkpoint named too long for test.py's files is refused before it runs."""

from __future__ import annotations

import argparse
import os
import shutil
import signal

import pytest

import experiments.pretraining as stage1
import experiments.testing as stage3
from engine.loop import Engine
from tests.helpers import load, read_log, run_stage, stage_arguments

RUN = ["--method", "relationnet", "--K", "2", "--data_size", "8", "--train_subset", "16"]
HEADER = "relationnet_cifar10_conv4_seed_1"


def error_of(module, argv, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        run_stage(module, argv)
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return exit_info.value.code, err


def stop_at_step(monkeypatch, step: int) -> None:
    """Ctrl-C during the given optimizer step of the run (counted from 1)."""
    train_step, steps = Engine.train_step, []

    def counting(self, index):
        steps.append(index)
        if len(steps) == step:
            signal.raise_signal(signal.SIGINT)
        return train_step(self, index)

    monkeypatch.setattr(Engine, "train_step", counting)


def test_overwrite_leaves_nothing_a_resume_could_mix_in(small_cifar10_root, tmp_path, monkeypatch, capsys):
    args = stage_arguments(small_cifar10_root, tmp_path) + RUN
    folder = tmp_path / "relationnet" / "cifar10"
    run_stage(stage1, args + ["--epochs", "4"])  # saves epochs 1, 2, 3, 4 (25/50/75/100%)
    old = {path.name: path.read_bytes() for path in folder.iterdir()}

    code, err = error_of(stage1, args + ["--epochs", "8"], capsys)
    assert code == 2 and "--overwrite" in err
    code, err = error_of(stage1, args + ["--epochs", "8", "--overwrite", "--data_root", str(tmp_path / "none")], capsys)
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == old  # a refused run removes nothing

    stop_at_step(monkeypatch, 3)  # 2 steps per epoch: inside the second epoch
    code, _ = error_of(stage1, args + ["--epochs", "8", "--overwrite"], capsys)
    assert code == 128 + signal.SIGINT
    monkeypatch.undo()
    assert sorted(path.name for path in folder.iterdir()) == sorted(
        [f"{HEADER}_last.tar", f"log_{HEADER}.csv", f"config_{HEADER}.json"]
    )

    run_stage(stage1, args + ["--epochs", "8", "--resume", "auto"])
    epochs = [int(row["epoch"]) for row in read_log(folder / f"log_{HEADER}.csv")]
    assert epochs == list(range(epochs[0], epochs[0] + 8))  # 8 consecutive epochs, however numbered
    numbered = sorted(path.name for path in folder.glob(f"{HEADER}_epoch_*.tar"))
    assert numbered == sorted(f"{HEADER}_epoch_{e}.tar" for e in (2, 4, 6, 8))
    assert all(load(folder / name)["args"]["epochs"] == 8 for name in numbered)


def test_resume_auto_continues_only_the_rolling_checkpoint_of_the_run(small_cifar10_root, tmp_path, capsys):
    args = stage_arguments(small_cifar10_root, tmp_path) + RUN + ["--epochs", "1"]
    folder = tmp_path / "relationnet" / "cifar10"
    run_stage(stage1, args)
    (folder / f"{HEADER}_last.tar").unlink()  # a numbered checkpoint alone may be another run's
    code, err = error_of(stage1, args + ["--epochs", "2", "--resume", "auto"], capsys)
    assert code == 2 and f"no {HEADER}_last.tar" in err and "--resume PATH" in err


def test_a_log_that_is_not_text_stops_a_resume_in_one_line(small_cifar10_root, tmp_path, capsys):
    args = stage_arguments(small_cifar10_root, tmp_path) + RUN
    run_stage(stage1, args + ["--epochs", "1"])
    log = tmp_path / "relationnet" / "cifar10" / f"log_{HEADER}.csv"
    log.write_bytes(log.read_bytes() + b"\xff\xfe,\xc3\n")
    code, err = error_of(stage1, args + ["--epochs", "2", "--resume", "auto"], capsys)
    assert code == 2 and str(log) in err and "not readable CSV text" in err


def test_test_py_prints_its_result_before_its_log_and_writes_it_to_log_dir(small_cifar10_root, tmp_path, capsys):
    args = stage_arguments(small_cifar10_root, tmp_path)
    run_stage(stage1, args + ["--method", "standard", "--data_size", "16", "--train_subset", "32", "--epochs", "1"])
    checkpoint = tmp_path / "standard" / "cifar10" / "standard_cifar10_conv4_seed_1_epoch_1.tar"
    capsys.readouterr()
    blocked = checkpoint.parent / f"log_{checkpoint.stem}_test.csv"
    blocked.mkdir()  # the log cannot be written there (a read-only folder does the same; tests run as root)
    code, err = error_of(stage3, args + ["--checkpoint", str(checkpoint)], capsys)
    assert code == 1 and f"could not write the log {blocked}" in err and "--log_dir" in err
    code, err = error_of(stage3, args + ["--checkpoint", str(checkpoint), "--log_dir", str(checkpoint)], capsys)
    assert code == 2 and f"--log_dir {checkpoint} is a file" in err

    run_stage(stage3, args + ["--checkpoint", str(checkpoint), "--log_dir", str(tmp_path / "logs")])
    out = capsys.readouterr().out
    accuracy = [line for line in out.splitlines() if line.startswith("Test accuracy:")]
    assert accuracy and out.index(accuracy[0]) < out.index("[INFO] Result appended to")
    row = read_log(tmp_path / "logs" / f"log_{checkpoint.stem}_test.csv")[0]
    assert f"Test accuracy: {float(row['accuracy']):.2f}%" == accuracy[0]


def test_paths_with_bytes_that_are_not_utf8_are_written_as_escapes(small_cifar10_root, tmp_path, capsys):
    out = tmp_path / os.fsdecode(b"out\xff")  # how Python holds such a name from the command line
    args = stage_arguments(small_cifar10_root, out)
    run_stage(stage1, args + ["--method", "standard", "--data_size", "16", "--train_subset", "32", "--epochs", "1"])
    checkpoint = out / "standard" / "cifar10" / "standard_cifar10_conv4_seed_1_epoch_1.tar"
    logs = tmp_path / os.fsdecode(b"logs\xfe")
    for _ in range(2):  # the second run reads the first one's log back
        run_stage(stage3, args + ["--checkpoint", str(checkpoint), "--log_dir", str(logs)])
    assert "[INFO] Result appended to" in capsys.readouterr().out
    rows = read_log(logs / f"log_{checkpoint.stem}_test.csv")
    assert [row["checkpoint"] for row in rows] == [str(checkpoint).replace("\udcff", "\\udcff")] * 2


def test_a_checkpoint_named_too_long_for_the_test_log_is_refused_before_the_test(small_cifar10_root, tmp_path, capsys):
    args = stage_arguments(small_cifar10_root, tmp_path)
    run_stage(stage1, args + ["--method", "standard", "--data_size", "16", "--train_subset", "32", "--epochs", "1"])
    trained = tmp_path / "standard" / "cifar10" / "standard_cifar10_conv4_seed_1_epoch_1.tar"
    folder = tmp_path / "long"
    folder.mkdir()
    checkpoint = folder / f"{'x' * 246}.tar"  # a name the file system takes; log_<it>_test.csv is 259 bytes
    shutil.copy(trained, checkpoint)
    capsys.readouterr()
    code, err = error_of(stage3, args + ["--checkpoint", str(checkpoint)], capsys)
    assert code == 2 and f"--checkpoint {checkpoint}: its name is too long" in err, err
    assert "at most 228 bytes" in err and "--log_dir changes the folder, not the names" in err
    assert os.listdir(folder) == [checkpoint.name]


@pytest.mark.parametrize(
    "flags, longest_stem",
    [({}, 228), ({"retrieval": 10}, 221), ({"feature_map": "tsne"}, 227)],
    ids=["log", "retrieval_grid", "feature_map"],
)
def test_the_longest_checkpoint_name_test_py_takes_keeps_every_file_it_writes_within_255_bytes(flags, longest_stem):
    def names(stem_bytes: int) -> dict[str, str]:
        args = argparse.Namespace(
            **{
                "checkpoint": f"{'x' * stem_bytes}.tar",
                "retrieval": 0,
                "retrieval_grid": 8,
                "feature_map": "none",
                **flags,
            }
        )
        return stage3.output_names(args)

    stage3.check_output_names(f"{'x' * longest_stem}.tar", names(longest_stem))
    with pytest.raises(stage3.UserError) as refused:
        stage3.check_output_names(f"{'x' * (longest_stem + 1)}.tar", names(longest_stem + 1))
    assert f"at most {longest_stem} bytes" in str(refused.value)
