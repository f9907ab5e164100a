#!/usr/bin/env python
"""Reproduce the paper's tables: a grid of conditions x methods x seeds through the three stages.

Examples:
  python reproduce.py --study table1                   # Table 1 with the paper's settings (GPU-days)
  python reproduce.py --study cifar10 --methods relationnet simclr rotationnet randomweights standard \
      --epochs 3 --linear_epochs 10 --K 4 --seeds 1 2 3      # a short CIFAR-10 grid on a CPU
  python reproduce.py --study k_sweep --dry_run        # a summary, then each command once
  python reproduce.py --study table1 --shard 2/4       # the second of four machines sharing --out

Each run is the three stage scripts in child processes, with their output in
<out>/logs/<run>.log; up to --jobs stages run side by side, each on its own CPUs (or GPU), a
stage waiting for the stage-1 run it needs. A finished run is skipped and an interrupted one
resumed, so the same command continues a grid after a restart; Ctrl-C stops it after the
current training step.
<out> receives results.csv (one row per run), table.md (mean ± std over seeds beside the
paper's value), figure.png and training curves (with matplotlib).
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from utils.entry import exit_quietly_on_interrupt

exit_quietly_on_interrupt()  # first: a Ctrl-C while torch imports is one line, not a traceback

from backbones import BACKBONES  # noqa: E402
from engine.locks import GRID_ENVIRONMENT, RunLock  # noqa: E402
from engine.run_files import RunFiles, evaluation_header, run_header  # noqa: E402
from experiments.cli import DATA_ROOT_ENV, Parser, non_negative_int, positive_int  # noqa: E402
from experiments.grid_files import RECORD, SETTINGS, TIMINGS, read_grid_file, read_test_result  # noqa: E402
from experiments.parallel import (  # noqa: E402
    MEMORY_PER_CPU_JOB,
    Activity,
    LiveLines,
    Slot,
    automatic_jobs,
    make_slots,
    read_epoch_progress,
    start_child,
    visible_gpus,
)
from experiments.plots import matplotlib_available, plot_training_curves, stage_logs  # noqa: E402
from experiments.report import write_results  # noqa: E402
from experiments.stage import run_main  # noqa: E402
from experiments.studies import (  # noqa: E402
    ALL_METHODS,
    CONDITIONS,
    STUDIES,
    Condition,
    Variant,
    batch_size,
    relationnet_k,
)
from methods import METHODS  # noqa: E402
from utils.atomic import TEXT_ENCODING, atomic_write_bytes, encode_text, save_json  # noqa: E402
from utils.errors import UserError  # noqa: E402
from utils.runtime import resolve_device  # noqa: E402
from utils.threads import usable_cpus  # noqa: E402

REPO = Path(__file__).resolve().parent
# Settings that change the numbers of every run: a grid folder holds one value of each.
GRID_SETTINGS = tuple(SETTINGS.fields)
# How long a stage whose lock an earlier grid's child still holds is waited for: a killed
# grid's children stop after their current step (parent-death signal).
LOCK_WAIT_SECONDS = 30.0


def name_list(choices, what: str):
    def parse(text: str) -> list[str]:
        names = [name for name in text.split(",") if name]
        unknown = [name for name in names if name not in choices]
        if unknown or not names:
            raise argparse.ArgumentTypeError(
                f"unknown {what} '{','.join(unknown) or text}'; choose from {', '.join(choices)}"
            )
        return names

    parse.__name__ = f"{what} list"
    return parse


def seed_list(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",") if part]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seeds like 1,2,3 or 1 2 3, got '{text}'") from None
    if not seeds or any(not 0 <= seed < 2**31 for seed in seeds):
        raise argparse.ArgumentTypeError(f"expected seeds from 0 to 2^31-1 like 1,2,3, got '{text}'")
    return seeds


class ListFlag(argparse.Action):
    """A list given comma-separated, space-separated or both (`--seeds 1,2 3`), repeats dropped."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, list(dict.fromkeys(item for value in values for item in value)))


def shard(text: str) -> tuple[int, int]:
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected I/N like 1/4, got '{text}'") from None
    if not 1 <= index <= count:
        raise argparse.ArgumentTypeError(f"expected I/N with 1 <= I <= N, like 1/4, got '{text}'")
    return index, count


def relation_k(text: str) -> int:
    value = positive_int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"relationnet needs at least 2 views per image, got {value}")
    return value


def parser() -> Parser:
    p = Parser(
        description="Run a grid of the paper's experiments through the three stages; "
        "finished runs are skipped, interrupted ones resumed."
    )
    p.add_argument(
        "--study",
        default="table1",
        choices=list(STUDIES),
        help="which grid (default table1): " + "; ".join(f"{name}: {s.description}" for name, s in STUDIES.items()),
    )
    p.add_argument(
        "--conditions",
        type=name_list(list(CONDITIONS), "condition"),
        nargs="+",
        action=ListFlag,
        default=None,
        help="subset of the study's conditions, comma- or space-separated (default: all)",
    )
    p.add_argument(
        "--methods",
        type=name_list(list(ALL_METHODS), "method"),
        nargs="+",
        action=ListFlag,
        default=None,
        help="subset of the study's methods, comma- or space-separated (default: all)",
    )
    p.add_argument(
        "--backbone",
        type=name_list(list(BACKBONES), "backbone"),
        nargs="+",
        action=ListFlag,
        default=None,
        help="backbones instead of the paper's for the study, comma- or space-separated",
    )
    p.add_argument(
        "--seeds",
        type=seed_list,
        nargs="+",
        action=ListFlag,
        default=[1, 2, 3],
        help="seeds, comma- or space-separated (default 1 2 3)",
    )
    p.add_argument(
        "--epochs", type=positive_int, default=None, help="stage-1 epochs instead of the paper's (200; 300 on STL-10)"
    )
    p.add_argument(
        "--linear_epochs",
        type=positive_int,
        default=None,
        help="stage-2 epochs instead of the paper's (100; 20 of fine-tuning on STL-10)",
    )
    p.add_argument(
        "--train_subset",
        type=non_negative_int,
        default=0,
        help="train both stages on a seeded, class-balanced subset of N images (default 0 = all)",
    )
    p.add_argument(
        "--K",
        type=relation_k,
        default=None,
        help="relationnet views per image instead of the paper's (32; 16 tiny/slim; 25 STL-10)",
    )
    p.add_argument(
        "--knn",
        type=non_negative_int,
        default=200,
        help="k of the kNN accuracy reported beside the linear one (default 200; 0 = off)",
    )
    p.add_argument(
        "--retrieval",
        type=non_negative_int,
        default=10,
        help="K of the top-K retrieval precision reported (default 10; 0 = off)",
    )
    p.add_argument(
        "--data_root",
        default=os.environ.get(DATA_ROOT_ENV, "./data"),
        help=f"folder holding the data sets (default ${DATA_ROOT_ENV} or ./data)",
    )
    p.add_argument("--out", default=None, help="grid folder (default runs/<study>)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument(
        "--jobs",
        type=positive_int,
        default=None,
        help="stages run side by side, each on its own share of the CPUs (and its own GPU); "
        "default: one per visible GPU times --jobs_per_gpu, on the CPU one per usable "
        f"core as far as memory allows ({MEMORY_PER_CPU_JOB // 2**30} GiB each)",
    )
    p.add_argument(
        "--jobs_per_gpu",
        type=positive_int,
        default=None,
        help="jobs sharing each GPU, for models too small to fill one (default 1)",
    )
    p.add_argument(
        "--shard",
        type=shard,
        default=None,
        metavar="I/N",
        help="run the I-th of N shares of the grid (runs sharing a stage-1 run stay together), "
        "for N machines or GPUs writing the same --out (default: the whole grid)",
    )
    p.add_argument("--no_download", action="store_true", help="never download a missing data set")
    p.add_argument(
        "--dry_run",
        action="store_true",
        help="print a summary and the commands that would run (each once), run nothing",
    )
    return p


@dataclass
class Stage:
    script: str
    argv: list[str]
    output: Path  # the file the stage leaves when it has finished
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
    stages: list[Stage]

    @property
    def test_log(self) -> Path:
        evaluation = self.stages[1].output
        return evaluation.parent / f"log_{evaluation.stem}_test.csv"

    @property
    def record(self) -> Path:
        return self.stages[2].output


def plan(args) -> list[Run]:
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
    if args.K and any("--K" in variant.stage1 for variant in study.variants):
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


def make_run(
    args, checkpoints: Path, condition: Condition, variant: Variant, method: str, backbone: str, seed: int, order: tuple
) -> Run:
    epochs = args.epochs or condition.epochs
    evaluation_epochs = args.linear_epochs or condition.evaluation_epochs
    run_id = variant.tag if variant.stage1 else ""
    common = [
        "--backbone",
        backbone,
        "--seed",
        str(seed),
        "--data_root",
        args.data_root,
        "--checkpoint_dir",
        str(checkpoints),
        "--device",
        args.child_device,
    ] + (["--no_download"] if args.no_download else [])
    subset = ["--train_subset", str(args.train_subset)] if args.train_subset else []
    run_tag = ["--id", run_id] if run_id else []

    stage1 = [
        "--dataset",
        condition.pretraining,
        "--method",
        method,
        "--epochs",
        str(epochs),
        "--data_size",
        str(batch_size(method)),
        *common,
        *subset,
        *run_tag,
    ]
    if method == "relationnet":
        stage1 += ["--K", str(args.K or relationnet_k(condition.name, backbone)), *variant.stage1]
    files = RunFiles(
        checkpoints, method, condition.pretraining, run_header(method, condition.pretraining, backbone, seed, run_id)
    )
    trains = METHODS[method].trains
    pretrained = files.epoch_checkpoint(epochs) if trains else files.final

    stage2 = (
        [
            "--dataset",
            condition.evaluation,
            "--checkpoint",
            str(pretrained),
            "--epochs",
            str(evaluation_epochs),
            *common,
            *subset,
            *run_tag,
        ]
        + (["--finetune"] if condition.finetune else [])
        + (["--label_fraction", str(variant.label_fraction)] if variant.label_fraction < 1 else [])
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

    test = [
        "--dataset",
        condition.evaluation,
        "--checkpoint",
        str(evaluation_files.final),
        *common,
        "--knn",
        str(args.knn),
        "--retrieval",
        str(args.retrieval),
    ]
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
            Stage("train_unsupervised.py", stage1, pretrained, files, resumable=True, epochs=trained_epochs),
            Stage(
                "train_linear_evaluation.py",
                stage2,
                evaluation_files.final,
                evaluation_files,
                resumable=condition.finetune,
                epochs=evaluation_epochs,
            ),
            Stage("test.py", test, Path(args.out) / "runs" / f"{name}.json"),
        ],
    )


def continue_flags(stage: Stage) -> list[str]:
    """Resume an interrupted training run (stage 1, fine-tuning) from its last checkpoint;
    replace one that died before it saved any."""
    if not stage.resumable:
        return []
    files = stage.files
    if files.last_checkpoint.exists():
        return ["--resume", "auto"]
    return ["--overwrite"] if files.log.exists() or files.config.exists() else []


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


class GridStopped(UserError):
    def __init__(self, message: str, exit_status: int):
        super().__init__(message)
        self.exit_status = exit_status


def last_error(log_path: Path) -> str:
    lines = [line.strip() for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if "error:" in line or "interrupted" in line]
    return (errors or lines or ["no output"])[-1]


@dataclass(eq=False)
class Task:
    """One stage to run: a stage-1 run shared by several runs is one task."""

    stage: Stage
    runs: list[Run]
    number: int  # the first run's place in the grid, 1-based
    needs: "Task | None" = None
    done: bool = False
    started: float = 0.0

    def label(self, total: int) -> str:
        shared = f" (+{len(self.runs) - 1} runs)" if len(self.runs) > 1 else ""
        return f"[{self.number}/{total}] {self.runs[0].name}{shared}"

    @property
    def stage_name(self) -> str:
        return {
            "train_unsupervised.py": "stage 1/3 pretraining",
            "train_linear_evaluation.py": "stage 2/3 "
            + ("fine-tuning" if self.stage.resumable else "linear evaluation"),
            "test.py": "stage 3/3 test",
        }[self.stage.script]


class Grid:
    def __init__(self, args, runs: list[Run], live: LiveLines | None = None):
        self.args = args
        self.out = Path(args.out)
        self.runs = runs
        if args.shard and args.shard[1] > len(runs):  # shard_of keeps a load per shard
            raise UserError(
                f"--shard {args.shard[0]}/{args.shard[1]}: the grid has {len(runs)} runs, so at most "
                f"{len(runs)} shards; pass N from 1 to {len(runs)}"
            )
        self.mine = shard_of(runs, *args.shard) if args.shard else runs
        self.live = live or LiveLines()
        self.timings_path = self.out / "timings.json"
        self.timings = self.read_timings()
        self.number_of = {run.name: number_ for number_, run in enumerate(runs, 1)}

    def check_settings(self) -> None:
        wanted = {key: getattr(self.args, key) for key in GRID_SETTINGS}
        path = self.out / "grid.json"
        if path.exists():
            stored, problem = read_grid_file(path, SETTINGS)
            if problem:
                raise UserError(
                    f"{path} cannot be read ({problem}): delete it and run "
                    "again with this grid's flags (each run's record is checked against them), "
                    "or pass another --out"
                )
            shown = {None: "(the paper's)", 0: "0"}
            changed = [
                f"--{key} {shown.get(stored.get(key), stored.get(key))} -> {shown.get(value, value)}"
                for key, value in wanted.items()
                if stored.get(key) != value
            ]
            if changed:
                raise UserError(
                    f"{self.out} holds a grid made with other settings ({'; '.join(changed)}): "
                    "repeat them, or pass another --out"
                )
        elif not self.args.dry_run:
            save_json(wanted, path)

    def read_timings(self, say: bool = True) -> dict[str, float]:
        if not self.timings_path.exists():
            return {}
        timings, problem = read_grid_file(self.timings_path, TIMINGS)
        if problem:
            if say:
                self.live.event(
                    f"[WARNING] {self.timings_path} cannot be read ({problem}): the wall "
                    "times of stages run before are lost; it is written afresh"
                )
            return {}
        return timings

    def add_timing(self, stage: Stage, seconds: float) -> None:
        """Shards share timings.json: each adds its stages' times under a lock, read, merged, written."""
        key = self.timing_key(stage)
        with open(self.out / ".timings.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            timings = self.read_timings(say=False)  # said when the grid started
            self.timings = {**timings, key: timings.get(key, 0.0) + seconds}
            atomic_write_bytes(self.timings_path, encode_text(json.dumps(self.timings, indent=1, sort_keys=True)))

    def timing_key(self, stage: Stage) -> str:
        return str(stage.output.relative_to(self.out)) if stage.output.is_relative_to(self.out) else str(stage.output)

    def expected_record(self, run: Run) -> dict:
        return {
            "condition": run.condition.name,
            "variant": run.variant.tag,
            "method": run.method,
            "backbone": run.backbone,
            "seed": run.seed,
            "epochs": run.epochs,
            "evaluation_epochs": run.evaluation_epochs,
            "train_subset": self.args.train_subset,
            "knn": self.args.knn,
            "retrieval": self.args.retrieval,
        }

    def record_of(self, run: Run, say: bool = False) -> dict | None:
        """The run's result record when it is readable and made with this grid's settings."""
        if not run.record.exists():
            return None
        record, unreadable = read_grid_file(run.record, RECORD)
        if unreadable:
            problem = f"cannot be read ({unreadable})"
        else:
            # "knn" and "retrieval" are absent from records of earlier versions
            changed = [
                f"{key} {record[key]} -> {value}"
                for key, value in self.expected_record(run).items()
                if record.get(key, value) != value
            ]
            problem = f"was made with other settings ({'; '.join(changed)})" if changed else None
        if problem is None:
            return record
        if say:
            self.live.event(f"{run.record} {problem}: the run is not counted as done; its test runs again")
        return None

    def tasks(self) -> list[Task]:
        """This shard's stages not done yet, in plan order; a stage waits for the one it needs."""
        by_output: dict[Path, Task] = {}
        tasks = []
        for run in self.mine:
            needs = None
            for stage in run.stages:
                task = by_output.get(stage.output)
                if task is None:
                    task = Task(stage, [], self.number_of[run.name])
                    task.done = (
                        self.record_of(run, say=True) is not None
                        if stage.script == "test.py"
                        else stage.output.exists()
                    )
                    by_output[stage.output] = task
                    if not task.done:
                        task.needs = needs
                        tasks.append(task)
                task.runs.append(run)
                needs = None if task.done else task
        return tasks

    def run_all(self) -> None:
        tasks = self.tasks()
        finished = len(self.mine) - len(
            {run.name for task in tasks for run in task.runs if task.stage.script == "test.py"}
        )
        if self.args.dry_run:
            self.print_plan(tasks, finished)
            return
        whose = (
            f"shard {self.args.shard[0]}/{self.args.shard[1]} ({len(self.mine)} of {len(self.runs)} runs)"
            if self.args.shard
            else f"{len(self.runs)} runs"
        )
        if not tasks:
            print(
                f"All {len(self.mine)} runs of the grid"
                + (f"'s shard {self.args.shard[0]}/{self.args.shard[1]}" if self.args.shard else "")
                + " had finished: rebuilding the table only"
            )
            return
        print(
            f"Grid {self.out}, {whose}: {finished} finished before, {len(tasks)} stages to run "
            f"in {self.args.jobs} job(s)",
            flush=True,
        )
        Scheduler(self, tasks).run()

    def print_plan(self, tasks: list[Task], finished: int) -> None:
        stage1 = [t for t in tasks if t.stage.script == "train_unsupervised.py"]
        pretrainings = len({run.stages[0].output for run in self.mine})
        evaluation_epochs = sum(t.stage.epochs for t in tasks if t.stage.script == "train_linear_evaluation.py")
        whose = (
            f" (shard {self.args.shard[0]}/{self.args.shard[1]}: {len(self.mine)} of them)" if self.args.shard else ""
        )
        print(
            f"Grid {self.out} (study {self.args.study}): {len(self.runs)} runs{whose}, {pretrainings} distinct "
            f"pretrainings, {finished} runs finished before; {len(tasks)} stages to run ({len(stage1)} stage 1, "
            f"{sum(t.stage.script == 'train_linear_evaluation.py' for t in tasks)} stage 2, "
            f"{sum(t.stage.script == 'test.py' for t in tasks)} test), estimated epochs: "
            f"{sum(t.stage.epochs for t in stage1)} of stage 1 and {evaluation_epochs} of stage 2 "
            f"(at most; a resumed run does fewer); {self.args.jobs} job(s)"
        )
        for task in tasks:
            print(shlex.join(self.command(task)))

    def command(self, task: Task) -> list[str]:
        return [sys.executable, str(REPO / task.stage.script), *task.stage.argv, *continue_flags(task.stage)]

    def save_record(self, run: Run) -> None:
        """The run's record, from the last row of the test log its test.py has just appended to."""
        measured = (
            ["accuracy", "top5"]
            + (["knn_accuracy"] if self.args.knn else [])
            + (["retrieval_precision"] if self.args.retrieval else [])
        )
        result, problem = read_test_result(run.test_log, measured)
        if problem:
            raise UserError(
                f"{run.test_log} cannot be read ({problem}): delete it and run the same command "
                f"again, which tests run {run.name} again"
            )
        record = {
            **self.expected_record(run),
            "accuracy": result["accuracy"],
            "top5": result["top5"],
            "knn_accuracy": result.get("knn_accuracy"),
            "retrieval_precision": result.get("retrieval_precision"),
            "wall_seconds": round(sum(self.timings.get(self.timing_key(s), 0.0) for s in run.stages), 1),
            "stage1_checkpoint": str(run.stages[0].output),
            "evaluation_checkpoint": str(run.stages[1].output),
            "order": list(run.order),
            "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        save_json(record, run.record)
        accuracy = record["accuracy"]
        self.live.event(
            f"[{self.number_of[run.name]}/{len(self.runs)}] {run.name}: test accuracy {accuracy:.2f}%"
            + (f", kNN {record['knn_accuracy']:.2f}%" if record["knn_accuracy"] is not None else "")
            + (
                f", top-{self.args.retrieval} retrieval {record['retrieval_precision']:.2f}%"
                if record["retrieval_precision"] is not None
                else ""
            )
        )

    def protocol_differences(self) -> list[str]:
        """How this grid's protocol differs from the paper's, in words."""
        conditions = list(dict.fromkeys(run.condition for run in self.runs))
        differences = []

        def paper(values) -> str:
            return " or ".join(map(str, sorted(set(values))))

        def epochs(count: int, stage: str) -> str:
            return f"{count} {stage} epoch{'' if count == 1 else 's'}"

        if self.args.epochs and {c.epochs for c in conditions} != {self.args.epochs}:
            differences.append(
                f"{epochs(self.args.epochs, 'stage-1')} instead of {paper(c.epochs for c in conditions)}"
            )
        if self.args.linear_epochs and {c.evaluation_epochs for c in conditions} != {self.args.linear_epochs}:
            differences.append(
                f"{epochs(self.args.linear_epochs, 'evaluation')} instead of "
                f"{paper(c.evaluation_epochs for c in conditions)}"
            )
        if self.args.train_subset:
            differences.append(
                f"{self.args.train_subset} training images in both stages instead of the full training sets"
            )
        relation = [run for run in self.runs if run.method == "relationnet"]
        paper_k = {relationnet_k(run.condition.name, run.backbone) for run in relation}
        if self.args.K and relation and paper_k != {self.args.K}:
            differences.append(f"relationnet K {self.args.K} instead of {paper(paper_k)}")
        if self.args.backbone:
            differences.append(f"backbone {', '.join(self.args.backbone)} chosen by --backbone")
        return differences

    def report(self) -> None:
        done = [(run, self.record_of(run)) for run in self.runs]
        records = [record for _, record in done if record is not None]
        if not records:
            return
        records.sort(key=lambda record: record["order"])
        study = STUDIES[self.args.study]
        missing = len(self.runs) - len(records)
        settings = (
            f"Grid `{self.out}`, study `{self.args.study}`: stage-1 epochs "
            f"{self.args.epochs or 'as the paper'}, evaluation epochs {self.args.linear_epochs or 'as the paper'}, "
            f"training images {self.args.train_subset or 'all'}, relationnet K {self.args.K or 'as the paper'}; "
            f"{len(records)} of {len(self.runs)} runs done"
            + (f" (the other {missing} not yet: still running on another shard, or to be run)" if missing else "")
            + ". The paper: 200 (STL-10: 300) and 100 (STL-10: 20 of fine-tuning) "
            "epochs on the full training sets."
        )
        written = write_results(
            records,
            self.out,
            study.description,
            settings,
            knn=self.args.knn,
            retrieval=self.args.retrieval,
            differences=self.protocol_differences(),
        )
        written += self.curves()
        print((self.out / "table.md").read_text())
        print("Written: " + ", ".join(str(path) for path in written))

    def curves(self) -> list[Path]:
        if not matplotlib_available():
            return []
        logs = stage_logs([self.out / "checkpoints"]) if (self.out / "checkpoints").exists() else []
        evaluation = [
            log for log in logs if log.stem.endswith(("linear_evaluation", "finetune")) or "_labels_" in log.stem
        ]
        pretraining = [log for log in logs if log not in evaluation]
        written = []
        for logs_of_stage, name in ((pretraining, "curves_pretraining.png"), (evaluation, "curves_evaluation.png")):
            if not logs_of_stage:
                continue
            try:
                written.append(plot_training_curves(logs_of_stage, self.out / name))
            except UserError as reason:  # one-epoch runs: each quantity a single point
                print(f"[INFO] No {name}: {reason}")
        return written


class Scheduler:
    """Runs a grid's tasks in `--jobs` child processes, each in its own slot of CPUs (and GPU); a
    task starts when the one it needs has finished. A failure or SIGINT/SIGTERM stops every
    child after its current step (they save a resumable checkpoint), and then the grid."""

    def __init__(self, grid: Grid, tasks: list[Task]):
        self.grid = grid
        self.live = grid.live
        self.pending = tasks
        self.total = len(grid.runs)
        self.free = make_slots(grid.args.jobs, grid.args.gpus, usable_cpus())
        self.running: dict[Task, tuple[subprocess.Popen, Slot, Activity]] = {}
        self.seconds_per_unit: dict[tuple[str, str], list[float]] = {}
        self.stop_signal: int | None = None
        self.failure: str | None = None

    def run(self) -> None:
        previous = {s: signal.signal(s, self.on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            while self.pending or self.running:
                if self.stop_signal is None and self.failure is None:
                    self.start_ready()
                self.collect()
                if not self.running and (self.stop_signal is not None or self.failure is not None):
                    break
                self.show()
                time.sleep(0.2)
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            self.live.close()
        if self.stop_signal is not None:
            raise GridStopped(
                f"grid stopped by {signal.Signals(self.stop_signal).name}; run the same command "
                "again to continue it: finished runs are kept and an interrupted training "
                "resumes from its last checkpoint",
                128 + self.stop_signal,
            )
        if self.failure is not None:
            raise GridStopped(self.failure, 1)

    def on_signal(self, signum, frame) -> None:
        """Ctrl-C reaches the grid only (the children have their own sessions): pass it on, so a
        second one stops them at once, as it would a stage run by hand."""
        self.stop_signal = self.stop_signal or signum
        for child, _, _ in self.running.values():
            child.send_signal(signum)

    def start_ready(self) -> None:
        for task in list(self.pending):
            if not self.free:
                return
            if task.needs is not None and not task.needs.done:
                continue
            self.failure = self.held_elsewhere(task)
            if self.failure is not None:
                self.stop_all()
                return
            self.pending.remove(task)
            self.start(task)

    def stop_all(self) -> None:
        for child, _, _ in self.running.values():
            child.send_signal(signal.SIGTERM)

    def held_elsewhere(self, task: Task) -> str | None:
        """A stage still held by a process of an earlier grid (stopping after a kill of the grid)
        or by a run started by hand would fail on its lock: wait a little, then say whom to wait for."""
        if task.stage.files is None:
            return None
        lock = RunLock(task.stage.files.lock)
        deadline = time.time() + LOCK_WAIT_SECONDS
        holder = lock.holder()
        while holder is not None and time.time() < deadline and self.stop_signal is None:
            time.sleep(0.5)
            holder = lock.holder()
        if holder is None:
            return None
        return (
            f"{task.stage.files.lock} is held by process {holder} (a stage of an earlier grid that is "
            f"still stopping, or a run started by hand): wait for it to end and run the same command "
            f"again, or end it with `kill {holder.split()[-1]}` (it saves a resumable checkpoint first)"
        )

    def start(self, task: Task) -> None:
        slot = self.free.pop(0)
        argv = self.grid.command(task)
        log_path = self.grid.out / "logs" / f"{task.runs[0].name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        label = task.label(self.total)
        files = task.stage.files
        activity = Activity(label, task.stage_name, task.stage.epochs, files.log if files else None)
        task.started = time.time()

        def register(child: subprocess.Popen) -> None:
            self.running[task] = (child, slot, activity)

        with open(log_path, "a", **TEXT_ENCODING) as log:
            log.write(f"\n$ {shlex.join(argv)}\n")
            log.flush()
            start_child(argv, log, slot, register, {GRID_ENVIRONMENT: str(self.grid.out)})
        self.live.event(
            f"{label}: {task.stage.script} {'(resumed) ' if '--resume' in argv else ''}..."
            + (f" ({slot.describe()})" if self.grid.args.jobs > 1 else "")
        )

    def collect(self) -> None:
        for task, (child, slot, _) in list(self.running.items()):
            status = child.poll()
            if status is None:
                continue
            del self.running[task]
            self.free.append(slot)
            self.free.sort(key=lambda s: s.index)
            seconds = time.time() - task.started
            self.grid.add_timing(task.stage, seconds)
            label = task.label(self.total)
            log = self.grid.out / "logs" / f"{task.runs[0].name}.log"
            if status != 0:
                if self.stop_signal is None and self.failure is None:
                    self.failure = (
                        f"{task.stage.script} failed for run {task.runs[0].name} (exit status {status}): "
                        f"{last_error(log)} [full output: {log}]; runs finished before are kept"
                    )
                    self.stop_all()
                continue
            task.done = True
            self.seconds_per_unit.setdefault((task.stage.script, task.runs[0].method), []).append(
                seconds / max(1, task.stage.epochs)
            )
            self.live.event(f"{label}: {task.stage.script} finished in {seconds:.0f}s")
            if task.stage.script == "test.py":
                try:
                    self.grid.save_record(task.runs[0])
                except UserError as unreadable:
                    self.failure = self.failure or f"{unreadable}; runs finished before are kept"
                    self.stop_all()

    def estimate(self, task: Task) -> float | None:
        """Seconds a task should take, from the tasks of its script (and method) done so far."""
        same = self.seconds_per_unit.get((task.stage.script, task.runs[0].method))
        if not same:
            same = [
                v
                for (script, _), values in self.seconds_per_unit.items()
                if script == task.stage.script
                for v in values
            ]
        return statistics.fmean(same) * max(1, task.stage.epochs) if same else None

    def show(self) -> None:
        now = time.time()
        left = {}
        progress = {}
        for task, (_, _, activity) in self.running.items():
            progress[task] = read_epoch_progress(activity.log)
            left[task] = activity.seconds_left(now, progress[task], self.estimate(task))
        pending = [self.estimate(task) for task in self.pending]
        known = list(left.values()) + pending
        grid_left = None if any(v is None for v in known) else sum(known) / self.grid.args.jobs
        lines = []
        for task, (_, _, activity) in self.running.items():
            later = [self.estimate(t) for t in self.pending if t.runs[0] is task.runs[0]]
            run_left = None if left[task] is None or None in later else left[task] + sum(later)
            lines.append(activity.line(now, progress[task], run_left, grid_left))
        self.live.status(lines, now)


class GridLock(RunLock):
    """One grid's claim on its --out folder, so that no two grids write the same run's log.

    The lock is `.reproduce_<plan>_<I>_of_<N>.lock`: <plan> a digest of the names of the plan's
    runs, I/N the shard (1/1 unsharded, as `--shard 1/1`, which runs the same runs). The shards
    of one plan split its runs, so each holds its own file and they run side by side, also from
    several machines on shared storage. Any other grid on the folder (an unsharded grid beside
    a shard, shards of another N or of another plan) could run a run of this one: once it holds
    its own file, a grid that finds such a grid's live lock lets go and is refused (two grids
    starting at once may both be refused; neither writes)."""

    separate_run = "pass another --out for a separate grid"
    PATTERN = ".reproduce*.lock"  # also the `.reproduce.lock` of earlier versions

    def __init__(self, out: Path, runs: list[Run], shard: tuple[int, int] | None):
        index, count = shard or (1, 1)
        digest = hashlib.sha256("\n".join(run.name for run in runs).encode()).hexdigest()[:12]
        self.plan = f".reproduce_{digest}_"
        super().__init__(out / f"{self.plan}{index}_of_{count}.lock")
        self.count = count

    def __enter__(self) -> "GridLock":
        super().__enter__()
        for path in sorted(self.path.parent.glob(self.PATTERN)):
            same_plan = path.name.startswith(self.plan) and path.name.endswith(f"_of_{self.count}.lock")
            holder = None if same_plan else RunLock(path).holder()
            if holder is None:
                continue
            self.__exit__()
            raise UserError(
                f"{self.path.parent} is being written by another grid (process {holder}, {path.name}) "
                "whose runs may be this one's: wait for it to end, run the same --shard I/N and "
                f"run selection as it, or {self.separate_run}"
            )
        return self


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    args.out = args.out or str(Path("runs") / args.study)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file: pass a folder (it is created when missing)")
    data_root = Path(args.data_root)
    if not data_root.is_dir() and args.no_download:
        raise UserError(f"--data_root {data_root} is not a folder: pass the folder holding the data sets")
    device = resolve_device(args.device)  # a bad name stops here, not in the first child
    args.gpus = visible_gpus(device)
    if args.jobs_per_gpu and not args.gpus:
        raise UserError(f"--jobs_per_gpu: the grid runs on the CPU (--device {args.device}); use --jobs")
    args.jobs = args.jobs or automatic_jobs(args.gpus, args.jobs_per_gpu or 1)
    # Each child sees only its own GPU (CUDA_VISIBLE_DEVICES), as its first CUDA device.
    args.child_device = "cuda" if args.gpus else args.device
    runs = plan(args)
    grid = Grid(args, runs)
    grid.check_settings()
    if args.dry_run:
        grid.run_all()
        return
    with GridLock(out, runs, args.shard):
        try:
            grid.run_all()
        finally:
            grid.report()


if __name__ == "__main__":
    run_main(main)
