"""ResNet-18 and ResNet-50 through the stage scripts: the stem each run builds, records and
requires (`--stem auto|cifar|imagenet`)."""

from __future__ import annotations

import json

import pytest

import experiments.linear_evaluation as stage2
import experiments.pretraining as stage1
import experiments.testing as stage3
from tests.helpers import load, run_stage, stage_arguments, three_stages

STAGE1_TINY = ["--K", "2", "--data_size", "8", "--train_subset", "16"]
CONV1 = {"cifar": (64, 3, 3, 3), "imagenet": (64, 3, 7, 7)}


def config_of(checkpoint):
    """The config JSON a stage wrote beside `checkpoint` (`<header>.tar` or `<header>_epoch_N.tar`)."""
    header = checkpoint.stem.removesuffix("_epoch_1")
    return json.loads(checkpoint.with_name(f"config_{header}.json").read_text())


def assert_stem(checkpoint, stem: str) -> None:
    state = load(checkpoint)
    assert state["stem"] == stem
    assert tuple(state["backbone"]["conv1.weight"].shape) == CONV1[stem]


def refusal(module, argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        run_stage(module, argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_resnet18_three_stages_on_cifar10_take_the_cifar_stem(small_cifar10_root, tmp_path, capsys):
    args = stage_arguments(small_cifar10_root, tmp_path, backbone="resnet18")
    stage1_file, stage2_file, stage1_out, test_out = three_stages(
        args,
        tmp_path,
        "cifar10",
        "relationnet",
        capsys,
        backbone="resnet18",
        stage1_args=STAGE1_TINY,
        stage2_args=["--train_subset", "20"],
    )
    assert "[INFO] resnet18 (cifar stem) loaded in memory." in stage1_out
    assert "Feature size: 512" in stage1_out
    for checkpoint in (stage1_file, stage2_file):
        assert_stem(checkpoint, "cifar")
    assert config_of(stage1_file)["stem"] == "cifar"
    assert json.loads(stage2_file.with_name(f"config_{stage2_file.stem}.json").read_text())["stem"] == "cifar"
    assert "Test accuracy:" in test_out


def test_resnet50_three_stages_on_stl10_take_the_imagenet_stem(stl10_root, tmp_path, capsys):
    args = stage_arguments(stl10_root, tmp_path, dataset="stl10", backbone="resnet50")
    stage1_file, stage2_file, stage1_out, test_out = three_stages(
        args,
        tmp_path,
        "stl10",
        "relationnet",
        capsys,
        backbone="resnet50",
        stage1_args=STAGE1_TINY,
        stage2_args=["--train_subset", "20"],
    )
    assert "[INFO] resnet50 (imagenet stem) loaded in memory." in stage1_out
    assert "Feature size: 2048" in stage1_out and "96x96" in stage1_out
    for checkpoint in (stage1_file, stage2_file):
        assert_stem(checkpoint, "imagenet")
    assert config_of(stage1_file)["stem"] == "imagenet"
    assert "Test accuracy:" in test_out


@pytest.mark.parametrize("dataset,auto", [("cifar10", "cifar"), ("stl10", "imagenet")])
def test_random_weights_take_the_stem_of_the_image_size_without_reading_the_images(tmp_path, dataset, auto):
    # The data root is empty: randomweights reads no image, the side is the data set's own.
    run_stage(
        stage1,
        stage_arguments(tmp_path / "no_data", tmp_path, dataset=dataset, backbone="resnet50")
        + ["--method", "randomweights"],
    )
    checkpoint = tmp_path / "randomweights" / dataset / f"randomweights_{dataset}_resnet50_seed_1.tar"
    assert_stem(checkpoint, auto)
    assert config_of(checkpoint)["stem"] == auto


def test_a_forced_stem_is_recorded_and_required_by_the_later_stages(small_cifar10_root, tmp_path, capsys):
    args = stage_arguments(small_cifar10_root, tmp_path, backbone="resnet18")
    run_stage(stage1, args + ["--method", "randomweights", "--stem", "imagenet"])
    checkpoint = tmp_path / "randomweights" / "cifar10" / "randomweights_cifar10_resnet18_seed_1.tar"
    assert_stem(checkpoint, "imagenet")
    config = config_of(checkpoint)
    assert config["stem"] == "imagenet" and config["args"]["stem"] == "imagenet"

    expected = (
        f"checkpoint {checkpoint} holds a resnet18 backbone with the imagenet stem, not the cifar stem: "
        "pass --stem imagenet"
    )
    assert expected in refusal(stage2, args + ["--checkpoint", str(checkpoint), "--stem", "cifar"], capsys)
    assert not list(checkpoint.parent.glob("*_linear_evaluation*"))

    # --stem auto builds the checkpoint's stem, although the images are 32 px.
    run_stage(stage2, args + ["--checkpoint", str(checkpoint), "--epochs", "1", "--train_subset", "20"])
    evaluated = checkpoint.with_name("randomweights_cifar10_resnet18_seed_1_epoch_1_linear_evaluation.tar")
    assert "resnet18 (imagenet stem) loaded" in capsys.readouterr().out
    assert_stem(evaluated, "imagenet")
    assert expected.replace(str(checkpoint), str(evaluated)) in refusal(
        stage3, args + ["--checkpoint", str(evaluated), "--stem", "cifar"], capsys
    )
    run_stage(stage3, args + ["--checkpoint", str(evaluated), "--stem", "imagenet"])
    assert "Test accuracy:" in capsys.readouterr().out

    # Stage 1 refuses to start from it with the stem auto picks for 32 px images.
    assert refusal(
        stage1,
        args + ["--method", "rotationnet", "--checkpoint", str(checkpoint), "--data_size", "8", "--train_subset", "8"],
        capsys,
    ).endswith("not the cifar stem: pass --stem imagenet")


def test_a_checkpoint_of_another_backbone_names_its_stem(small_cifar10_root, tmp_path, capsys):
    args = stage_arguments(small_cifar10_root, tmp_path, backbone="resnet18")
    run_stage(stage1, args + ["--method", "randomweights"])
    checkpoint = tmp_path / "randomweights" / "cifar10" / "randomweights_cifar10_resnet18_seed_1.tar"
    other = stage_arguments(small_cifar10_root, tmp_path, backbone="resnet50")
    assert refusal(stage2, other + ["--checkpoint", str(checkpoint)], capsys).endswith(
        "holds a resnet18 backbone with the cifar stem, not resnet50: pass --backbone resnet18"
    )


def test_a_stem_for_a_backbone_without_a_choice_is_refused_by_every_stage(small_cifar10_root, tmp_path, capsys):
    args = stage_arguments(small_cifar10_root, tmp_path, backbone="resnet34")
    run_stage(stage1, args + ["--method", "randomweights"])
    checkpoint = tmp_path / "randomweights" / "cifar10" / "randomweights_cifar10_resnet34_seed_1.tar"
    forced = args + ["--stem", "cifar"]
    for module, extra in (
        (stage1, ["--method", "rotationnet", "--id", "forced"]),
        (stage2, ["--checkpoint", str(checkpoint)]),
        (stage3, ["--checkpoint", str(checkpoint), "--knn", "5"]),
    ):
        assert refusal(module, forced + extra, capsys).endswith(
            "error: --stem cifar: backbone resnet34 has a single stem; drop --stem, "
            "or pass a backbone with a stem choice (resnet18, resnet50)"
        )
    assert [path.name for path in tmp_path.rglob("*.tar")] == [checkpoint.name]
