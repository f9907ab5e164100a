"""Every flag of the three stages, given bad values: a non-zero exit, one line on stderr
naming the flag (or the bad path), no traceback, and nothing written."""

from __future__ import annotations

import argparse

import pytest
import torch

import experiments.linear_evaluation as stage2
import experiments.pretraining as stage1
import experiments.testing as stage3
from experiments import cli, evaluation_cli, flags
from experiments.stage import run_main

# Bad values per argument type; a flag whose type is not here must be listed in BY_FLAG.
BY_TYPE = {
    flags.positive_int: ["0", "-3", "abc", "2.5", "1000000000000"],
    flags.non_negative_int: ["-1", "abc", "2147483648"],
    flags.positive_float: ["0", "-1", "abc", "inf", "nan"],
    flags.knn_temperature: ["0", "1e-30", "1000", "nan"],
    flags.gpu_list: ["abc", "0,,1", "cuda:0"],
    flags.boolean: ["maybe"],
    flags.run_id: ["a/b", "x y", "x" * (flags.MAX_ID_LENGTH + 1), "x" * 300],
    flags.fraction: ["0", "-0.5", "1.5", "abc"],
    flags.wandb_project: ["", "a/b", "x:y", "x" * (flags.MAX_WANDB_PROJECT_LENGTH + 1)],
    flags.non_negative_float: ["-1", "abc", "inf", "nan"],
    int: ["abc", "1.5"],
    float: ["abc"],
}
# Flags validated after parsing (by the method that owns them, or by their use).
BY_FLAG = {
    "--seed": (["-2", "abc", "99999999999"], []),
    "--K": (["1", "-4", "100000"], ["--method", "relationnet"]),
    "--aggregation": (["prod"], ["--method", "relationnet"]),
    "--relation_loss": (["mse"], ["--method", "relationnet"]),
    "--temperature": (["0", "-1", "nan", "1e-30", "1000"], ["--method", "simclr"]),
    "--simclr_loss": (["foo"], ["--method", "simclr"]),
    "--dim_alpha": (["-1"], ["--method", "deepinfomax"]),
    "--dim_beta": (["-1"], ["--method", "deepinfomax"]),
    "--dim_gamma": (["-1"], ["--method", "deepinfomax"]),
    "--dim_prior": (["foo"], ["--method", "deepinfomax"]),
    "--num_clusters": (["-3", "100000", "10000000000"], ["--method", "deepcluster"]),
    "--kmeans_restarts": (["0", "1001"], ["--method", "deepcluster"]),
    "--deepcluster_sampling": (["foo"], ["--method", "deepcluster"]),
    "--relic_alpha": (["-1", "nan"], ["--method", "relic"]),
    "--relic_global_views": (["0", "100"], ["--method", "relic"]),
    "--relic_local_views": (["-1", "100000"], ["--method", "relic"]),
    "--relic_gamma": (["1.5", "-0.1"], ["--method", "relic"]),
    "--relic_copy_steps": (["-1", "10000000000"], ["--method", "relic"]),
    "--relic_update_every": (["0", "10000000000"], ["--method", "relic"]),
    "--relic_weight_decay": (["-1", "inf"], ["--method", "relic"]),
    "--relic_hidden": (["0", "10000000000"], ["--method", "relic"]),
    "--relic_projection": (["0", "100000"], ["--method", "relic"]),
    "--byol_momentum": (["1.5", "nan"], ["--method", "byol"]),
    "--byol_predictor_hidden": (["0", "100000"], ["--method", "byol"]),
    "--simsiam_predictor_hidden": (["0", "100000"], ["--method", "simsiam"]),
    "--barlowtwins_lambda": (["-1"], ["--method", "barlowtwins"]),
    "--barlowtwins_scale": (["nan"], ["--method", "barlowtwins"]),
    "--vicreg_invariance": (["-1"], ["--method", "vicreg"]),
    "--vicreg_variance": (["inf"], ["--method", "vicreg"]),
    "--vicreg_covariance": (["-1"], ["--method", "vicreg"]),
    "--mocov2plus_queue_size": (["0", "10000000000"], ["--method", "mocov2plus"]),
    "--mocov2plus_temperature": (["0", "nan"], ["--method", "mocov2plus"]),
    "--mocov2plus_momentum": (["1.5"], ["--method", "mocov2plus"]),
    "--mocov2plus_final_momentum": (["-0.1", "0.5"], ["--method", "mocov2plus"]),
    "--mocov3_predictor_hidden": (["0", "100000"], ["--method", "mocov3"]),
    "--mocov3_temperature": (["-1"], ["--method", "mocov3"]),
    "--mocov3_momentum": (["nan"], ["--method", "mocov3"]),
    "--mocov3_final_momentum": (["0.5", "2"], ["--method", "mocov3"]),
    "--nnclr_predictor_hidden": (["0"], ["--method", "nnclr"]),
    "--nnclr_queue_size": (["-1", "10000000000"], ["--method", "nnclr"]),
    "--nnclr_temperature": (["inf"], ["--method", "nnclr"]),
    **{
        f"--{method}_{option}": (values, ["--method", method])
        for method in ("byol", "simsiam", "barlowtwins", "vicreg", "mocov2plus", "mocov3", "nnclr")
        for option, values in (
            ("hidden", ["0", "100000"]),
            ("projection", ["0", "10000000000"]),
            ("weight_decay", ["-1"]),
            ("warmup_epochs", ["-1"]),
        )
    },
    **{
        f"--{method}_{option}": (values, ["--method", method])
        for method in ("swav", "dino")
        for option, values in (
            ("hidden", ["0", "100000"]),
            ("projection", ["0", "100000"]),
            ("prototypes", ["0", "100000"]),
            ("weight_decay", ["-1"]),
            ("warmup_epochs", ["-1"]),
            ("local_views", ["-1", "33"]),
            ("local_size_ratio", ["0", "1.5", "nan"]),
            ("freeze_prototypes_epochs", ["-1"]),
        )
    },
    "--swav_temperature": (["0", "nan"], ["--method", "swav"]),
    "--swav_sinkhorn_iterations": (["0", "1001"], ["--method", "swav"]),
    "--swav_sinkhorn_epsilon": (["0.01", "inf"], ["--method", "swav"]),
    "--swav_queue_size": (["-1", "10000000"], ["--method", "swav"]),
    "--swav_queue_start_epoch": (["-1"], ["--method", "swav"]),
    "--dino_student_temperature": (["0"], ["--method", "dino"]),
    "--dino_teacher_temperature": (["-1"], ["--method", "dino"]),
    "--dino_warmup_teacher_temperature": (["nan"], ["--method", "dino"]),
    "--dino_warmup_teacher_temperature_epochs": (["-1"], ["--method", "dino"]),
    "--dino_center_momentum": (["1.5"], ["--method", "dino"]),
    "--dino_momentum": (["-0.1"], ["--method", "dino"]),
    "--device": (["tpu", "cuda:x", "cpu:5"], []),
    "--image_size": (["-1", "48", "1", "20000"], []),
    "--knn": (["-1", "abc", "100000"], []),
    "--retrieval": (["-1", "abc", "100000"], []),
}
PATHS = {
    "--data_root",
    "--checkpoint_dir",
    "--checkpoint",
    "--resume",
    "--export_features",
    "--tensorboard",
    "--log_dir",
}
# Output folders: the bad value is a file where the folder should be.
OUTPUT_FOLDERS = {"--checkpoint_dir", "--export_features", "--tensorboard", "--log_dir"}
# Flags with no invalid value: on/off switches.
NO_BAD_VALUE = {
    "--no_download",
    "--overwrite",
    "--compile",
    "--channels_last",
    "--simclr_gather",
    "--relic_siglip",
    "--relic_first_views_as_local",
    "--cross_domain",
    "--online_probe",
    "--new_val_split",
}
STAGES = [(stage1, cli.stage1_parser), (stage2, evaluation_cli.stage2_parser), (stage3, evaluation_cli.stage3_parser)]


def cases():
    for module, make_parser in STAGES:
        for action in make_parser()._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            flag = action.option_strings[0]
            if flag in NO_BAD_VALUE or (module is stage3 and flag == "--checkpoint_dir"):
                continue  # test.py writes beside its checkpoint and ignores the output root
            extra = []
            if flag in BY_FLAG:
                values, extra = BY_FLAG[flag]
            elif flag in PATHS:
                values = ["PATH"]
            elif action.choices:
                values = ["bogus"]
            else:
                assert action.type in BY_TYPE, f"no bad value known for {flag}: add it to this test"
                values = BY_TYPE[action.type]
            for value in values:
                yield pytest.param(module, flag, value, extra, id=f"{module.__name__}{flag}={value[:20]}")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A valid stage-1 (randomweights) and stage-2 checkpoint, so only the bad flag fails."""
    from backbones import build_backbone
    from methods.standard import Standard

    folder = tmp_path_factory.mktemp("checkpoints")
    model = Standard(build_backbone("conv4"), 10)
    torch.save({"backbone": model.backbone.state_dict(), "method": "randomweights"}, folder / "stage1.tar")
    torch.save(model.checkpoint_state(), folder / "stage2.tar")
    return folder


@pytest.mark.parametrize("module,flag,value,extra", list(cases()))
def test_a_bad_value_is_one_line_naming_the_flag(
    small_cifar10_root, checkpoints, tmp_path, capsys, module, flag, value, extra
):
    outputs = tmp_path / "out"
    a_file = tmp_path / "not_a_folder"
    a_file.write_text("x")
    named = flag
    if value == "PATH":  # a path that does not work for this flag: the message names the path
        value = str(a_file if flag in OUTPUT_FOLDERS else tmp_path / "missing")
        named = value
    argv = ["--data_root", str(small_cifar10_root), "--no_download", "--device", "cpu"]
    if module is stage1:
        argv += ["--checkpoint_dir", str(outputs), "--epochs", "1"]
    elif module is stage2:
        argv += ["--checkpoint_dir", str(outputs), "--checkpoint", str(checkpoints / "stage1.tar")]
    else:
        argv += ["--checkpoint", str(checkpoints / "stage2.tar")]
    if flag == "--resume":
        argv += ["--method", "relationnet"]
    with pytest.raises(SystemExit) as exit_info:
        run_main(lambda: module.main(argv + extra + [flag, value]))
    assert exit_info.value.code != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert named in err, err
    assert not list(outputs.rglob("*.tar"))


def test_a_flag_of_another_method_is_refused_in_one_line(small_cifar10_root, tmp_path, capsys):
    import experiments.pretraining as stage1
    from tests.helpers import run_stage, stage_arguments

    with pytest.raises(SystemExit) as stopped:
        run_stage(stage1, stage_arguments(small_cifar10_root, tmp_path) + ["--method", "simclr", "--K", "4"])
    error = capsys.readouterr().err.strip()
    assert stopped.value.code == 2 and "\n" not in error
    assert "--K belongs to --method relationnet, not simclr" in error
    assert not tmp_path.joinpath("simclr").exists()


def test_help_shows_each_method_group_with_defaults(capsys):
    from experiments.cli import stage1_parser

    with pytest.raises(SystemExit):
        stage1_parser().parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for group in ("relationnet options", "simclr options", "deepcluster options", "deepinfomax options"):
        assert group in text
    assert "augmented views per image (default 32)" in text and "(default adversarial)" in text


def test_every_method_flag_gets_its_default_when_not_given():
    from experiments.cli import stage1_parser
    from experiments.options import option_flag, stage_fields
    from methods import METHODS

    args = stage1_parser().parse_args(["--method", "simclr", "--temperature", "0.2"])
    assert args.temperature == 0.2
    for method in METHODS.values():
        for name, _, default in stage_fields(method.Config, stage=1):
            if name != "temperature":
                assert getattr(args, option_flag(method.Config, name)) == default


def test_the_longest_id_keeps_every_file_name_within_255_bytes():
    from backbones import BACKBONES
    from datasets import DATASETS
    from engine.run_files import evaluation_header
    from methods import METHODS

    longest = max(METHODS, key=len), max(DATASETS, key=len), max(BACKBONES, key=len)
    pretraining = max((name for name in DATASETS if name != longest[1]), key=len)  # named as <dataset>_from_<it>
    limit = flags.INTEGER_LIMIT
    stem = evaluation_header(
        longest[0],
        longest[1],
        pretraining,
        longest[2],
        limit,
        "x" * flags.MAX_ID_LENGTH,
        limit,
        finetune=False,
        label_fraction=1.23456789e-05,
    )
    names = [f"{stem}_last.tar", f"log_{stem}_test.csv", f"{stem}_retrieval_top{limit}.png", f"{stem}_test_tsne.png"]
    temporary = [f".{name}.{'f' * 8}.tmp" for name in names]  # atomic_write_bytes' temporary files
    assert max(len(name.encode()) for name in names + temporary) <= 255


def test_the_arguments_a_resumed_run_may_change_are_declared_with_their_flags():
    from dataclasses import dataclass

    from experiments.options import add_option_flags
    from methods.config import MethodConfig, option

    @dataclass(frozen=True)
    class Watched(MethodConfig):
        flag_prefix = "watched_"
        every: int = option(1, "steps between looks", at_least=1, may_change_on_resume=True)
        width: int = option(8, "units", at_least=1)

    parser = flags.Parser()
    add_option_flags(parser, parser, Watched, stage=1)
    assert parser.may_change_on_resume == {"watched_every"}
    where = {"resume", "device", "gpu", "num_workers", "data_root", "checkpoint_dir", "overwrite", "no_download"}
    assert evaluation_cli.stage2_parser().may_change_on_resume == where
    assert cli.stage1_parser().may_change_on_resume == where | {
        "epochs",
        "checkpoint",
        "epoch_start",
        "save_every",
        "keep",
        "compile",
        "channels_last",
        "eval_every",
        "eval_images",
        "tensorboard",
        "wandb",
    }
