"""What stage 1 reports besides its loss while it trains: every few epochs (`--eval_every`) a
kNN accuracy of the backbone and the label-free measures of its embedding (RankMe, alignment,
uniformity) on the validation split, or else on the test split (for monitoring only), and
copies of every logged quantity for TensorBoard (`--tensorboard`) and Weights & Biases
(`--wandb`).

They reach the engine as plain callables (its `monitor` and `row_listeners`), so the engine
does not depend on evaluation, TensorBoard or W&B.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Callable, Iterator

import torch

from backbones import Backbone
from backbones.features import extract_features
from datasets import ImageSet, load_dataset
from datasets.augment import Augmentation, CropColorViews, build_augmentation
from evaluation.label_free import alignment, rankme, uniformity
from evaluation.neighbours import knn_accuracy
from utils.console import say
from utils.errors import UserError
from utils.seeds import SeedPurpose, derived_seed

KNN_COLUMNS = ("knn_accuracy", "knn_top5")
LABEL_FREE_COLUMNS = ("rankme", "alignment", "uniformity")
KNN_NEIGHBOURS = 200
# The views whose features give the alignment and uniformity: SimCLR's (relationnet's), the
# same for every method, so that the measures compare methods on the same pairs of views.
MONITOR_VIEWS = CropColorViews()
TEST_SPLIT_NOTE = "test split: for monitoring only, not for selecting"


@dataclass(frozen=True)
class Monitor:
    """The engine's monitor (`TrainingPlan.monitor`, `monitor_columns`, `monitor_note`)."""

    score: Callable[[Backbone], dict]
    columns: tuple[str, ...]
    note: str


def training_monitor(
    dataset: str,
    data_root: str,
    download: bool,
    image_size: int,
    images: int,
    seed: int,
    device: torch.device,
    normalised: bool = True,
    validation: ImageSet | None = None,
    held_out: torch.Tensor | None = None,
) -> Monitor:
    """Scores a backbone on a seeded, class-balanced subset of at most `images` images (0 =
    all) of the `validation` split (columns `val_*`), else of the test split (its note says so):
    the weighted kNN accuracy (k 200, knn_accuracy's temperature 0.07, as `test.py --knn`)
    against such a subset of the labelled training split less the `held_out` positions, and
    the label-free measures (`label_free_scores`). Training images without labels are scored
    by the label-free measures alone, on a subset of themselves. The images are read once here,
    `normalised` or in [0, 1] as the method trains its backbone (`Method.normalises_inputs`)."""
    train = load_dataset(dataset, "train", data_root, download=download, image_size=image_size).as_inputs(normalised)
    if held_out is not None:
        keep = torch.ones(len(train), dtype=torch.bool)
        keep[held_out] = False
        train = train.subset(keep)
    bank: ImageSet | None = train.balanced_subset(images, seed)
    if validation is not None:
        queries, prefix, note = validation.balanced_subset(images, seed), "val_", "validation split"
    elif bool((train.labels < 0).any()):
        bank, queries, prefix = None, train.balanced_subset(images, seed), ""
        note = "training images without labels: label-free measures only"
    else:
        test = load_dataset(dataset, "test", data_root, download=download, image_size=image_size).as_inputs(normalised)
        if bool((test.labels < 0).any()):
            raise UserError(
                f"--eval_every: the {dataset} test split has unlabelled images: add --val_images N to "
                "score on held-out training images"
            )
        queries, prefix, note = test.balanced_subset(images, seed), "", TEST_SPLIT_NOTE
    query_labels = queries.labels.to(device)
    views = build_augmentation(MONITOR_VIEWS, queries.mean, queries.std, queries.padding, cutout=queries.cutout)
    views_seed = derived_seed(seed, 0, SeedPurpose.MONITOR_VIEWS)
    if bank is not None:
        neighbours = min(KNN_NEIGHBOURS, len(bank))
        bank_labels = bank.labels.to(device)
        say(
            f"[INFO] Monitor: kNN (k {neighbours}, {len(bank)} training images) and label-free measures on "
            f"{len(queries)} images of the {note}"
        )
    else:
        say(f"[INFO] Monitor: label-free measures on {len(queries)} {note}")

    def score(backbone: Backbone) -> dict:
        features = extract_features(backbone, queries, device, desc="Monitor features")
        result = {}
        if bank is not None:
            bank_features = extract_features(backbone, bank, device, desc="kNN train features")
            result.update(knn_accuracy(bank_features, bank_labels, features, query_labels, neighbours))
        first, second = view_features(backbone, queries, views, views_seed, device)
        result.update(label_free_scores(features, first, second))
        return {prefix + name: value for name, value in result.items()}

    columns = (KNN_COLUMNS if bank is not None else ()) + LABEL_FREE_COLUMNS
    return Monitor(score, tuple(prefix + name for name in columns), note)


def label_free_scores(features: torch.Tensor, first: torch.Tensor, second: torch.Tensor) -> dict:
    """RankMe of the un-augmented `features`, alignment of the two views' features `first` and
    `second` (row for row the same images), and their uniformity (the mean of each view's)."""
    return {
        "rankme": rankme(features),
        "alignment": alignment(first, second),
        "uniformity": (uniformity(first) + uniformity(second)) / 2,
    }


@torch.no_grad()
def view_features(
    backbone: Backbone, data: ImageSet, views: Augmentation, seed: int, device: torch.device, batch_size: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """The backbone's features (eval mode) of two augmented views of every image of `data`,
    drawn from a generator seeded with `seed`: the same pairs at every monitored epoch, and
    nothing drawn from the training's generators."""
    generator = torch.Generator(device=device).manual_seed(seed)
    was_training = backbone.training
    backbone.eval()
    first, second = [], []
    for start in range(0, len(data), batch_size):
        images = data.images[start : start + batch_size].to(device)
        first.append(backbone(views(images, generator)).float())
        second.append(backbone(views(images, generator)).float())
    backbone.train(was_training)
    return torch.cat(first), torch.cat(second)


def tensorboard_tag(column: str) -> str:
    """A logged column's TensorBoard tag, grouped as TensorBoard groups tags by their prefix:
    the online probe's scores under `probe/`, the monitor's (kNN and label-free measures, on
    the validation or the test split) under `monitor/`, what the training step measures under
    `train/`."""
    if "probe_" in column:
        return "probe/" + column
    monitored = column.removeprefix("val_") in KNN_COLUMNS + LABEL_FREE_COLUMNS
    return ("monitor/" if monitored else "train/") + column


def tensorboard_listener(folder: str | Path, run: str) -> Callable[[dict], None]:
    """Writes every number of each logged row as a TensorBoard scalar at its epoch, tagged by
    `tensorboard_tag`, into an event file in `<folder>/<run>`, and says where; refused in one
    line when the tensorboard package is missing.

    The events are appended here, in the training's thread, not by tensorboard's SummaryWriter:
    its writer thread prints a traceback of a failed write (a full disk) and hands the error on
    without the file's name. Here the error names the event file, and the run stops in one line
    after the epoch it has saved."""
    try:
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.summary.writer.record_writer import RecordWriter
        from torch.utils.tensorboard import summary
    except ImportError:
        raise UserError(
            "--tensorboard needs the tensorboard package, which is not installed: "
            "pip install tensorboard (or leave out --tensorboard)"
        ) from None
    # TensorBoard reads every file of the folder named so; the random part keeps runs of one second apart
    path = (
        Path(folder)
        / run
        / (f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.{secrets.token_hex(4)}")
    )

    def append(events: list) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "ab") as handle:
                records = RecordWriter(handle)
                for event in events:
                    records.write(event.SerializeToString())
        except OSError as error:  # said by run_main as `error: <reason>: <file>`
            error.filename, error.filename2 = str(path), None
            raise

    append([Event(wall_time=time.time(), file_version="brain.Event:2")])
    say(f"[INFO] TensorBoard: {path.parent} (view with: tensorboard --logdir {folder})")

    def write(row: dict) -> None:
        now = time.time()
        append(
            [
                Event(wall_time=now, step=row["epoch"], summary=summary.scalar(tensorboard_tag(name), value))
                for name, value in logged_numbers(row).items()
            ]
        )

    return write


def logged_numbers(row: dict) -> dict[str, int | float]:
    """The numbers of a logged row but its epoch (empty kNN columns of unwatched epochs are None)."""
    return {
        name: value
        for name, value in row.items()
        if name != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool)
    }


def import_wandb() -> ModuleType:
    """The wandb package; refused in one line when it is not installed."""
    try:
        import wandb
    except ImportError:
        raise UserError(
            "--wandb needs the wandb package, which is not installed: pip install wandb (or leave out --wandb)"
        ) from None
    return wandb


@contextlib.contextmanager
def wandb_listener(project: str, run: str, configuration: dict) -> Iterator[Callable[[dict], None]]:
    """A Weights & Biases run named `run` in `project`, holding the run's full configuration (what
    its config file records), to which each logged row's numbers go at the row's epoch (W&B's
    step); finished when the training ends, marked failed (exit code 1) when it stops otherwise.

    Whether anything leaves the machine is wandb's own setting (`WANDB_MODE`, `wandb offline`,
    a login): offline, the run stays in wandb's folder (`WANDB_DIR`) for a later `wandb sync`.
    wandb does not copy the terminal (`console="off"`): the progress bars stay as they are, and
    the CSV log holds every number."""
    wandb = import_wandb()
    try:
        session = wandb.init(project=project, name=run, config=configuration, settings=wandb.Settings(console="off"))
    except wandb.errors.Error as error:
        reason = " ".join(str(error).split())
        raise UserError(
            f"--wandb {project}: W&B did not start the run: {reason} "
            "(wandb login, or WANDB_MODE=offline to keep the run on this machine)"
        ) from None
    finished = False
    try:
        yield lambda row: session.log(logged_numbers(row), step=row["epoch"])
        finished = True
    finally:
        session.finish(exit_code=0 if finished else 1)
