"""A grid's plan: its runs, each the three stages with the arguments their scripts get, and the
shares of the runs that several machines run side by side."""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from engine.run_files import RunFiles, evaluation_header, run_header
from experiments.arguments import RunArguments
from experiments.options import option_values
from experiments.studies import ALL_METHODS, CONDITIONS, METHOD_SETTINGS, STUDIES, Condition, Variant
from methods import METHODS
from methods.config import MethodConfig
from utils.errors import UserError


class Stage(enum.Enum):
    """The three stages of a run, in order; the value is the script that runs the stage."""

    PRETRAIN = "train_unsupervised.py"
    EVALUATE = "train_linear_evaluation.py"
    TEST = "test.py"

    @property
    def script(self) -> str:
        return self.value


@dataclass
class RunStage:
    """One stage of one run: its script's arguments and the file it leaves when it has finished."""

    kind: Stage
    argv: list[str]
    output: Path
    files: RunFiles | None = None  # a training stage's files: its lock and per-epoch log
    resumable: bool = False  # continued from its last checkpoint after an interruption
    epochs: int = 0  # 0: no epochs (the test)


@dataclass
class Run:
    name: str
    order: tuple
    condition: Condition
    variant: Variant
    method: str
    backbone: str
    seed: int
    epochs: int
    evaluation_epochs: int
    stages: list[RunStage]

    @property
    def test_log(self) -> Path:
        evaluation = self.stages[1].output
        return evaluation.parent / f"log_{evaluation.stem}_test.csv"

    @property
    def record(self) -> Path:
        return self.stages[2].output


def plan(args: RunArguments) -> list[Run]:
    study = STUDIES[args.study]
    conditions = args.conditions or list(study.conditions)
    methods = args.methods or list(study.methods)
    for flag, chosen, allowed in (
        ("--conditions", conditions, study.conditions),
        ("--methods", methods, study.methods),
    ):
        outside = [name for name in chosen if name not in allowed]
        if outside:
            raise UserError(f"{flag} {','.join(outside)}: study {args.study} has {', '.join(allowed)}")
    if args.K and any("K" in dict(variant.options) for variant in study.variants):
        raise UserError(f"--K: study {args.study} varies K itself; leave --K out")
    checkpoints = Path(args.out) / "checkpoints"
    runs = []
    for condition_name in conditions:
        condition = CONDITIONS[condition_name]
        if args.backbone:
            backbones = args.backbone
        elif condition_name in study.backbone_of:
            backbones = [study.backbone_of[condition_name]]
        else:
            backbones = list(study.backbones)
        for v, variant in enumerate(study.variants):
            for b, backbone in enumerate(backbones):
                for method in sorted(methods, key=ALL_METHODS.index):
                    for seed in args.seeds:
                        runs.append(
                            make_run(
                                args,
                                checkpoints,
                                condition,
                                variant,
                                method,
                                backbone,
                                seed,
                                (study.conditions.index(condition_name), v, b, ALL_METHODS.index(method), seed),
                            )
                        )
    return runs


def method_config(
    args, method: str, condition: Condition, backbone: str, variant: Variant
) -> tuple[MethodConfig, set[str]]:
    """The config of the run's method and the names of the fields its stage 1 is given: those
    the paper set (with --K for the paper's K), then those the variant changes."""
    paper = METHOD_SETTINGS[method].paper_options(condition.name, backbone)
    if args.K and "K" in paper:
        paper["K"] = args.K
    changes = dict(variant.options)
    return dataclasses.replace(METHODS[method].Config(**paper), **changes), set(paper) | set(changes)


def flags(settings: Iterable[tuple[str, Any]]) -> list[str]:
    """A stage script's arguments giving each (flag, value), in order: a value of None or False
    is left out, True is a switch. The one place where a run's settings become arguments."""
    argv: list[str] = []
    for flag, value in settings:
        if value is None or value is False:
            continue
        argv += [f"--{flag}"] if value is True else [f"--{flag}", str(value)]
    return argv


def make_run(
    args, checkpoints: Path, condition: Condition, variant: Variant, method: str, backbone: str, seed: int, order: tuple
) -> Run:
    epochs = args.epochs or condition.epochs
    evaluation_epochs = args.linear_epochs or condition.evaluation_epochs
    run_id = variant.tag if variant.options else ""
    config, given_fields = method_config(args, method, condition, backbone, variant)
    files = RunFiles(
        checkpoints, method, condition.pretraining, run_header(method, condition.pretraining, backbone, seed, run_id)
    )
    trains = METHODS[method].trains
    pretrained = files.epoch_checkpoint(epochs) if trains else files.final
    evaluation_files = RunFiles(
        checkpoints,
        method,
        condition.evaluation,
        evaluation_header(
            method,
            condition.evaluation,
            condition.pretraining,
            backbone,
            seed,
            run_id,
            evaluation_epochs,
            condition.finetune,
            variant.label_fraction,
        ),
    )
    common = [
        ("backbone", backbone),
        ("seed", seed),
        ("data_root", args.data_root),
        ("checkpoint_dir", checkpoints),
        ("device", args.child_device),
        ("no_download", args.no_download),
    ]
    training = [("train_subset", args.train_subset or None), ("id", run_id or None)]
    stage1 = flags(
        [
            ("dataset", condition.pretraining),
            ("method", method),
            ("epochs", epochs),
            ("data_size", METHOD_SETTINGS[method].batch_size),
            *common,
            *training,
            *option_values(config, given_fields),
        ]
    )
    stage2 = flags(
        [
            ("dataset", condition.evaluation),
            ("checkpoint", pretrained),
            ("epochs", evaluation_epochs),
            *common,
            *training,
            ("finetune", condition.finetune),
            ("label_fraction", variant.label_fraction if variant.label_fraction < 1 else None),
        ]
    )
    test = flags(
        [
            ("dataset", condition.evaluation),
            ("checkpoint", evaluation_files.final),
            *common,
            ("knn", args.knn),
            ("retrieval", args.retrieval),
        ]
    )
    name = "_".join(filter(None, [condition.name, variant.tag, method, backbone, f"seed_{seed}"]))
    trained_epochs = epochs if trains else 0
    return Run(
        name,
        order,
        condition,
        variant,
        method,
        backbone,
        seed,
        trained_epochs,
        evaluation_epochs,
        [
            RunStage(Stage.PRETRAIN, stage1, pretrained, files, resumable=True, epochs=trained_epochs),
            RunStage(
                Stage.EVALUATE,
                stage2,
                evaluation_files.final,
                evaluation_files,
                resumable=condition.finetune,  # stage 2 resumes fine-tuning only
                epochs=evaluation_epochs,
            ),
            RunStage(Stage.TEST, test, Path(args.out) / "runs" / f"{name}.json"),
        ],
    )


def shard_of(runs: list[Run], index: int, count: int) -> list[Run]:
    """The runs of shard `index` (1-based) of `count`: runs sharing a stage-1 run stay together,
    and the groups go in plan order, each to the shard with the fewest epochs so far; every
    shard computes the same partition from the same plan."""
    groups: dict[Path, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.stages[0].output, []).append(run)
    load = [0] * count
    chosen = []
    for group in groups.values():
        epochs = group[0].epochs + sum(run.evaluation_epochs for run in group) + 1
        target = min(range(count), key=lambda shard_index: (load[shard_index], shard_index))
        load[target] += epochs
        if target == index - 1:
            chosen += group
    return chosen
