"""Stage 1's monitoring: `--eval_every` logs a kNN accuracy of the backbone without changing
the training, `--tensorboard` writes every logged quantity for TensorBoard and `--wandb` sends
them with the run's configuration to a Weights & Biases run (offline here)."""

from __future__ import annotations

import errno
import importlib.util
import io
import json
import struct
import sys
from pathlib import Path

import pytest

import experiments.pretraining as stage1
import reproduce
from experiments.monitoring import import_wandb, tensorboard_listener, wandb_listener
from experiments.stage import run_main
from tests.helpers import load, one_line, read_log, run_stage, stage_arguments
from utils.errors import UserError

HAS_TENSORBOARD = importlib.util.find_spec("tensorboard") is not None
HAS_WANDB = importlib.util.find_spec("wandb") is not None
HEADER = "relationnet_cifar10_conv4_seed_1"


def train(root, out, *extra):
    run_stage(
        stage1,
        stage_arguments(root, out)
        + ["--method", "relationnet", "--K", "2", "--data_size", "50", "--epochs", "3", *extra],
    )
    folder = out / "relationnet" / "cifar10"
    return read_log(folder / f"log_{HEADER}.csv"), load(folder / f"{HEADER}_epoch_3.tar")


def test_eval_every_logs_knn_accuracy_and_leaves_the_training_as_it_is(
    small_cifar10_root, tmp_path, capsys, wandb_offline
):
    plain_rows, plain_state = train(small_cifar10_root, tmp_path / "plain")
    extra = ["--eval_every", "2", "--eval_images", "100"]
    if HAS_TENSORBOARD:
        extra += ["--tensorboard", str(tmp_path / "tensorboard")]
    if HAS_WANDB:  # its rows are read back in test_wandb_offline_holds_...
        extra += ["--wandb", "ssl"]
    watched_rows, watched_state = train(small_cifar10_root, tmp_path / "watched", *extra)
    shown = capsys.readouterr().out
    assert "Epoch 2/3 monitor" in shown and "Epoch 3/3 monitor" in shown and "Epoch 1/3 monitor" not in shown
    # Every training column agrees; the monitor's columns are filled after epochs 2 and 3 (the last).
    monitor_columns = {"knn_accuracy", "knn_top5", "rankme", "alignment", "uniformity"}
    for plain, watched in zip(plain_rows, watched_rows, strict=True):
        assert set(watched) - set(plain) == monitor_columns
        assert {k: v for k, v in watched.items() if k not in monitor_columns and k != "seconds"} == {
            k: v for k, v in plain.items() if k != "seconds"
        }
    assert [row["knn_accuracy"] == row["rankme"] == "" for row in watched_rows] == [True, False, False]
    for row in watched_rows[1:]:
        assert 0 <= float(row["knn_top5"]) <= 100 and float(row["knn_accuracy"]) <= float(row["knn_top5"])
        assert 1 <= float(row["rankme"]) <= 64 and 0 <= float(row["alignment"]) <= 4
        assert -8 <= float(row["uniformity"]) < 0  # -8: every pair opposite; 0: all coincide
    # Without a validation split, the monitor says what its numbers must not be used for.
    assert "test split: for monitoring only, not for selecting" in shown
    for key, value in plain_state["backbone"].items():
        assert value.equal(watched_state["backbone"][key]), key
    if HAS_TENSORBOARD:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        events = EventAccumulator(str(tmp_path / "tensorboard" / HEADER))
        events.Reload()
        assert {"train/loss", "train/accuracy", "train/lr", "monitor/knn_accuracy"} <= set(events.Tags()["scalars"])
        assert [event.step for event in events.Scalars("train/loss")] == [1, 2, 3]
        assert [event.step for event in events.Scalars("monitor/knn_accuracy")] == [2, 3]
        assert events.Scalars("train/loss")[0].value == pytest.approx(float(plain_rows[0]["loss"]), rel=1e-6)
        assert f"[INFO] TensorBoard: {tmp_path / 'tensorboard' / HEADER} (view with: tensorboard --logdir" in shown


def test_tensorboard_without_the_package_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if it were not installed
    with pytest.raises(UserError) as refused:
        tensorboard_listener(tmp_path, "run")
    assert "pip install tensorboard" in one_line(refused.value)
    assert not list(tmp_path.iterdir())


@pytest.mark.skipif(not HAS_TENSORBOARD, reason="tensorboard is not installed")
@pytest.mark.parametrize("full_from", [1, 2], ids=["at_start", "after_epoch_1"])
def test_a_full_disk_under_tensorboard_is_one_line_naming_its_file(
    small_cifar10_root, tmp_path, monkeypatch, capsys, full_from
):
    from tensorboard.summary.writer.record_writer import RecordWriter

    writes = []

    def disk_full(self, data):  # the full_from-th append (the first: the file's version event) fails
        writes.append(data)
        if len(writes) >= full_from:
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(RecordWriter, "write", disk_full)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        train(small_cifar10_root, out, "--tensorboard", str(tmp_path / "tensorboard"))
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 1 and len(err.splitlines()) == 1, err
    assert f"error: No space left on device: {tmp_path / 'tensorboard' / HEADER}/events.out.tfevents." in err
    saved = read_log(out / "relationnet" / "cifar10" / f"log_{HEADER}.csv") if full_from > 1 else []
    assert [row["epoch"] for row in saved] == ["1"][: len(saved)] and len(saved) == full_from - 1


def wandb_records(path: Path):
    """The records of a W&B run file (`run-<id>.wandb`), as wandb writes them: a 7-byte header,
    then blocks of 32 KiB holding LevelDB-log chunks (checksum, length, type) of protobuf
    `Record`s, a record split over chunks of types FIRST, MIDDLE, LAST."""
    from wandb.proto import wandb_internal_pb2

    data, block, header = path.read_bytes(), 32768, 7
    assert data[:header] == b":W&B\xe1\xbe\x00", data[:header]
    position, pieces = header, b""
    while position + header <= len(data):
        left = block - position % block
        _, length, kind = struct.unpack("<IHB", data[position : position + header])
        if left < header or kind == 0:  # the rest of a block is padding
            position += left
            continue
        pieces += data[position + header : position + header + length]
        position += header + length
        if kind in (1, 4):  # FULL or LAST
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pieces)
            yield record
            pieces = b""


def items(updates) -> dict:
    return {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in updates}


@pytest.fixture
def wandb_offline(tmp_path, monkeypatch):
    """The wandb package with no account and all its folders under tmp_path: nothing can leave."""
    folder = tmp_path / "wandb_home"
    for variable in ("WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_PROJECT", "WANDB_ENTITY", "WANDB_RUN_ID"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    for variable in ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(variable, str(folder / variable.lower()))
        (folder / variable.lower()).mkdir(parents=True)
    yield folder / "wandb_dir"
    if HAS_WANDB:  # wandb keeps the settings of a process's first run (its folder, its mode): forget them
        import wandb

        wandb.teardown()


@pytest.mark.skipif(not HAS_WANDB, reason="wandb is not installed (pip install wandb; requirements-test.txt has it)")
def test_wandb_offline_holds_the_runs_name_configuration_and_every_logged_number(
    small_cifar10_root, tmp_path, wandb_offline
):
    rows, _ = train(small_cifar10_root, tmp_path / "out", "--eval_every", "2", "--eval_images", "100", "--wandb", "ssl")
    run_files = list(wandb_offline.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(run_files) == 1, run_files
    records = list(wandb_records(run_files[0]))
    kinds = [record.WhichOneof("record_type") for record in records]
    (run,) = [record.run for record in records if record.HasField("run")]
    assert (run.project, run.display_name) == ("ssl", HEADER)
    config = items(run.config.update)
    for record in records:
        if record.HasField("config"):
            config.update(items(record.config.update))
    recorded = json.loads((tmp_path / "out" / "relationnet" / "cifar10" / f"config_{HEADER}.json").read_text())
    assert config["args"] == recorded["args"] and config["args"]["wandb"] == "ssl"
    assert {key: config[key] for key in ("stage", "seed_used", "device", "training_images")} == {
        key: recorded[key] for key in ("stage", "seed_used", "device", "training_images")
    }
    history = [
        (record.history.step.num, items(record.history.item)) for record in records if record.HasField("history")
    ]
    assert [step for step, _ in history] == [1, 2, 3]
    for (step, logged), row in zip(history, rows, strict=True):
        numbers = {name: float(value) for name, value in row.items() if name != "epoch" and value != ""}
        assert {name: logged[name] for name in numbers} == pytest.approx(numbers, rel=1e-6), step
    assert "knn_accuracy" not in history[0][1] and "knn_accuracy" in history[1][1]  # watched epochs only
    assert kinds[-1] == "exit" and records[-1].exit.exit_code == 0


def test_wandb_without_the_package_is_one_line_before_anything_is_read(
    small_cifar10_root, tmp_path, monkeypatch, capsys
):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if it were not installed
    with pytest.raises(UserError) as refused:
        import_wandb()
    assert "pip install wandb" in one_line(refused.value)
    for run in (
        lambda: stage1.main(stage_arguments(small_cifar10_root, tmp_path / "out") + ["--epochs", "1", "--wandb", "p"]),
        lambda: reproduce.main(
            [
                "--study",
                "cifar10",
                "--data_root",
                str(small_cifar10_root),
                "--out",
                str(tmp_path / "grid"),
                "--wandb",
                "p",
            ]
        ),
    ):
        with pytest.raises(SystemExit) as exit_info:
            run_main(run)
        err = capsys.readouterr().err.strip()
        assert exit_info.value.code == 2 and len(err.splitlines()) == 1 and "pip install wandb" in err, err
    assert not (tmp_path / "out").exists() and not (tmp_path / "grid").exists()


@pytest.mark.skipif(not HAS_WANDB, reason="wandb is not installed (pip install wandb; requirements-test.txt has it)")
def test_wandb_online_without_an_account_is_one_line_naming_the_ways_out(tmp_path, monkeypatch, wandb_offline):
    monkeypatch.delenv("WANDB_MODE")  # wandb's default, online, and no key anywhere (HOME holds no .netrc)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(sys, "stdin", io.StringIO())  # not a terminal: wandb cannot ask
    with pytest.raises(UserError) as refused, wandb_listener("ssl", HEADER, {"seed": 1}):
        pass
    assert "wandb login" in one_line(refused.value) and "WANDB_MODE=offline" in str(refused.value)
