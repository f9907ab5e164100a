"""experiments/grid_plan.py: the runs of a grid, the arguments of their stages, and shards."""

from __future__ import annotations

import pytest

from experiments import cli
from experiments.grid_cli import grid_arguments, grid_parser
from experiments.grid_plan import flags, plan, shard_of
from utils.errors import UserError


def planned(tmp_path, *flags):
    return plan(
        grid_arguments(grid_parser().parse_args(["--out", str(tmp_path), "--seeds", "1", "--device", "cpu", *flags]))
    )


def test_shards_partition_the_grid_and_keep_a_shared_pretraining_with_its_runs(tmp_path):
    runs = planned(tmp_path, "--study", "table1", "--seeds", "1", "2")
    shards = [shard_of(runs, index, 3) for index in (1, 2, 3)]
    assert sorted(run.name for shard in shards for run in shard) == sorted(run.name for run in runs)
    for shard in shards:
        pretrainings = {run.stages[0].output for run in shard}
        assert [run for run in runs if run.stages[0].output in pretrainings and run not in shard] == []
        assert abs(len(shard) - len(runs) / 3) <= 3  # balanced by epochs, so by runs here
    assert [run.name for run in shard_of(runs, 2, 3)] == [run.name for run in shards[1]]  # deterministic


def test_a_variant_replaces_a_field_of_the_papers_config_and_stage_1_gets_the_fields_set(tmp_path):
    aggregation = planned(tmp_path, "--study", "aggregation", "--conditions", "cifar10")
    assert [run.stages[0].argv[-4:] for run in aggregation] == [
        ["--K", "32", "--aggregation", name] for name in ("cat", "sum", "mean", "max")
    ]
    assert [run.stages[0].argv[-2:] for run in planned(tmp_path, "--study", "k_sweep")] == [
        ["--K", str(k)] for k in (2, 4, 8, 16, 32)
    ]
    tiny = planned(tmp_path, "--study", "table1", "--conditions", "tiny", "--methods", "relationnet", "simclr")
    assert tiny[0].stages[0].argv[-2:] == ["--K", "16"] and "--K" not in tiny[1].stages[0].argv
    given = planned(tmp_path, "--study", "table1", "--conditions", "tiny", "--methods", "relationnet", "--K", "4")
    assert given[0].stages[0].argv[-2:] == ["--K", "4"]


def test_flags_leave_out_none_and_false_and_make_true_a_switch():
    settings = [("epochs", 3), ("train_subset", None), ("no_download", True), ("finetune", False), ("knn", 0)]
    assert flags(settings) == ["--epochs", "3", "--no_download", "--knn", "0"]


def test_wandb_goes_to_every_stage_1_run_which_names_its_w_and_b_run(tmp_path):
    runs = planned(tmp_path, "--study", "cifar10", "--methods", "relationnet", "simclr", "--wandb", "grid-project")
    for run in runs:
        pretraining, evaluation, test = (stage.argv for stage in run.stages)
        assert pretraining[-2:] == ["--wandb", "grid-project"], pretraining
        assert cli.stage1_parser().parse_args(pretraining).wandb == "grid-project"
        assert "--wandb" not in evaluation and "--wandb" not in test
    assert all("--wandb" not in run.stages[0].argv for run in planned(tmp_path, "--study", "cifar10"))


def test_set_replaces_a_methods_field_or_stage_1_setting_and_tags_its_runs(tmp_path):
    runs = planned(
        tmp_path, "--study", "baselines", "--conditions", "cifar10", "--backbone", "conv4", "--methods",
        "simclr", "byol", "--epochs", "3", "--set", "byol.warmup_epochs=1", "--set", "byol.lr=0.5",
    )  # fmt: skip
    simclr, byol = runs
    assert simclr.name == "cifar10_simclr_conv4_seed_1" and "--id" not in simclr.stages[0].argv
    assert byol.name == "cifar10_warmup_epochs1_lr0.5_byol_conv4_seed_1" and byol.variant.tag == "warmup_epochs1_lr0.5"
    argv = byol.stages[0].argv
    assert argv[argv.index("--lr") + 1] == "0.5" and argv[argv.index("--byol_warmup_epochs") + 1] == "1"
    assert argv[argv.index("--id") + 1] == "warmup_epochs1_lr0.5"
    assert not any("byol's" in adjustment for adjustment in byol.adjustments)  # given, not scaled


def test_a_shortened_schedule_scales_the_warm_up_and_says_so(tmp_path):
    (byol,) = planned(
        tmp_path, "--study", "baselines", "--conditions", "cifar10", "--methods", "byol", "--epochs", "40"
    )
    argv = byol.stages[0].argv
    assert argv[argv.index("--byol_warmup_epochs") + 1] == "2"  # 10 of 200 epochs: 2 of 40
    assert byol.adjustments == (
        "byol's learning-rate warm-up scaled with the schedule: 2 of 40 epochs instead of 10 of 200 "
        "(--set byol.warmup_epochs=N chooses it)",
        "the online probe's warm-up scaled with the schedule: 2 of 40 epochs instead of 10 of 200",
    )
    (full,) = planned(tmp_path, "--study", "baselines", "--conditions", "cifar10", "--methods", "byol")
    assert "--byol_warmup_epochs" not in full.stages[0].argv and full.adjustments == ()


@pytest.mark.parametrize(
    "flags, said",
    [
        (["--set", "byol.warmup_epochs=-1"], "argument --set: byol.warmup_epochs: must be at least 0, got -1"),
        (["--set", "byol.warmup"], "expected METHOD.NAME=VALUE like byol.warmup_epochs=0"),
        (["--set", "byol.nothing=1"], "byol has no option 'nothing'; it has hidden, projection"),
        (["--set", "relationnet.aggregation=median"], "choose one of"),
        (["--set", "simclr.lr=0"], "simclr.lr: must be a positive number"),
        (["--methods", "simclr", "--set", "byol.warmup_epochs=0"], "byol is not among the grid's methods"),
        (["--methods", "relationnet", "--set", "relationnet.K=8", "--K", "4"], "pass one of them"),
        (["--set", "byol.warmup_epochs=0", "--set", "byol.warmup_epochs=1"], "given twice (0, 1)"),
    ],
)
def test_set_is_refused_in_one_line_as_its_stage_1_flag_would_be(tmp_path, capsys, flags, said):
    with pytest.raises((SystemExit, UserError)) as refused:
        planned(tmp_path, "--study", "baselines", "--conditions", "cifar10", *flags)
    message = str(refused.value) if refused.type is UserError else capsys.readouterr().err
    assert said in message and len(message.strip().splitlines()) == 1, message


def test_a_method_of_another_study_is_refused_naming_the_study_that_has_it(tmp_path):
    with pytest.raises(UserError) as refused:
        planned(tmp_path, "--study", "cifar10", "--methods", "relationnet", "byol")
    assert "byol is in --study baselines --conditions cifar10 --backbone conv4" in str(refused.value)


def test_tensorboard_reaches_every_stage_1_run_which_writes_under_its_name(tmp_path):
    runs = planned(tmp_path, "--study", "cifar10", "--methods", "relationnet", "simclr", "--tensorboard", "tb")
    for run in runs:
        argv = run.stages[0].argv
        assert argv[argv.index("--tensorboard") + 1] == "tb"  # stage 1 writes into tb/<its run's name>
        assert "--tensorboard" not in run.stages[1].argv + run.stages[2].argv


def test_keep_reaches_stage_1_only_when_it_is_not_the_default(tmp_path):
    (kept,) = planned(tmp_path, "--study", "cifar10", "--methods", "simclr", "--keep", "last")
    argv = kept.stages[0].argv
    assert argv[argv.index("--keep") + 1] == "last"
    (default,) = planned(tmp_path, "--study", "cifar10", "--methods", "simclr")
    assert "--keep" not in default.stages[0].argv
