"""Stage 2 with --classifier logistic, then test.py: file names, keys, log, config, refusals,
determinism, and test.py scoring the saved classifier as stage 2 did."""

from __future__ import annotations

import json

import pytest
import torch

import experiments.linear_evaluation as stage2
import experiments.pretraining as stage1
import experiments.testing as stage3
from methods.standard import Standard
from tests.helpers import load, read_log, run_stage, stage_arguments

pytestmark = pytest.mark.usefixtures("single_cpu_thread")  # 200 images: a second thread only waits

HEADER = "randomweights_cifar10_conv4_seed_1"


@pytest.fixture()
def random_backbone(small_cifar10_root, tmp_path):
    """Stage-2 flags and the stage-1 file of an untrained Conv-4."""
    args = stage_arguments(small_cifar10_root, tmp_path)
    run_stage(stage1, args + ["--method", "randomweights"])
    return args, tmp_path / "randomweights" / "cifar10" / f"{HEADER}.tar"


def test_logistic_regression_files_keys_and_test_py_accuracy(random_backbone, capsys):
    args, checkpoint = random_backbone
    folder = checkpoint.parent
    capsys.readouterr()
    run_stage(stage2, args + ["--checkpoint", str(checkpoint), "--classifier", "logistic"])
    stage2_out = capsys.readouterr().out
    name = f"{HEADER}_logistic_regression"
    state = load(folder / f"{name}.tar")
    assert set(state) == set(Standard.checkpoint_keys) | {
        "kind",
        "classifier_kind",
        "objective",
        "iterations",
        "method",
        "backbone_name",
        "dataset",
        "seed",
        "args",
        "source_checkpoint",
        "pretraining_method",
        "pretraining_dataset",
        "pretraining_epochs",
    }
    assert state["kind"] == state["classifier_kind"] == "logistic_regression"
    assert state["classifier"]["weight"].shape == (10, 64)
    assert state["args"]["classifier"] == "logistic" and state["args"]["epochs"] is None
    assert state["args"]["logistic_c"] == 1.0 and state["args"]["logistic_max_iter"] == 100
    config = json.loads((folder / f"config_{name}.json").read_text())
    assert config["stage"] == "logistic_regression" and config["training_images"] == 200
    [row] = read_log(folder / f"log_{name}.csv")
    assert list(row) == ["loss", "accuracy", "test_accuracy", "test_loss", "objective", "iterations", "seconds"]
    assert 0 < int(row["iterations"]) == state["iterations"] <= 100
    # The log keeps 8 significant digits (engine/csv_log.py CSV_FLOAT_DIGITS).
    assert float(row["objective"]) == pytest.approx(state["objective"], rel=1e-7)
    assert state["objective"] > float(row["loss"])  # the penalty is part of it
    assert "Logistic regression [" in stage2_out and f"{row['iterations']} L-BFGS iterations" in stage2_out

    run_stage(stage3, args + ["--checkpoint", str(folder / f"{name}.tar")])
    stage3_out = capsys.readouterr().out
    [accuracy] = [line for line in stage2_out.splitlines() if line.startswith("Test accuracy:")]
    assert accuracy == f"Test accuracy: {float(row['test_accuracy']):.2f}%" and accuracy in stage3_out
    [scored] = read_log(folder / f"log_{name}_test.csv")
    assert float(scored["accuracy"]) == float(row["test_accuracy"])
    assert float(scored["loss"]) == pytest.approx(float(row["test_loss"]), rel=1e-5)

    # Linear evaluation of the same backbone keeps its own name beside it.
    run_stage(stage2, args + ["--checkpoint", str(checkpoint), "--epochs", "1"])
    assert "classifier_kind" not in load(folder / f"{HEADER}_epoch_1_linear_evaluation.tar")
    assert (folder / f"{name}.tar").exists()


def test_two_logistic_regressions_give_identical_weights(random_backbone):
    args, checkpoint = random_backbone
    argv = args + ["--checkpoint", str(checkpoint), "--classifier", "logistic", "--logistic_max_iter", "20"]
    run_stage(stage2, argv)
    path = checkpoint.with_name(f"{HEADER}_logistic_regression.tar")
    first = load(path)["classifier"]
    run_stage(stage2, argv + ["--overwrite"])
    second = load(path)["classifier"]
    assert all(torch.equal(first[key], second[key]) for key in ("weight", "bias"))


def test_label_fraction_and_train_subset_with_logistic_regression(random_backbone):
    args, checkpoint = random_backbone
    run_stage(
        stage2,
        args
        + [
            "--checkpoint",
            str(checkpoint),
            "--classifier",
            "logistic",
            "--train_subset",
            "100",
            "--label_fraction",
            "0.5",
            "--logistic_c",
            "0.5",
            "--logistic_max_iter",
            "3",
        ],
    )
    name = f"{HEADER}_logistic_regression_labels_50pct"
    assert json.loads(checkpoint.with_name(f"config_{name}.json").read_text())["training_images"] == 50
    state = load(checkpoint.with_name(f"{name}.tar"))
    assert state["iterations"] <= 3 and state["args"]["logistic_c"] == 0.5


@pytest.mark.parametrize(
    "flags,expected",
    [
        (["--classifier", "logistic", "--epochs", "3"], "--epochs with --classifier logistic"),
        (["--classifier", "logistic", "--finetune"], "--finetune with --classifier logistic"),
        (["--classifier", "logistic", "--resume", "auto"], "--resume with --classifier logistic"),
        (["--logistic_c", "2"], "--logistic_c belongs to --classifier logistic"),
        (
            ["--classifier", "linear", "--logistic_max_iter", "5"],
            "--logistic_max_iter belongs to --classifier logistic",
        ),
    ],
)
def test_flags_of_the_other_classifier_are_refused_in_one_line(tmp_path, capsys, flags, expected):
    with pytest.raises(SystemExit) as stopped:
        run_stage(stage2, ["--checkpoint_dir", str(tmp_path), "--checkpoint", str(tmp_path / "x.tar"), *flags])
    error = capsys.readouterr().err.strip()
    assert stopped.value.code == 2 and "\n" not in error and expected in error, error
    assert not list(tmp_path.iterdir())
