#!/usr/bin/env python
"""Reproduce the paper's tables: a grid of conditions x methods x seeds through the three stages.

Examples:
  python reproduce.py --study table1                   # Table 1 with the paper's settings (GPU-days)
  python reproduce.py --study cifar10 --methods relationnet,simclr,rotationnet,randomweights,standard \
      --epochs 3 --linear_epochs 10 --K 4 --seeds 1,2,3      # a short CIFAR-10 grid on a CPU
  python reproduce.py --study k_sweep --dry_run        # print the commands only

Each run is the three stage scripts in a child process, with their output in
<out>/logs/<run>.log. A finished run is skipped and an interrupted one resumed, so the same
command continues a grid after a restart; Ctrl-C stops it after the current training step.
<out> receives results.csv (one row per run), table.md (mean ± std over seeds beside the
paper's value), figure.png and training curves (with matplotlib).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from utils.entry import exit_quietly_on_interrupt

exit_quietly_on_interrupt()  # first: a Ctrl-C while torch imports is one line, not a traceback

from backbones import BACKBONES  # noqa: E402
from engine.checkpoint import (  # noqa: E402
    RunFiles,
    RunLock,
    atomic_write_bytes,
    evaluation_header,
    run_header,
    save_json,
)
from experiments.cli import DATA_ROOT_ENV, Parser, non_negative_int, positive_int  # noqa: E402
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
from utils.errors import UserError  # noqa: E402
from utils.runtime import resolve_device  # noqa: E402

REPO = Path(__file__).resolve().parent
# Settings that change the numbers of every run: a grid folder holds one value of each.
GRID_SETTINGS = ("study", "epochs", "linear_epochs", "train_subset", "K", "knn", "retrieval")


def name_list(choices, what: str):
    def parse(text: str) -> list[str]:
        names = [name for name in text.split(",") if name]
        unknown = [name for name in names if name not in choices]
        if unknown or not names:
            raise argparse.ArgumentTypeError(f"unknown {what} '{','.join(unknown) or text}'; "
                                             f"choose from {', '.join(choices)}")
        return list(dict.fromkeys(names))
    parse.__name__ = f"{what} list"
    return parse


def seed_list(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",") if part]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seeds like 1,2,3, got '{text}'") from None
    if not seeds or any(not 0 <= seed < 2**31 for seed in seeds):
        raise argparse.ArgumentTypeError(f"expected seeds from 0 to 2^31-1 like 1,2,3, got '{text}'")
    return list(dict.fromkeys(seeds))


def relation_k(text: str) -> int:
    value = positive_int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"relationnet needs at least 2 views per image, got {value}")
    return value


def parser() -> Parser:
    p = Parser(description="Run a grid of the paper's experiments through the three stages; "
                           "finished runs are skipped, interrupted ones resumed.")
    p.add_argument("--study", default="table1", choices=list(STUDIES),
                   help="which grid: " + "; ".join(f"{name}: {s.description}" for name, s in STUDIES.items()))
    p.add_argument("--conditions", type=name_list(list(CONDITIONS), "condition"), default=None,
                   help="comma-separated subset of the study's conditions (default: all)")
    p.add_argument("--methods", type=name_list(list(ALL_METHODS), "method"), default=None,
                   help="comma-separated subset of the study's methods (default: all)")
    p.add_argument("--backbone", type=name_list(list(BACKBONES), "backbone"), default=None,
                   help="comma-separated backbones instead of the paper's for the study")
    p.add_argument("--seeds", type=seed_list, default=[1, 2, 3], help="comma-separated seeds (default 1,2,3)")
    p.add_argument("--epochs", type=positive_int, default=None,
                   help="stage-1 epochs instead of the paper's (200; 300 on STL-10)")
    p.add_argument("--linear_epochs", type=positive_int, default=None,
                   help="stage-2 epochs instead of the paper's (100; 20 of fine-tuning on STL-10)")
    p.add_argument("--train_subset", type=non_negative_int, default=0,
                   help="train both stages on a seeded, class-balanced subset of N images (0 = all)")
    p.add_argument("--K", type=relation_k, default=None,
                   help="relationnet views per image instead of the paper's (32; 16 tiny/slim; 25 STL-10)")
    p.add_argument("--knn", type=non_negative_int, default=200,
                   help="k of the kNN accuracy reported beside the linear one (0 = off)")
    p.add_argument("--retrieval", type=non_negative_int, default=10,
                   help="K of the top-K retrieval precision reported (0 = off)")
    p.add_argument("--data_root", default=os.environ.get(DATA_ROOT_ENV, "./data"),
                   help=f"folder holding the data sets (default ${DATA_ROOT_ENV} or ./data)")
    p.add_argument("--out", default=None, help="grid folder (default runs/<study>)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--no_download", action="store_true", help="never download a missing data set")
    p.add_argument("--dry_run", action="store_true", help="print the commands that would run, run nothing")
    return p


@dataclass
class Stage:
    script: str
    argv: list[str]
    output: Path                    # the file the stage leaves when it has finished
    files: RunFiles | None = None   # a training run's files, to tell how to continue it


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


def plan(args) -> list[Run]:
    study = STUDIES[args.study]
    conditions = args.conditions or list(study.conditions)
    methods = args.methods or list(study.methods)
    for flag, chosen, allowed in (("--conditions", conditions, study.conditions), ("--methods", methods, study.methods)):
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
                        runs.append(make_run(args, checkpoints, condition, variant, method, backbone, seed,
                                             (study.conditions.index(condition_name), v, b,
                                              ALL_METHODS.index(method), seed)))
    return runs


def make_run(args, checkpoints: Path, condition: Condition, variant: Variant, method: str, backbone: str,
             seed: int, order: tuple) -> Run:
    epochs = args.epochs or condition.epochs
    evaluation_epochs = args.linear_epochs or condition.evaluation_epochs
    run_id = variant.tag if variant.stage1 else ""
    common = ["--backbone", backbone, "--seed", str(seed), "--data_root", args.data_root,
              "--checkpoint_dir", str(checkpoints), "--device", args.device] + (
        ["--no_download"] if args.no_download else [])
    subset = ["--train_subset", str(args.train_subset)] if args.train_subset else []
    run_tag = ["--id", run_id] if run_id else []

    stage1 = ["--dataset", condition.pretraining, "--method", method, "--epochs", str(epochs),
              "--data_size", str(batch_size(method)), *common, *subset, *run_tag]
    if method == "relationnet":
        stage1 += ["--K", str(args.K or relationnet_k(condition.name, backbone)), *variant.stage1]
    files = RunFiles(checkpoints, method, condition.pretraining,
                     run_header(method, condition.pretraining, backbone, seed, run_id))
    pretrained = files.epoch_checkpoint(epochs) if METHODS[method].trains else files.final

    stage2 = ["--dataset", condition.evaluation, "--checkpoint", str(pretrained), "--epochs", str(evaluation_epochs),
              *common, *subset, *run_tag] + (["--finetune"] if condition.finetune else []) + (
        ["--label_fraction", str(variant.label_fraction)] if variant.label_fraction < 1 else [])
    evaluation_files = RunFiles(checkpoints, method, condition.evaluation, evaluation_header(
        method, condition.evaluation, condition.pretraining, backbone, seed, run_id, evaluation_epochs,
        condition.finetune, variant.label_fraction))
    evaluated = evaluation_files.final

    test = ["--dataset", condition.evaluation, "--checkpoint", str(evaluated), *common,
            "--knn", str(args.knn), "--retrieval", str(args.retrieval)]
    name = "_".join(filter(None, [condition.name, variant.tag, method, backbone, f"seed_{seed}"]))
    trained_epochs = epochs if METHODS[method].trains else 0
    return Run(name, order, condition, variant, method, backbone, seed, trained_epochs, evaluation_epochs, [
        Stage("train_unsupervised.py", stage1, pretrained, files),
        Stage("train_linear_evaluation.py", stage2, evaluated, evaluation_files if condition.finetune else None),
        Stage("test.py", test, Path(args.out) / "runs" / f"{name}.json")])


def continue_flags(stage: Stage) -> list[str]:
    """Resume an interrupted training run (stage 1, fine-tuning) from its last checkpoint;
    replace one that died before it saved any."""
    files = stage.files
    if files is None:
        return []
    if files.last_checkpoint.exists():
        return ["--resume", "auto"]
    return ["--overwrite"] if files.log.exists() or files.config.exists() else []


class GridStopped(UserError):
    def __init__(self, message: str, exit_status: int):
        super().__init__(message)
        self.exit_status = exit_status


def execute(argv: list[str], log_path: Path) -> tuple[int, float, int | None]:
    """Run a stage script as a child with its output in `log_path`; returns (status, seconds,
    the signal that asked the grid to stop, if any). The child has its own session, so a
    Ctrl-C reaches it once, forwarded from here, and it stops after its current step."""
    stop = []
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as log:
        log.write(f"\n$ {shlex.join(argv)}\n")
        log.flush()
        start = time.time()
        child = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                 cwd=os.getcwd())

        def forward(signum, frame):
            stop.append(signum)
            child.send_signal(signum)

        previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            status = child.wait()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
    return status, time.time() - start, (stop[0] if stop else None)


def last_error(log_path: Path) -> str:
    lines = [line.strip() for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if "error:" in line or "interrupted" in line]
    return (errors or lines or ["no output"])[-1]


def read_test_row(path: Path) -> dict:
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        raise UserError(f"{path} has no result row: run the grid again")
    return rows[-1]


def number(text: str | None) -> float | None:
    return round(float(text), 4) if text not in (None, "") else None


class Grid:
    def __init__(self, args, runs: list[Run]):
        self.args = args
        self.out = Path(args.out)
        self.runs = runs
        self.timings_path = self.out / "timings.json"
        self.timings = json.loads(self.timings_path.read_text()) if self.timings_path.exists() else {}

    def check_settings(self) -> None:
        wanted = {key: getattr(self.args, key) for key in GRID_SETTINGS}
        path = self.out / "grid.json"
        if path.exists():
            stored = json.loads(path.read_text())
            shown = {None: "(the paper's)", 0: "0"}
            changed = [f"--{key} {shown.get(stored.get(key), stored.get(key))} -> {shown.get(value, value)}"
                       for key, value in wanted.items() if stored.get(key) != value]
            if changed:
                raise UserError(f"{self.out} holds a grid made with other settings ({'; '.join(changed)}): "
                                "repeat them, or pass another --out")
        elif not self.args.dry_run:
            save_json(wanted, path)

    def run_all(self) -> None:
        finished = 0
        for number_, run in enumerate(self.runs, 1):
            prefix = f"[{number_}/{len(self.runs)}] {run.name}"
            if run.stages[2].output.exists():
                finished += 1
                print(f"{prefix}: finished before")
                continue
            for stage in run.stages:
                if stage.script != "test.py" and stage.output.exists():
                    print(f"{prefix}: {stage.script} done before ({stage.output.name})")
                    continue
                argv = [sys.executable, str(REPO / stage.script), *stage.argv, *continue_flags(stage)]
                if self.args.dry_run:
                    print(shlex.join(argv))
                    continue
                self.run_stage(prefix, run, stage, argv)
            if not self.args.dry_run:
                self.save_record(run)
        if finished == len(self.runs):
            print(f"All {finished} runs of the grid had finished: rebuilding the table only")

    def run_stage(self, prefix: str, run: Run, stage: Stage, argv: list[str]) -> None:
        print(f"{prefix}: {stage.script} {'(resumed) ' if '--resume' in argv else ''}...", flush=True)
        log = self.out / "logs" / f"{run.name}.log"
        status, seconds, stop = execute(argv, log)
        key = self.timing_key(stage)
        self.timings[key] = self.timings.get(key, 0.0) + seconds
        atomic_write_bytes(self.timings_path, json.dumps(self.timings, indent=1, sort_keys=True).encode())
        if stop is not None:
            raise GridStopped(f"grid stopped by {signal.Signals(stop).name} during {run.name} ({stage.script}); "
                              "run the same command again to continue it: finished runs are kept and "
                              "an interrupted training resumes from its last checkpoint", 128 + stop)
        if status != 0:
            raise GridStopped(f"{stage.script} failed for run {run.name} (exit status {status}): {last_error(log)} "
                              f"[full output: {log}]; runs finished before are kept", 1)
        print(f"{prefix}: {stage.script} finished in {seconds:.0f}s", flush=True)

    def timing_key(self, stage: Stage) -> str:
        return str(stage.output.relative_to(self.out)) if stage.output.is_relative_to(self.out) else str(stage.output)

    def save_record(self, run: Run) -> None:
        result = read_test_row(run.test_log)
        record = {"condition": run.condition.name, "variant": run.variant.tag, "method": run.method,
                  "backbone": run.backbone, "seed": run.seed, "epochs": run.epochs,
                  "evaluation_epochs": run.evaluation_epochs, "train_subset": self.args.train_subset,
                  "accuracy": number(result.get("accuracy")), "top5": number(result.get("top5")),
                  "knn_accuracy": number(result.get("knn_accuracy")),
                  "retrieval_precision": number(result.get("retrieval_precision")),
                  "wall_seconds": round(sum(self.timings.get(self.timing_key(s), 0.0) for s in run.stages), 1),
                  "stage1_checkpoint": str(run.stages[0].output), "evaluation_checkpoint": str(run.stages[1].output),
                  "order": list(run.order), "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
        save_json(record, run.stages[2].output)
        accuracy = record["accuracy"]
        print(f"  test accuracy {accuracy:.2f}%" + (f", kNN {record['knn_accuracy']:.2f}%" if record["knn_accuracy"]
                                                   is not None else "")
              + (f", top-{self.args.retrieval} retrieval {record['retrieval_precision']:.2f}%"
                 if record["retrieval_precision"] is not None else ""), flush=True)

    def report(self) -> None:
        records = [json.loads(path.read_text()) for path in sorted((self.out / "runs").glob("*.json"))]
        if not records:
            return
        records.sort(key=lambda record: record["order"])
        study = STUDIES[self.args.study]
        settings = (f"Grid `{self.out}`, study `{self.args.study}`: stage-1 epochs "
                    f"{self.args.epochs or 'as the paper'}, evaluation epochs {self.args.linear_epochs or 'as the paper'}, "
                    f"training images {self.args.train_subset or 'all'}, relationnet K {self.args.K or 'as the paper'}; "
                    f"{len(records)} runs. The paper: 200 (STL-10: 300) and 100 (STL-10: 20 of fine-tuning) "
                    "epochs on the full training sets.")
        written = write_results(records, self.out, study.description, settings)
        written += self.curves()
        print((self.out / "table.md").read_text())
        print("Written: " + ", ".join(str(path) for path in written))

    def curves(self) -> list[Path]:
        if not matplotlib_available():
            return []
        logs = stage_logs([self.out / "checkpoints"]) if (self.out / "checkpoints").exists() else []
        evaluation = [log for log in logs if log.stem.endswith(("linear_evaluation", "finetune")) or "_labels_" in log.stem]
        pretraining = [log for log in logs if log not in evaluation]
        written = []
        for logs_of_stage, name in ((pretraining, "curves_pretraining.png"), (evaluation, "curves_evaluation.png")):
            if logs_of_stage:
                written.append(plot_training_curves(logs_of_stage, self.out / name))
        return written


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    args.out = args.out or str(Path("runs") / args.study)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file: pass a folder (it is created when missing)")
    data_root = Path(args.data_root)
    if not data_root.is_dir() and args.no_download:
        raise UserError(f"--data_root {data_root} is not a folder: pass the folder holding the data sets")
    resolve_device(args.device)  # a bad name stops here, not in the first child
    runs = plan(args)
    grid = Grid(args, runs)
    grid.check_settings()
    if args.dry_run:
        grid.run_all()
        return
    with RunLock(out / ".reproduce.lock"):
        try:
            grid.run_all()
        finally:
            grid.report()


if __name__ == "__main__":
    run_main(main)
