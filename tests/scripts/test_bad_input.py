"""Bad input to the stage scripts that used to end in a traceback or in a score that means
nothing: checkpoints of another method or stage, forged checkpoint entries, images too small
for the backbone, a classifier tested on another data set. Each is one line on stderr and
leaves no file behind."""

from __future__ import annotations

import pytest
import torch

import experiments.linear_evaluation as stage2
import experiments.pretraining as stage1
import experiments.testing as stage3
from backbones import build_backbone
from methods.standard import Standard
from tests.helpers import build_method, run_stage, stage_arguments, write_image_folder


def _refused(module, argv, capsys) -> str:
    with pytest.raises(SystemExit) as stopped:
        run_stage(module, argv)
    error = capsys.readouterr().err.strip()
    assert stopped.value.code == 2 and len(error.splitlines()) == 1 and "Traceback" not in error, error
    return error


def _stage2_file(path, dataset: str = "cifar10", pretraining_method: str = "relationnet") -> None:
    torch.save(
        {
            **Standard(build_backbone("conv4"), 10).checkpoint_state(),
            "method": pretraining_method,
            "dataset": dataset,
            "pretraining_method": pretraining_method,
            "args": {"image_size": 0},
        },
        path,
    )


@pytest.mark.parametrize(
    "written_by,keys,method,expected",
    [
        ("simclr", {"method"}, "relationnet", "is a stage-1 simclr checkpoint, not relationnet: pass --method simclr"),
        ("relationnet", {"method"}, "simclr", "is a stage-1 relationnet checkpoint, not simclr"),
        ("deepcluster", {"method"}, "rotationnet", "is a stage-1 deepcluster checkpoint, not rotationnet"),
        ("standard", {"method"}, "deepinfomax", "is a stage-1 standard checkpoint, not deepinfomax"),
        # the original code's files name no method: told by their keys, or by the weights that do not fit
        ("relationnet", set(), "simclr", "is a stage-1 relationnet checkpoint, not simclr"),
        (
            "deepcluster",
            set(),
            "rotationnet",
            "its 'classifier' entry holds 'linear1.weight', which this run's classifier",
        ),
        ("stage2", {"method"}, "standard", "is a stage-2 file (linear evaluation or fine-tuning of a relationnet"),
    ],
)
def test_stage1_names_a_checkpoint_of_another_method_or_stage(
    small_cifar10_root, tmp_path, capsys, written_by, keys, method, expected
):
    path = tmp_path / "given.tar"
    if written_by == "stage2":
        _stage2_file(path)
    else:
        state = build_method(written_by).checkpoint_state()
        torch.save({**state, **({"method": written_by} if keys else {})}, path)
    error = _refused(
        stage1,
        stage_arguments(small_cifar10_root, tmp_path / "out")
        + ["--method", method, "--epochs", "1", "--checkpoint", str(path)],
        capsys,
    )
    assert expected in error
    assert not list((tmp_path / "out").rglob("*.tar"))


@pytest.mark.parametrize("module", [stage1, stage2, stage3])
@pytest.mark.parametrize(
    "forged",
    [{"backbone": "str"}, {"backbone": {"conv.weight": "str"}}, {"backbone": {}, "classifier": [1, 2]}],
    ids=["str", "values", "classifier"],
)
def test_a_forged_checkpoint_entry_is_one_line(small_cifar10_root, tmp_path, capsys, module, forged):
    path = tmp_path / "forged.tar"
    torch.save(forged, path)
    error = _refused(
        module,
        stage_arguments(small_cifar10_root, tmp_path / "out")
        + ["--checkpoint", str(path), *(["--epochs", "1", "--method", "standard"] if module is stage1 else [])],
        capsys,
    )
    assert "is a" in error and "not a state dict" in error and str(path) in error


def test_a_classifier_of_another_data_set_or_image_size_is_refused_unless_cross_domain(stl10_root, tmp_path, capsys):
    checkpoint = tmp_path / "cifar10_linear_evaluation.tar"
    _stage2_file(checkpoint)
    stl10 = stage_arguments(stl10_root, tmp_path, dataset="stl10") + ["--checkpoint", str(checkpoint)]
    error = _refused(stage3, stl10, capsys)
    assert "was trained on cifar10, not stl10: pass --dataset cifar10, or --cross_domain" in error
    pretrained = tmp_path / "randomweights.tar"
    torch.save(
        {"backbone": build_backbone("conv4").state_dict(), "method": "randomweights", "dataset": "cifar10"}, pretrained
    )
    knn = stage_arguments(stl10_root, tmp_path, dataset="stl10") + ["--checkpoint", str(pretrained), "--knn", "5"]
    assert "was trained on 32x32 cifar10 images, these are 96x96: pass --cross_domain" in _refused(stage3, knn, capsys)
    assert not list(tmp_path.glob("log_*"))
    run_stage(stage3, stl10 + ["--cross_domain"])
    assert "Test accuracy:" in capsys.readouterr().out


@pytest.mark.parametrize("side,image_size", [(1, 0), (4, 0), (32, 4)], ids=["1px", "4px", "image_size_4"])
def test_images_too_small_for_the_backbone_are_one_line(tmp_path, capsys, side, image_size):
    root = write_image_folder(tmp_path / "data", ["a", "b"], n_train=4, sizes=((side, side),))
    arguments = stage_arguments(root, tmp_path / "out", dataset="folder") + ["--image_size", str(image_size)]
    error = _refused(stage1, arguments + ["--method", "rotationnet", "--epochs", "1"], capsys)
    shown = image_size or side
    assert f"of {shown}x{shown} px are too small for backbone conv4, which needs at least 8x8" in error
    assert not [path for path in (tmp_path / "out").rglob("*") if path.is_file()]


def test_numbered_checkpoints_of_a_huge_run_are_not_enumerated():
    epochs = 2**31 - 1  # the flag's bound; --save_every 1 built a set of every epoch (MemoryError)
    assert stage1.saves_numbered(epochs // 4, epochs, 0) and stage1.saves_numbered(12345, epochs, 1)
    assert not stage1.saves_numbered(12345, epochs, 0) and not stage1.saves_numbered(0, epochs, 1)
    assert [e for e in range(1, 9) if stage1.saves_numbered(e, 8, 3)] == [2, 3, 4, 6, 8]


def test_keep_chooses_the_numbered_checkpoints():
    kept = {
        keep: [e for e in range(1, 9) if stage1.saves_numbered(e, 8, 0, keep)] for keep in ("fractions", "last", "all")
    }
    assert kept == {"fractions": [2, 4, 6, 8], "last": [8], "all": list(range(1, 9))}
    assert [e for e in range(1, 4) if stage1.saves_numbered(e, 3, 0)] == [
        1,
        2,
        3,
    ]  # a 3-epoch run: 1 of 3 quarters is 0
    assert [e for e in range(1, 9) if stage1.saves_numbered(e, 8, 3, "last")] == [3, 6, 8]


def test_knn_votes_with_the_train_subset_stage_2_drew_and_a_k_past_it_is_one_line(small_cifar10_root, tmp_path, capsys):
    pretrained = tmp_path / "randomweights.tar"
    torch.save(
        {"backbone": build_backbone("conv4").state_dict(), "method": "randomweights", "dataset": "cifar10", "seed": 4},
        pretrained,
    )
    knn = stage_arguments(small_cifar10_root, tmp_path, seed=-1) + ["--checkpoint", str(pretrained), "--knn", "5"]
    run_stage(stage3, knn + ["--train_subset", "40"])
    out = capsys.readouterr().out
    assert "[INFO] Seed 4: the checkpoint's" in out and "[INFO] kNN: 40 labelled training images vote" in out
    error = _refused(stage3, knn[:-1] + ["50", "--train_subset", "40"], capsys)
    assert "--knn 50: the cifar10 training images of --train_subset 40 are only 40: lower --knn" in error
