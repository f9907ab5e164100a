"""What stage 1 reports besides its loss while it trains: every few epochs (`--eval_every`) a
kNN accuracy of the backbone and the label-free measures of its embedding (RankMe, alignment,
uniformity) on the validation split, or else on the test split (for monitoring only), and a
TensorBoard copy of every logged quantity (`--tensorboard`).

Both reach the engine as plain callables (its `monitor` and `row_listeners`), so the engine
does not depend on evaluation or on TensorBoard.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

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
    validation: ImageSet | None = None,
    held_out: torch.Tensor | None = None,
) -> Monitor:
    """Scores a backbone on a seeded, class-balanced subset of at most `images` images (0 =
    all) of the `validation` split (columns `val_*`), else of the test split (its note says so):
    the weighted kNN accuracy (k 200, knn_accuracy's temperature 0.07, as `test.py --knn`)
    against such a subset of the labelled training split less the `held_out` positions, and
    the label-free measures (`label_free_scores`). Training images without labels are scored
    by the label-free measures alone, on a subset of themselves. The images are read once here."""
    train = load_dataset(dataset, "train", data_root, download=download, image_size=image_size)
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
        test = load_dataset(dataset, "test", data_root, download=download, image_size=image_size)
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


def tensorboard_listener(folder: str | Path, run: str) -> Callable[[dict], None]:
    """Writes every number of each logged row as a TensorBoard scalar at its epoch, into an event
    file in `<folder>/<run>`; refused in one line when the tensorboard package is missing.

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

    def write(row: dict) -> None:
        now = time.time()
        append(
            [
                Event(wall_time=now, step=row["epoch"], summary=summary.scalar(name, value))
                for name, value in row.items()
                if name != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool)
            ]
        )

    return write
