"""experiments/grid_plan.py: the runs of a grid, the arguments of their stages, and shards."""

from __future__ import annotations

from experiments.grid_cli import grid_arguments, grid_parser
from experiments.grid_plan import flags, plan, shard_of


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
