"""A grid on its folder: the settings it was made with, the stages still to run, the runs'
records and wall times, the table it builds, and the lock that keeps other grids out."""

from __future__ import annotations

import fcntl
import hashlib
import json
import shlex
import sys
import time
from pathlib import Path

from engine.locks import RunLock
from experiments.arguments import RunArguments
from experiments.grid_files import (
    RECORD,
    SETTINGS,
    TIMINGS,
    describe_records,
    read_grid_file,
    read_probe_accuracy,
    read_test_result,
    unfounded_record,
)
from experiments.grid_plan import Run, RunStage, Stage, shard_of
from experiments.parallel import LiveLines
from experiments.plots import matplotlib_available, plot_training_curves, stage_logs
from experiments.report import write_results
from experiments.scheduler import Scheduler, Task
from experiments.studies import CONDITIONS, METHOD_SETTINGS
from methods import METHODS
from utils.atomic import atomic_write_bytes, encode_text, save_json
from utils.errors import UserError

REPO = Path(__file__).resolve().parents[1]
# Settings that change the numbers of every run: a grid folder holds one value of each.
GRID_SETTINGS = tuple(SETTINGS.fields)


class Grid:
    def __init__(self, args: RunArguments, runs: list[Run], live: LiveLines | None = None):
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

    def add_timing(self, stage: RunStage, seconds: float) -> None:
        """Shards share timings.json: each adds its stages' times under a lock, read, merged, written."""
        key = self.timing_key(stage)
        with open(self.out / ".timings.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            timings = self.read_timings(say=False)  # said when the grid started
            self.timings = {**timings, key: timings.get(key, 0.0) + seconds}
            atomic_write_bytes(self.timings_path, encode_text(json.dumps(self.timings, indent=1, sort_keys=True)))

    def timing_key(self, stage: RunStage) -> str:
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
            # the labelled images the kNN classifier votes with: the linear classifier's
            "knn_train_subset": self.args.train_subset if self.args.knn else 0,
            "retrieval": self.args.retrieval,
        }

    def settings_changed(self, record: dict, expected: dict) -> list[str]:
        """The settings of `expected` that `record` was made with otherwise, as `name old -> new`.
        Records of earlier versions lack "knn" and "retrieval" (taken as this grid's) and
        "knn_train_subset" (their kNN classifier voted with every training image: 0)."""
        absent = {"knn_train_subset": 0}
        return [
            f"{key} {record.get(key, absent.get(key, value))} -> {value}"
            for key, value in expected.items()
            if record.get(key, absent.get(key, value)) != value
        ]

    def record_of(self, run: Run, say: bool = False) -> dict | None:
        """The run's result record when it is readable and made with this grid's settings."""
        if not run.record.exists():
            return None
        record, unreadable = read_grid_file(run.record, RECORD)
        if unreadable:
            problem = f"cannot be read ({unreadable})"
        else:
            changed = self.settings_changed(record, self.expected_record(run))
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
                        self.record_of(run, say=True) is not None if stage.kind is Stage.TEST else stage.output.exists()
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
            {run.name for task in tasks for run in task.runs if task.stage.kind is Stage.TEST}
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
        stage1 = [t for t in tasks if t.stage.kind is Stage.PRETRAIN]
        pretrainings = len({run.stages[0].output for run in self.mine})
        evaluation_epochs = sum(t.stage.epochs for t in tasks if t.stage.kind is Stage.EVALUATE)
        whose = (
            f" (shard {self.args.shard[0]}/{self.args.shard[1]}: {len(self.mine)} of them)" if self.args.shard else ""
        )
        print(
            f"Grid {self.out} (study {self.args.study}): {len(self.runs)} runs{whose}, {pretrainings} distinct "
            f"pretrainings, {finished} runs finished before; {len(tasks)} stages to run ({len(stage1)} stage 1, "
            f"{sum(t.stage.kind is Stage.EVALUATE for t in tasks)} stage 2, "
            f"{sum(t.stage.kind is Stage.TEST for t in tasks)} test), estimated epochs: "
            f"{sum(t.stage.epochs for t in stage1)} of stage 1 and {evaluation_epochs} of stage 2 "
            f"(at most; a resumed run does fewer); {self.args.jobs} job(s)"
        )
        for task in tasks:
            print(shlex.join(self.command(task)))

    def command(self, task: Task) -> list[str]:
        return [sys.executable, str(REPO / task.stage.kind.script), *task.stage.argv, *task.stage.continue_flags()]

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
            "probe_accuracy": read_probe_accuracy(run.stages[0].files.log) if run.stages[0].files else None,
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
            users = "stage 1, the linear classifier" + (" and the kNN classifier" if self.args.knn else "")
            differences.append(
                f"{self.args.train_subset} training images (seeded, class-balanced) for {users} instead "
                "of the full training sets"
            )
        paper_k = {
            options["K"]
            for run in self.runs
            if "K" in (options := METHOD_SETTINGS[run.method].paper_options(run.condition.name, run.backbone))
        }
        if self.args.K and paper_k and paper_k != {self.args.K}:
            differences.append(f"relationnet K {self.args.K} instead of {paper(paper_k)}")
        if self.args.backbone:
            differences.append(f"backbone {', '.join(self.args.backbone)} chosen by --backbone")
        if self.args.set:
            differences.append(
                "variants from --set "
                + ", ".join(change.shown for change in self.args.set)
                + " (rows tagged with the change)"
            )
        differences += list(dict.fromkeys(note for run in self.runs for note in run.adjustments))
        return differences

    def folder_records(self) -> tuple[list[dict], list[dict], list[str]]:
        """The finished records the table holds: this plan's made with its settings, then those
        of other commands in the folder (other seeds, methods, variants) made with the same
        settings on the plan's conditions; and what was left out, in words."""
        planned = [record for run in self.runs if (record := self.record_of(run)) is not None]
        own = {run.record.resolve() for run in self.runs}
        conditions = {run.condition.name for run in self.runs}
        earlier, left_out = [], []
        for path in sorted((self.out / "runs").glob("*.json")) if (self.out / "runs").is_dir() else []:
            if path.resolve() in own:
                continue
            record, unreadable = read_grid_file(path, RECORD)
            if unreadable:
                left_out.append(f"{path.name} (cannot be read: {unreadable})")
                continue
            condition = CONDITIONS.get(record["condition"])
            if record["condition"] not in conditions or condition is None:
                left_out.append(f"{path.name} (condition {record['condition']}, not this grid's)")
                continue
            expected = {
                "epochs": (self.args.epochs or condition.epochs)
                if (record["method"] not in METHODS or METHODS[record["method"]].trains)
                else 0,
                "evaluation_epochs": self.args.linear_epochs or condition.evaluation_epochs,
                "train_subset": self.args.train_subset,
                "knn": self.args.knn,
                "knn_train_subset": self.args.train_subset if self.args.knn else 0,
                "retrieval": self.args.retrieval,
            }
            changed = self.settings_changed(record, expected)
            if changed:
                left_out.append(f"{path.name} (made with other settings: {'; '.join(changed)})")
                continue
            unfounded = unfounded_record(path, record)
            if unfounded:
                left_out.append(f"{path.name} ({unfounded})")
                continue
            earlier.append(record)
        return planned, earlier, left_out

    def title(self, records: list[dict]) -> str:
        """What the table holds: its conditions, backbones and methods, from the records, and
        the study they come from."""
        conditions = [CONDITIONS[name].label for name in dict.fromkeys(r["condition"] for r in records)]
        backbones = list(dict.fromkeys(r["backbone"] for r in records))
        methods = list(dict.fromkeys(r["method"] for r in records))
        seeds = sorted({r["seed"] for r in records})
        return (
            f"{', '.join(conditions)}, {', '.join(backbones)}: {', '.join(methods)}; "
            f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))} (study {self.args.study})"
        )

    def report(self) -> None:
        planned, earlier, left_out = self.folder_records()
        records = planned + earlier
        if not records:
            return
        records.sort(key=lambda record: (record["order"], record["variant"]))
        missing = len(self.runs) - len(planned)
        included = f"{len(planned)} of this command's {len(self.runs)} runs" + (
            f" (the other {missing} not yet: still running on another shard, or to be run)" if missing else ""
        )
        if earlier:
            included += (
                f", and {len(earlier)} finished before in this folder with the same settings ("
                + describe_records(earlier)
                + ")"
            )
        settings = (
            f"Grid `{self.out}`, study `{self.args.study}`: stage-1 epochs "
            f"{self.args.epochs or 'as the paper'}, evaluation epochs {self.args.linear_epochs or 'as the paper'}, "
            f"training images {self.args.train_subset or 'all'}, relationnet K {self.args.K or 'as the paper'}; "
            f"the table holds {included}"
            + (f"; left out: {'; '.join(left_out)}" if left_out else "")
            + ". The paper: 200 (STL-10: 300) and 100 (STL-10: 20 of fine-tuning) "
            "epochs on the full training sets."
        )
        differences = self.protocol_differences()
        written = write_results(
            records,
            self.out,
            self.title(records),
            settings,
            knn=self.args.knn,
            retrieval=self.args.retrieval,
            differences=differences,
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
