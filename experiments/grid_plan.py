"""A grid's plan: its runs, each the three stages with the arguments their scripts get, and the
shares of the runs that several machines run side by side."""

from __future__ import annotations

import dataclasses
import enum
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from engine.run_files import RunFiles, evaluation_header, run_header
from experiments.arguments import RunArguments
from experiments.cli import PROBE_WARMUP_EPOCHS
from experiments.options import option_values
from experiments.studies import ALL_METHODS, CONDITIONS, METHOD_SETTINGS, STUDIES, Condition, Variant
from experiments.variants import STAGE1_SETTINGS, Replacement, replacements_of, variant_tag
from methods import METHODS
from methods.config import ConfigError, MethodConfig
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

    def continue_flags(self) -> list[str]:
        """Resume an interrupted training run (stage 1, fine-tuning) from its last checkpoint;
        replace one that died before it saved any."""
        if not self.resumable or self.files is None:
            return []
        if self.files.last_checkpoint.exists():
            return ["--resume", "auto"]
        return ["--overwrite"] if self.files.log.exists() or self.files.config.exists() else []


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
    # How the run departs from the method's settings besides the grid's flags, in words (a
    # warm-up scaled to a shortened schedule), for the table's header.
    adjustments: tuple[str, ...] = ()

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
            raise UserError(
                f"{flag} {','.join(outside)}: study {args.study} has {', '.join(allowed)}"
                + studies_with(flag, outside, conditions, args.backbone or list(study.backbones))
            )
    if args.K and any("K" in dict(variant.options) for variant in study.variants):
        raise UserError(f"--K: study {args.study} varies K itself; leave --K out")
    check_replacements(args, study, methods)
    if args.tensorboard and Path(args.tensorboard).exists() and not Path(args.tensorboard).is_dir():
        raise UserError(f"--tensorboard {args.tensorboard} is a file: pass a folder (it is created when missing)")
    if args.tensorboard and importlib.util.find_spec("tensorboard") is None:  # said before any run starts
        raise UserError(
            "--tensorboard needs the tensorboard package, which is not installed: "
            "pip install tensorboard (or leave out --tensorboard)"
        )
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


def studies_with(flag: str, outside: list[str], conditions: list[str], backbones: list[str]) -> str:
    """Where the methods or conditions a study lacks are: the first study that has each, as the
    flags that run it with the conditions and backbones asked for."""
    ways = []
    for name in outside:
        for study_name, study in STUDIES.items():
            if name not in (study.methods if flag == "--methods" else study.conditions):
                continue
            shared = [c for c in conditions if c in study.conditions] if flag == "--methods" else []
            way = f"{name} is in --study {study_name}" + (f" --conditions {','.join(shared)}" if shared else "")
            if list(study.backbones) != backbones:
                way += f" --backbone {','.join(backbones)}"
            ways.append(way)
            break
    return ("; " + "; ".join(ways)) if ways else ""


def check_replacements(args, study, methods: list[str]) -> None:
    """Refuse a `--set` the grid would not apply: of a method it does not run, of a field the
    study varies itself or that --K sets, or twice the same field with two values."""
    seen: dict[tuple[str, str], Any] = {}
    for change in args.set or []:
        if change.method not in methods:
            raise UserError(
                f"--set {change.shown}: {change.method} is not among the grid's methods "
                f"({', '.join(methods)}); add it to --methods or drop the --set"
            )
        if any(change.name in dict(variant.options) for variant in study.variants):
            raise UserError(f"--set {change.shown}: study {args.study} varies {change.name} itself; drop the --set")
        if change.name == "K" and args.K:
            raise UserError(f"--set {change.shown} and --K {args.K}: pass one of them")
        previous = seen.setdefault((change.method, change.name), change.value)
        if previous != change.value:
            raise UserError(
                f"--set {change.method}.{change.name} given twice ({previous}, {change.value}): pass one value"
            )


def scaled_warmup(config: MethodConfig, epochs: int, paper_epochs: int) -> int | None:
    """The warm-up of a config with a `warmup_epochs` field on a schedule shortened from
    `paper_epochs` to `epochs`: the same share of it, rounded down (3 of 200 epochs leave none
    of 10); None when the schedule is not shortened or the config has no warm-up."""
    warmup = getattr(config, "warmup_epochs", None)
    if warmup is None or epochs >= paper_epochs:
        return None
    return warmup * epochs // paper_epochs


def method_config(
    args,
    method: str,
    condition: Condition,
    backbone: str,
    variant: Variant,
    replacements: list[Replacement] = (),  # type: ignore[assignment]
) -> tuple[MethodConfig, set[str], tuple[str, ...]]:
    """The config of the run's method, the names of the fields its stage 1 is given, and how
    it departs from the method's settings in words: the paper's fields (with --K for the
    paper's K), the variant's, the `--set` replacements, and a warm-up scaled to a schedule that
    --epochs shortens (unless `--set` gives it)."""
    paper = METHOD_SETTINGS[method].paper_options(condition.name, backbone)
    if args.K and "K" in paper:
        paper["K"] = args.K
    changes = dict(variant.options)
    changes.update((change.name, change.value) for change in replacements if change.name not in STAGE1_SETTINGS)
    config_class = METHODS[method].Config
    try:
        config = dataclasses.replace(config_class(**paper), **changes)
    except ConfigError as error:
        raise UserError("--set " + error.naming(lambda name: f"{method}.{name}")) from None
    given = set(paper) | set(changes)
    adjustments: tuple[str, ...] = ()
    warmup = (
        None if "warmup_epochs" in changes else scaled_warmup(config, args.epochs or condition.epochs, condition.epochs)
    )
    if warmup is not None and warmup != config.warmup_epochs:  # type: ignore[attr-defined]
        adjustments = (
            f"{method}'s learning-rate warm-up scaled with the schedule: {warmup} of {args.epochs} "
            f"epochs instead of {config.warmup_epochs} of {condition.epochs} "  # type: ignore[attr-defined]
            f"(--set {method}.warmup_epochs=N chooses it)",
        )
        config = dataclasses.replace(config, warmup_epochs=warmup)
        given.add("warmup_epochs")
    return config, given, adjustments


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
    replacements = replacements_of(args.set or [], method)
    config, given_fields, adjustments = method_config(args, method, condition, backbone, variant, replacements)
    stage1_settings = dict(data_size=METHOD_SETTINGS[method].batch_size, lr=None)
    stage1_settings.update((change.name, change.value) for change in replacements if change.name in STAGE1_SETTINGS)
    if replacements:  # the run is a variant: its tag names its files and its row
        variant = dataclasses.replace(variant, tag="_".join(filter(None, [variant.tag, variant_tag(replacements)])))
    run_id = variant.tag if variant.options or replacements else ""
    files = RunFiles(
        checkpoints, method, condition.pretraining, run_header(method, condition.pretraining, backbone, seed, run_id)
    )
    trains = METHODS[method].trains
    pretrained = files.epoch_checkpoint(epochs) if trains else files.final
    probed = STUDIES[args.study].online_probe and trains
    probe_warmup = PROBE_WARMUP_EPOCHS * epochs // condition.epochs if probed and epochs < condition.epochs else None
    if probe_warmup is not None:
        adjustments += (
            f"the online probe's warm-up scaled with the schedule: {probe_warmup} of {epochs} epochs "
            f"instead of {PROBE_WARMUP_EPOCHS} of {condition.epochs}",
        )
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
            ("data_size", stage1_settings["data_size"]),
            ("lr", stage1_settings["lr"]),
            ("tensorboard", args.tensorboard),
            ("keep", None if args.keep == "fractions" else args.keep),
            *common,
            *training,
            *option_values(config, given_fields),
            ("online_probe", probed),
            ("probe_warmup_epochs", probe_warmup),
            ("wandb", args.wandb),
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
            # the kNN classifier votes with the labelled images the linear classifier learnt from
            ("train_subset", args.train_subset if args.knn and args.train_subset else None),
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
        adjustments,
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
