"""The three stage scripts end to end: file names, checkpoint keys, cross-domain, errors."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys

import pytest
import torch

import experiments.linear_evaluation as stage2
import experiments.pretraining as stage1
import experiments.testing as stage3
from backbones import build_backbone
from datasets.augment import AffineEraseViews
from experiments.cli import stage1_parser
from experiments.options import stage1_config
from experiments.stage import run_main
from methods.base import ViewGroup
from methods.standard import Standard
from tests.helpers import REPO, load, run_stage, stage_arguments, views_flag

ALL_BACKBONES = ["conv4", "resnet8", "resnet32", "resnet56", "resnet34"]


@pytest.mark.parametrize("backbone", ALL_BACKBONES)
def test_relationnet_three_stages_on_every_backbone(small_cifar10_root, tmp_path, capsys, backbone):
    args = stage_arguments(small_cifar10_root, tmp_path, backbone=backbone)
    run_stage(
        stage1,
        args + ["--method", "relationnet", "--K", "2", "--data_size", "8", "--train_subset", "16", "--epochs", "1"],
    )
    folder = tmp_path / "relationnet" / "cifar10"
    header = f"relationnet_cifar10_{backbone}_seed_1"
    stage1_file = folder / f"{header}_epoch_1.tar"
    state = load(stage1_file)
    assert {"backbone", "relation", "optimizer"} <= set(state)
    assert state["epoch"] == 1 and state["args"]["backbone"] == backbone
    assert (folder / f"log_{header}.csv").read_text().splitlines()[0].startswith("epoch,loss,score")
    assert json.loads((folder / f"config_{header}.json").read_text())["seed_used"] == 1

    run_stage(stage2, args + ["--checkpoint", str(stage1_file), "--epochs", "2", "--train_subset", "40"])
    stage2_file = folder / f"{header}_epoch_2_linear_evaluation.tar"
    assert set(load(stage2_file)) >= {"classifier", "backbone", "optimizer", "optimizer_lineval", "optimizer_finetune"}
    assert len((folder / f"log_{header}_epoch_2_linear_evaluation.csv").read_text().splitlines()) == 3

    capsys.readouterr()
    run_stage(stage3, args + ["--checkpoint", str(stage2_file)])
    out = capsys.readouterr().out
    assert "Test accuracy:" in out and "Test top-5 accuracy:" in out and "Test loss:" in out
    assert (folder / f"log_{header}_epoch_2_linear_evaluation_test.csv").exists()


STAGE1_KEYS = {
    "relationnet": {"backbone", "relation", "optimizer"},
    "simclr": {"backbone", "head", "optimizer"},
    "rotationnet": {"classifier", "backbone", "optimizer"},
    "deepcluster": {"classifier", "backbone", "optimizer"},
    "deepinfomax": {"backbone", "loss_fn", "optimizer"},
    "standard": {"classifier", "backbone", "optimizer", "optimizer_lineval", "optimizer_finetune"},
    "randomweights": {"backbone"},
    "relic": {
        "backbone",
        "online_backbone",
        "critic",
        "target_critic",
        "log_temperature",
        "logit_bias",
        "optimizer",
        "gamma",
        "momentum_steps",
    },
}


@pytest.mark.parametrize("method", sorted(STAGE1_KEYS))
def test_every_method_runs_the_three_stages_on_resnet8(small_cifar10_root, tmp_path, capsys, method):
    args = stage_arguments(small_cifar10_root, tmp_path, backbone="resnet8")
    run_stage(
        stage1,
        args + ["--method", method, *views_flag(method), "--data_size", "16", "--train_subset", "64", "--epochs", "1"],
    )
    folder = tmp_path / method / "cifar10"
    header = f"{method}_cifar10_resnet8_seed_1"
    stage1_file = folder / (f"{header}.tar" if method == "randomweights" else f"{header}_epoch_1.tar")
    assert STAGE1_KEYS[method] <= set(load(stage1_file))
    run_stage(stage2, args + ["--checkpoint", str(stage1_file), "--epochs", "1"])
    run_stage(
        stage3, args + ["--checkpoint", str(folder / f"{method}_cifar10_resnet8_seed_1_epoch_1_linear_evaluation.tar")]
    )
    assert "Test accuracy:" in capsys.readouterr().out


def test_linear_evaluation_learns_and_equals_the_test_stage(cifar10_root, tmp_path, capsys):
    args = stage_arguments(cifar10_root, tmp_path)
    run_stage(stage1, args + ["--method", "randomweights"])
    random_file = tmp_path / "randomweights" / "cifar10" / "randomweights_cifar10_conv4_seed_1.tar"
    assert set(load(random_file)) >= {"backbone"}
    run_stage(stage2, args + ["--checkpoint", str(random_file), "--epochs", "20", "--train_subset", "2000"])
    stage2_out = capsys.readouterr().out
    run_stage(stage3, args + ["--checkpoint", str(random_file).replace(".tar", "_epoch_20_linear_evaluation.tar")])
    stage3_out = capsys.readouterr().out
    accuracy = [line for line in stage2_out.splitlines() if line.startswith("Test accuracy:")][0]
    assert accuracy in stage3_out  # the two stages score the same model identically
    # Chance is 10% (std 0.7 points over 2,000 test images); random conv4 features reach ~16.
    assert float(accuracy.split()[-1].rstrip("%")) > 13.0


@pytest.mark.parametrize("backbone", ["conv4", "resnet8"])
def test_standard_cifar100_then_supercifar100_grain(cifar100_root, tmp_path, capsys, backbone):
    args = stage_arguments(cifar100_root, tmp_path, dataset="cifar100", backbone=backbone)
    run_stage(stage1, args + ["--method", "standard", "--epochs", "2", "--data_size", "64"])
    out = capsys.readouterr().out
    assert "Test accuracy:" in out
    checkpoint = tmp_path / "standard" / "cifar100" / f"standard_cifar100_{backbone}_seed_1_epoch_2.tar"
    state = load(checkpoint)
    assert state["classifier"]["weight"].shape[0] == 100
    # A stage-1 standard checkpoint is scored by test.py directly.
    run_stage(stage3, args + ["--checkpoint", str(checkpoint)])
    assert "Test accuracy:" in capsys.readouterr().out
    # Grain: CIFAR-100 backbone, linear evaluation on the 20 superclasses.
    grain = stage_arguments(cifar100_root, tmp_path, dataset="supercifar100", backbone=backbone)
    run_stage(stage2, grain + ["--checkpoint", str(checkpoint), "--epochs", "1"])
    out_file = (
        tmp_path
        / "standard"
        / "supercifar100"
        / f"standard_supercifar100_from_cifar100_{backbone}_seed_1_epoch_1_linear_evaluation.tar"
    )
    assert load(out_file)["classifier"]["weight"].shape[0] == 20
    config = json.loads(out_file.with_name(f"config_{out_file.stem}.json").read_text())
    assert config["pretraining_dataset"] == "cifar100"


def test_cross_domain_cifar10_backbone_on_cifar100(small_cifar10_root, cifar100_root, tmp_path):
    run_stage(
        stage1,
        stage_arguments(small_cifar10_root, tmp_path)
        + ["--method", "relationnet", "--K", "2", "--epochs", "1", "--data_size", "50"],
    )
    checkpoint = tmp_path / "relationnet" / "cifar10" / "relationnet_cifar10_conv4_seed_1_epoch_1.tar"
    run_stage(
        stage2,
        stage_arguments(cifar100_root, tmp_path, dataset="cifar100")
        + ["--checkpoint", str(checkpoint), "--epochs", "1"],
    )
    assert (
        tmp_path
        / "relationnet"
        / "cifar100"
        / "relationnet_cifar100_from_cifar10_conv4_seed_1_epoch_1_linear_evaluation.tar"
    ).exists()


def test_finetune_gets_its_own_file_and_decays(small_cifar10_root, tmp_path, capsys):
    args = stage_arguments(small_cifar10_root, tmp_path)
    run_stage(stage1, args + ["--method", "randomweights"])
    checkpoint = tmp_path / "randomweights" / "cifar10" / "randomweights_cifar10_conv4_seed_1.tar"
    run_stage(stage2, args + ["--checkpoint", str(checkpoint), "--finetune", "--epochs", "4"])
    out = capsys.readouterr().out
    assert "Learning rates: 1e-05, 0.0001" in out  # x0.1 at epoch int(0.5 * 4)
    finetuned = checkpoint.with_name("randomweights_cifar10_conv4_seed_1_epoch_4_finetune.tar")
    state = load(finetuned)
    assert not torch.equal(state["backbone"]["layer1.conv.weight"], load(checkpoint)["backbone"]["layer1.conv.weight"])
    assert state["optimizer_finetune"]["state"]  # the fine-tuning optimizer is the one stepped


def test_same_seed_gives_identical_files(small_cifar10_root, tmp_path):
    outputs = []
    for name in ("a", "b"):
        out = tmp_path / name
        run_stage(
            stage1,
            stage_arguments(small_cifar10_root, out)
            + ["--method", "relationnet", "--K", "3", "--epochs", "2", "--data_size", "20"],
        )
        outputs.append(load(out / "relationnet" / "cifar10" / "relationnet_cifar10_conv4_seed_1_epoch_2.tar"))
    for key, value in outputs[0]["backbone"].items():
        assert torch.equal(value, outputs[1]["backbone"][key])


def test_resume_auto_continues_and_refuses_changed_arguments(small_cifar10_root, tmp_path, capsys):
    args = stage_arguments(small_cifar10_root, tmp_path) + ["--method", "relationnet", "--K", "2", "--data_size", "50"]
    run_stage(stage1, args + ["--epochs", "2"])
    log = tmp_path / "relationnet" / "cifar10" / "log_relationnet_cifar10_conv4_seed_1.csv"
    assert len(log.read_text().splitlines()) == 3
    with pytest.raises(SystemExit) as exit_info:  # a second start would overwrite the run
        run_stage(stage1, args + ["--epochs", "2"])
    assert exit_info.value.code == 2 and "--resume auto" in capsys.readouterr().err
    run_stage(stage1, args + ["--epochs", "4", "--resume", "auto"])
    assert "Resuming" in capsys.readouterr().out
    assert [line.split(",")[0] for line in log.read_text().splitlines()] == ["epoch", "1", "2", "3", "4"]
    with pytest.raises(SystemExit):
        run_stage(stage1, args[:-2] + ["--data_size", "25", "--epochs", "5", "--resume", "auto"])
    assert "--data_size 50 -> 25" in capsys.readouterr().err


BAD_INPUTS = [
    (stage1, ["--method", "simclrr"], "--method"),
    (stage1, ["--backbone", "resnet9"], "--backbone"),
    (stage1, ["--stem", "tiny"], "--stem"),
    (stage1, ["--stem", "cifar"], "--stem cifar: backbone conv4 has a single stem"),
    (stage1, ["--dataset", "mnist"], "--dataset"),
    (stage1, ["--aggregation", "prod"], "--aggregation"),
    (stage1, ["--K", "1"], "--K"),
    (stage1, ["--epochs", "0"], "--epochs"),
    (stage1, ["--data_size", "-4"], "--data_size"),
    (stage1, ["--seed", "abc"], "--seed"),
    (stage1, ["--device", "tpu"], "--device"),
    (stage2, ["--epochs", "0", "--checkpoint", "x.tar"], "--epochs"),
    (stage2, [], "--checkpoint"),
    (stage3, ["--checkpoint", "./"], "folder"),
]


@pytest.mark.parametrize("module,argv,expected", BAD_INPUTS)
def test_bad_input_is_one_line_naming_the_problem(small_cifar10_root, tmp_path, capsys, module, argv, expected):
    base = ["--data_root", str(small_cifar10_root), "--checkpoint_dir", str(tmp_path), "--no_download"]
    with pytest.raises(SystemExit) as exit_info:
        run_stage(module, base + argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err, err
    assert not list(tmp_path.rglob("*.tar"))


def test_missing_data_and_wrong_checkpoints(small_cifar10_root, tmp_path, capsys):
    def error(module, argv):
        with pytest.raises(SystemExit):
            run_stage(module, argv)
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        return err

    missing = error(stage1, stage_arguments(tmp_path / "nowhere", tmp_path))
    assert "cifar-10-batches-py" in missing
    args = stage_arguments(small_cifar10_root, tmp_path)
    run_stage(stage1, args + ["--method", "relationnet", "--K", "2", "--epochs", "1", "--data_size", "50"])
    checkpoint = tmp_path / "relationnet" / "cifar10" / "relationnet_cifar10_conv4_seed_1_epoch_1.tar"
    other = stage_arguments(small_cifar10_root, tmp_path, backbone="resnet8")
    assert "holds a conv4 backbone, not resnet8: pass --backbone conv4" in error(
        stage2, other + ["--checkpoint", str(checkpoint)]
    )
    assert "run train_linear_evaluation.py" in error(stage3, args + ["--checkpoint", str(checkpoint)])
    rotation_file = tmp_path / "rotationnet.tar"  # keys of the original code's rotationnet
    torch.save(
        {
            "classifier": {"weight": torch.zeros(4, 64), "bias": torch.zeros(4)},
            "backbone": load(checkpoint)["backbone"],
            "optimizer": {},
        },
        rotation_file,
    )
    assert "stage-1 rotationnet or deepcluster checkpoint" in error(stage3, args + ["--checkpoint", str(rotation_file)])
    corrupt = tmp_path / "corrupt.tar"
    corrupt.write_bytes(checkpoint.read_bytes()[:1000])
    assert "truncated, corrupt" in error(stage2, args + ["--checkpoint", str(corrupt)])
    assert "does not exist" in error(stage2, args + ["--checkpoint", str(tmp_path / "none.tar")])


def test_command_line_errors_have_no_traceback(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "train_unsupervised.py",
            "--data_root",
            str(tmp_path / "none"),
            "--no_download",
            "--checkpoint_dir",
            str(tmp_path),
            "--epochs",
            "1",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "cifar-10-batches-py" in result.stderr


def test_a_second_run_on_the_same_files_is_refused_until_the_first_is_gone(small_cifar10_root, tmp_path, capsys):
    args = stage_arguments(small_cifar10_root, tmp_path) + [
        "--method",
        "relationnet",
        "--K",
        "2",
        "--epochs",
        "1",
        "--data_size",
        "50",
    ]
    lock = tmp_path / "relationnet" / "cifar10" / ".relationnet_cifar10_conv4_seed_1.lock"
    lock.parent.mkdir(parents=True)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock.write_text(f"{socket.gethostname()} {live.pid}")
        with pytest.raises(SystemExit):
            run_stage(stage1, args)
        assert f"another run ({socket.gethostname()} {live.pid})" in capsys.readouterr().err
    finally:
        live.kill()
        live.wait()
    run_stage(stage1, args)  # the owner died: its lock is stale and taken over
    assert not lock.exists()
    assert (lock.parent / "relationnet_cifar10_conv4_seed_1_epoch_1.tar").exists()


def interrupt_after_first_epoch(argv, signum):
    """Run a stage script, send it `signum` once its first epoch is logged (inside the second);
    returns (exit status, stderr)."""
    run = subprocess.Popen(
        [sys.executable, "-u", *argv], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    for line in run.stdout:
        if line.startswith("Epoch 1/"):
            break
    run.send_signal(signum)
    _, stderr = run.communicate(timeout=120)
    return run.returncode, stderr


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_saves_a_resumable_checkpoint_and_resume_is_exact(cifar10_root, tmp_path, signum):
    args = [
        "--data_root",
        str(cifar10_root),
        "--no_download",
        "--device",
        "cpu",
        "--seed",
        "2",
        "--method",
        "relationnet",
        "--K",
        "2",
        "--data_size",
        "16",
        "--train_subset",
        "800",
        "--epochs",
        "3",
    ]
    stopped, straight = tmp_path / "stopped", tmp_path / "straight"
    command = [sys.executable, "-u", "train_unsupervised.py", "--checkpoint_dir"]
    status, stderr = interrupt_after_first_epoch(command[2:] + [str(stopped)] + args, signum)
    assert status == 128 + signum, stderr
    assert "Traceback" not in stderr
    stop = stderr.strip().splitlines()[-1]
    assert stop.endswith("resume with the same command plus --resume auto")
    # a stop asked for is said as a stop, with the epoch the bar showed (from 1) and the step
    assert stop.startswith(f"train_unsupervised.py: {signal.Signals(signum).name} received: stopped inside epoch 2/3")
    assert "error:" not in stderr and " of 50 and saved" in stop  # 800 images in steps of 16
    folder = stopped / "relationnet" / "cifar10"
    interrupted = load(folder / "relationnet_cifar10_conv4_seed_2_last.tar")
    steps_done = interrupted["interrupted"]["steps_done"]
    assert steps_done > 0 and interrupted["epoch"] == 1 and f"after step {steps_done} of 50" in stop

    resumed = subprocess.run(
        command + [str(stopped)] + args + ["--resume", "auto"], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"_last.tar inside epoch 2, after step {steps_done}\n" in resumed.stdout
    subprocess.run(command + [str(straight)] + args, cwd=REPO, capture_output=True, timeout=300, check=True)
    a = load(folder / "relationnet_cifar10_conv4_seed_2_epoch_3.tar")
    b = load(straight / "relationnet" / "cifar10" / "relationnet_cifar10_conv4_seed_2_epoch_3.tar")
    for part in ("backbone", "relation"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), key
    strip = lambda path: [line.rsplit(",", 1)[0] for line in path.read_text().splitlines()]  # noqa: E731
    assert strip(folder / "log_relationnet_cifar10_conv4_seed_2.csv") == strip(
        straight / "relationnet" / "cifar10" / "log_relationnet_cifar10_conv4_seed_2.csv"
    )


def test_relationnet_and_simclr_pretrain_on_supercifar100(cifar100_root, tmp_path):
    # The original could not build their multi-view loaders for the coarse labels (D10).
    for method in ("relationnet", "simclr"):
        run_stage(
            stage1,
            stage_arguments(cifar100_root, tmp_path, dataset="supercifar100")
            + ["--method", method, *views_flag(method), "--epochs", "1", "--data_size", "50"],
        )
        assert (tmp_path / method / "supercifar100" / f"{method}_supercifar100_conv4_seed_1_epoch_1.tar").exists()


def test_cross_domain_across_image_sizes_tiny_to_cifar10(tiny_root, small_cifar10_root, tmp_path, capsys):
    run_stage(
        stage1,
        stage_arguments(tiny_root, tmp_path, dataset="tiny")
        + ["--method", "rotationnet", "--epochs", "1", "--data_size", "50"],
    )
    checkpoint = tmp_path / "rotationnet" / "tiny" / "rotationnet_tiny_conv4_seed_1_epoch_1.tar"
    run_stage(
        stage2, stage_arguments(small_cifar10_root, tmp_path) + ["--checkpoint", str(checkpoint), "--epochs", "1"]
    )
    result = (
        tmp_path
        / "rotationnet"
        / "cifar10"
        / "rotationnet_cifar10_from_tiny_conv4_seed_1_epoch_1_linear_evaluation.tar"
    )
    run_stage(stage3, stage_arguments(small_cifar10_root, tmp_path) + ["--checkpoint", str(result)])
    assert "Test accuracy:" in capsys.readouterr().out


def test_ctrl_c_outside_training_is_one_line(capsys):
    def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as exit_info:
        run_main(interrupted)
    assert exit_info.value.code == 130
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_supervised_stl10_baseline_uses_the_finetune_augmentation(stl10_root, tmp_path, capsys):
    run_stage(
        stage1,
        stage_arguments(stl10_root, tmp_path, dataset="stl10")
        + ["--method", "standard", "--epochs", "1", "--data_size", "50"],
    )
    out = capsys.readouterr().out
    assert "Training images: 500 (stl10 train" in out and "Test accuracy:" in out
    stl10_args = stage1_parser().parse_args(["--method", "standard", "--dataset", "stl10"])
    standard = Standard(build_backbone("conv4"), 10, stage1_config(Standard, stl10_args))
    assert standard.view_groups == [ViewGroup(1, AffineEraseViews())]
    cifar10_args = stage1_parser().parse_args(["--method", "standard", "--dataset", "cifar10"])
    assert stage1_config(Standard, cifar10_args).augmentation == Standard.Config().augmentation


def test_sigterm_during_linear_evaluation_is_one_line_and_saves_nothing_half_done(small_cifar10_root, tmp_path):
    out = tmp_path / "out"
    args = [
        "--data_root",
        str(small_cifar10_root),
        "--checkpoint_dir",
        str(out),
        "--no_download",
        "--device",
        "cpu",
        "--seed",
        "1",
    ]
    run_stage(stage1, args + ["--method", "randomweights"])
    checkpoint = out / "randomweights" / "cifar10" / "randomweights_cifar10_conv4_seed_1.tar"
    status, stderr = interrupt_after_first_epoch(
        ["train_linear_evaluation.py", *args, "--checkpoint", str(checkpoint), "--epochs", "1000000"], signal.SIGTERM
    )
    assert status == 128 + signal.SIGTERM
    assert len(stderr.strip().splitlines()) == 1 and "terminated" in stderr, stderr
    assert sorted(p.name for p in checkpoint.parent.glob("*.tar")) == [checkpoint.name]
    assert not list(checkpoint.parent.glob("log_*_linear_evaluation.csv"))  # no partial log either


def test_an_interrupted_finetuning_resumes_to_the_same_weights(small_cifar10_root, tmp_path):
    common = ["--data_root", str(small_cifar10_root), "--no_download", "--device", "cpu", "--seed", "3"]
    run_stage(stage1, common + ["--checkpoint_dir", str(tmp_path / "pretrained"), "--method", "randomweights"])
    pretrained = tmp_path / "pretrained" / "randomweights" / "cifar10" / "randomweights_cifar10_conv4_seed_3.tar"
    finetune = common + ["--checkpoint", str(pretrained), "--finetune", "--epochs", "3", "--data_size", "16"]
    stopped, straight = tmp_path / "stopped", tmp_path / "straight"
    command = [sys.executable, "-u", "train_linear_evaluation.py", "--checkpoint_dir"]
    status, stderr = interrupt_after_first_epoch(command[2:] + [str(stopped)] + finetune, signal.SIGTERM)
    assert status == 128 + signal.SIGTERM and stderr.strip().endswith("--resume auto"), stderr
    folder = stopped / "randomweights" / "cifar10"
    name = "randomweights_cifar10_conv4_seed_3_epoch_3_finetune"
    assert load(folder / f"{name}_last.tar")["interrupted"]["steps_done"] > 0
    assert not (folder / f"{name}.tar").exists()

    again = subprocess.run(command + [str(stopped)] + finetune, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "--resume auto" in again.stderr  # never silently restarted
    resumed = subprocess.run(
        command + [str(stopped)] + finetune + ["--resume", "auto"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    subprocess.run(command + [str(straight)] + finetune, cwd=REPO, capture_output=True, timeout=300, check=True)
    a = load(folder / f"{name}.tar")
    b = load(straight / "randomweights" / "cifar10" / f"{name}.tar")
    for part in ("backbone", "classifier"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), key
