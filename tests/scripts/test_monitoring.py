"""Stage 1's monitoring: `--eval_every` logs a kNN accuracy of the backbone without changing
the training, and `--tensorboard` writes every logged quantity for TensorBoard."""

from __future__ import annotations

import errno
import importlib.util
import sys

import pytest

import experiments.pretraining as stage1
from experiments.monitoring import tensorboard_listener
from tests.helpers import load, one_line, read_log, run_stage, stage_arguments
from utils.errors import UserError

HAS_TENSORBOARD = importlib.util.find_spec("tensorboard") is not None
HEADER = "relationnet_cifar10_conv4_seed_1"


def train(root, out, *extra):
    run_stage(
        stage1,
        stage_arguments(root, out)
        + ["--method", "relationnet", "--K", "2", "--data_size", "50", "--epochs", "3", *extra],
    )
    folder = out / "relationnet" / "cifar10"
    return read_log(folder / f"log_{HEADER}.csv"), load(folder / f"{HEADER}_epoch_3.tar")


def test_eval_every_logs_knn_accuracy_and_leaves_the_training_as_it_is(small_cifar10_root, tmp_path, capsys):
    plain_rows, plain_state = train(small_cifar10_root, tmp_path / "plain")
    extra = ["--eval_every", "2", "--eval_images", "100"]
    if HAS_TENSORBOARD:
        extra += ["--tensorboard", str(tmp_path / "tensorboard")]
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
        assert {"loss", "accuracy", "lr", "knn_accuracy"} <= set(events.Tags()["scalars"])
        assert [event.step for event in events.Scalars("loss")] == [1, 2, 3]
        assert [event.step for event in events.Scalars("knn_accuracy")] == [2, 3]
        assert events.Scalars("loss")[0].value == pytest.approx(float(plain_rows[0]["loss"]), rel=1e-6)


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
