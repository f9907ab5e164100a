"""Checkpoints crafted or damaged by hand, through the stage scripts' --resume: a file is data.
Names it holds never choose where anything is written, its arguments must show it is the run
being resumed, and every check comes before the first write."""

from __future__ import annotations

import pytest
import torch

import experiments.linear_evaluation as stage2
import experiments.pretraining as stage1
import experiments.testing as test_stage
from engine.checkpoint import save_checkpoint
from engine.commit import COMMIT
from tests.helpers import load, run_stage, stage_arguments

RUN = ["--method", "relationnet", "--K", "2", "--data_size", "8", "--train_subset", "16"]
HEADER = "relationnet_cifar10_conv4_seed_1"


def refused(module, argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        run_stage(module, argv)
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1, err
    return err


def folder_bytes(folder) -> dict:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


@pytest.fixture
def victim(tmp_path):
    folder = tmp_path / "victim"
    folder.mkdir()
    (folder / "important.txt").write_text("keep me")
    return folder


@pytest.fixture
def trained_run(small_cifar10_root, tmp_path):
    """A stage-1 run of 2 epochs: its arguments and its folder."""
    args = stage_arguments(small_cifar10_root, tmp_path / "out") + RUN
    run_stage(stage1, args + ["--epochs", "2"])
    return args, tmp_path / "out" / "relationnet" / "cifar10"


def plant_escape(state: dict, victim) -> dict:
    """The rolling checkpoint `state` with a commit that names files outside its run folder."""
    return {
        **state,
        COMMIT: {
            "log": str(victim / "rc"),
            "row": {"epoch": state["epoch"], "x": "x;touch PWNED;"},
            "checkpoints": [str(victim / "important.txt")],
        },
    }


@pytest.mark.parametrize("how", ["path", "auto"])
def test_a_commit_naming_files_outside_the_run_writes_nothing(trained_run, victim, tmp_path, capsys, how):
    args, folder = trained_run
    crafted = plant_escape(load(folder / f"{HEADER}_last.tar"), victim)
    path = folder / f"{HEADER}_last.tar" if how == "auto" else tmp_path / "crafted_last.tar"
    save_checkpoint(crafted, path)
    before = folder_bytes(folder)

    err = refused(stage1, args + ["--epochs", "3", "--resume", "auto" if how == "auto" else str(path)], capsys)
    assert COMMIT in err and str(path) in err
    assert folder_bytes(victim) == {"important.txt": b"keep me"}
    assert folder_bytes(folder) == before


def test_a_checkpoint_without_the_runs_arguments_is_not_resumed(trained_run, victim, tmp_path, capsys):
    args, folder = trained_run
    path = tmp_path / "crafted_last.tar"
    save_checkpoint({**plant_escape(load(folder / f"{HEADER}_last.tar"), victim), "args": {}}, path)
    before = folder_bytes(folder)
    err = refused(stage1, args + ["--epochs", "3", "--resume", str(path)], capsys)
    assert "does not record the run's" in err and "--checkpoint" in err
    assert folder_bytes(folder) == before and folder_bytes(victim) == {"important.txt": b"keep me"}

    state = load(folder / f"{HEADER}_last.tar")
    del state["args"]["K"]  # one argument missing is enough to doubt the run
    save_checkpoint(state, path)
    assert "--K" in refused(stage1, args + ["--epochs", "3", "--resume", str(path)], capsys)


def test_a_file_written_before_a_flag_existed_resumes_at_the_flags_default(trained_run, capsys):
    """A flag added since the file was written is absent from its record: the run resumes when
    the flag is at its default (how the earlier code ran), and is refused in one line when not."""
    args, folder = trained_run
    last = folder / f"{HEADER}_last.tar"
    state = load(last)
    for added in ("online_probe", "val_images", "keep", "dino_teacher_temperature"):
        del state["args"][added]
    save_checkpoint(state, last)
    assert "--val_images" in refused(stage1, args + ["--epochs", "3", "--val_images", "10", "--resume", "auto"], capsys)
    run_stage(stage1, args + ["--epochs", "3", "--resume", "auto"])
    assert load(last)["epoch"] == 3 and load(last)["args"]["online_probe"] is False


@pytest.mark.parametrize(
    "field, value",
    [("args", "x"), ("args", 5), ("args", torch.zeros(2)), ("epoch", "1"), ("epoch", -5), ("epoch", 2.0)],
)
def test_malformed_fields_of_a_resumed_checkpoint_are_one_line(trained_run, tmp_path, capsys, field, value):
    args, folder = trained_run
    path = tmp_path / "crafted_last.tar"
    save_checkpoint({**load(folder / f"{HEADER}_last.tar"), field: value}, path)
    before = folder_bytes(folder)
    err = refused(stage1, args + ["--epochs", "3", "--resume", str(path)], capsys)
    assert str(path) in err and field in err
    assert folder_bytes(folder) == before


def test_a_finetuning_file_given_to_stage_1_is_refused_before_writing(trained_run, tmp_path, capsys):
    args, folder = trained_run
    stage1_file = folder / f"{HEADER}_epoch_2.tar"
    tuned = [
        "--checkpoint",
        str(stage1_file),
        "--finetune",
        "--epochs",
        "2",
        "--data_size",
        "8",
        "--train_subset",
        "16",
    ]
    run_stage(stage2, args[: -len(RUN)] + tuned)
    capsys.readouterr()
    tuning_last = folder / f"{HEADER}_epoch_2_finetune_last.tar"
    assert COMMIT in load(tuning_last)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    planted = elsewhere / "finetune_last.tar"
    planted.write_bytes(tuning_last.read_bytes())
    before = folder_bytes(folder)
    err = refused(stage1, args + ["--epochs", "3", "--resume", str(planted)], capsys)
    assert "stage-2 file" in err
    assert folder_bytes(folder) == before

    err = refused(stage2, args[: -len(RUN)] + tuned + ["--resume", str(folder / f"{HEADER}_last.tar")], capsys)
    assert "not a stage-2 file" in err
    assert folder_bytes(folder) == before


def poisoned(state: dict, key: str, name: str, value: float) -> dict:
    """`state` with the tensor `name` of its state dict `key` filled with `value`."""
    entry = dict(state[key])
    entry[name] = torch.full_like(entry[name], value)
    return {**state, key: entry}


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_backbone_weights_are_refused_by_stage_2_and_test_py(trained_run, tmp_path, capsys, value):
    args, folder = trained_run
    path = tmp_path / "diverged.tar"
    save_checkpoint(poisoned(load(folder / f"{HEADER}_epoch_2.tar"), "backbone", "layer1.conv.weight", value), path)
    before = folder_bytes(folder)
    common = args[: -len(RUN)] + ["--checkpoint", str(path)]
    err = refused(stage2, common + ["--epochs", "1"], capsys)
    assert str(path) in err and "backbone.layer1.conv.weight" in err and "non-finite" in err
    assert "earlier checkpoint" in err
    err = refused(test_stage, common + ["--knn", "5"], capsys)
    assert str(path) in err and "non-finite" in err
    assert folder_bytes(folder) == before and sorted(tmp_path.iterdir()) == [path, tmp_path / "out"]


def test_finite_weights_with_non_finite_features_are_refused(trained_run, tmp_path, capsys):
    """Weights near float32's largest value are finite, the features they give are not."""
    args, folder = trained_run
    path = tmp_path / "huge.tar"
    save_checkpoint(poisoned(load(folder / f"{HEADER}_epoch_2.tar"), "backbone", "layer4.bn.weight", 3e38), path)
    before = folder_bytes(folder)
    common = args[: -len(RUN)] + ["--checkpoint", str(path)]
    err = refused(stage2, common + ["--epochs", "1"], capsys)
    assert str(path) in err and "non-finite features" in err
    assert "non-finite features" in refused(test_stage, common + ["--knn", "5"], capsys)
    assert folder_bytes(folder) == before and sorted(tmp_path.iterdir()) == [path, tmp_path / "out"]


def wrong_size_optimizer_state(state: dict) -> dict:
    optimizer = {**state["optimizer"], "state": dict(state["optimizer"]["state"])}
    optimizer["state"][0] = {**optimizer["state"][0], "exp_avg": torch.zeros(3)}
    return {**state, "optimizer": optimizer}


@pytest.mark.parametrize(
    "field, crafted",
    [
        (
            "relation.linear1.weight",
            lambda state: {
                **state,
                "relation": {**state["relation"], "linear1.weight": state["relation"]["linear1.weight"].long()},
            },
        ),
        (
            "backbone.layer1.conv.weight",
            lambda state: {
                **state,
                "backbone": {
                    **state["backbone"],
                    "layer1.conv.weight": state["backbone"]["layer1.conv.weight"].double(),
                },
            },
        ),
        ("optimizer.state.0.exp_avg", wrong_size_optimizer_state),
        (
            "optimizer.lr",
            lambda state: {
                **state,
                "optimizer": {
                    **state["optimizer"],
                    "param_groups": [{**group, "lr": "x"} for group in state["optimizer"]["param_groups"]],
                },
            },
        ),
        ("relation", lambda state: {**state, "relation": {**state["relation"], "extra.weight": torch.zeros(1)}}),
        ("rng", lambda state: {key: value for key, value in state.items() if key != "rng"}),
        ("rng", lambda state: {**state, "rng": {"python": 1}}),
        ("rng", lambda state: {**state, "rng": {**state["rng"], "torch": torch.zeros(3, dtype=torch.uint8)}}),
        ("interrupted", lambda state: {**state, "interrupted": {"steps_done": 1}}),
        ("interrupted.ranks", lambda state: {**state, "interrupted": {"steps_done": 1, "seconds": 0.5, "ranks": []}}),
        (
            "grad_scaler.scale",
            lambda state: {**state, "grad_scaler": {**torch.amp.GradScaler("cpu").state_dict(), "scale": "x"}},
        ),
    ],
)
def test_fields_that_do_not_fit_the_run_are_refused_before_the_commit_is_completed(
    trained_run, tmp_path, capsys, field, crafted
):
    """The rolling checkpoint of a run that died inside its last commit (its numbered
    checkpoint missing), with one field that does not fit: refused in one line naming the
    field, before the commit's files are written."""
    args, folder = trained_run
    (folder / f"{HEADER}_epoch_2.tar").unlink()
    path = folder / f"{HEADER}_last.tar"
    save_checkpoint(crafted(load(path)), path)
    before = folder_bytes(folder)
    err = refused(stage1, args + ["--epochs", "3", "--resume", "auto"], capsys)
    assert str(path) in err and f"'{field}" in err
    assert folder_bytes(folder) == before


@pytest.mark.parametrize(
    "field, value",
    [("epoch", "1"), ("epoch", -5), ("dataset", "../../../escaped"), ("method", ["relationnet"]), ("seed", 1.5)],
)
def test_the_record_of_a_run_is_checked_where_a_stage_reads_it(trained_run, tmp_path, capsys, field, value):
    args, folder = trained_run
    path = tmp_path / "crafted.tar"
    save_checkpoint({**load(folder / f"{HEADER}_epoch_2.tar"), field: value}, path)
    before = folder_bytes(folder)
    err = refused(stage2, args[: -len(RUN)] + ["--checkpoint", str(path), "--epochs", "1"], capsys)
    assert str(path) in err and f"'{field}'" in err
    err = refused(
        stage1, args + ["--epochs", "3", "--checkpoint", str(path), "--epoch_start", "1", "--id", "continued"], capsys
    )
    assert str(path) in err and f"'{field}'" in err
    assert folder_bytes(folder) == before and sorted(tmp_path.iterdir()) == [path, tmp_path / "out"]


def test_a_classifier_of_another_dtype_is_refused_by_test_py(trained_run, tmp_path, capsys):
    args, folder = trained_run
    common = args[: -len(RUN)]
    run_stage(stage2, common + ["--checkpoint", str(folder / f"{HEADER}_epoch_2.tar"), "--epochs", "1"])
    capsys.readouterr()
    state = load(folder / f"{HEADER}_epoch_1_linear_evaluation.tar")  # named by its own epochs
    path = tmp_path / "crafted_linear.tar"
    save_checkpoint(
        {**state, "classifier": {**state["classifier"], "weight": state["classifier"]["weight"].long()}}, path
    )
    err = refused(test_stage, common + ["--checkpoint", str(path)], capsys)
    assert str(path) in err and "'classifier.weight'" in err and "int64" in err
    assert sorted(tmp_path.iterdir()) == [path, tmp_path / "out"]
