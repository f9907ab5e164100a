"""What stage 1 reports besides its loss while it trains: a kNN accuracy of the backbone every
few epochs (`--eval_every`), and copies of every logged quantity for TensorBoard
(`--tensorboard`) and Weights & Biases (`--wandb`).

They reach the engine as plain callables (its `monitor` and `row_listeners`), so the engine
does not depend on evaluation, TensorBoard or W&B.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import time
from pathlib import Path
from types import ModuleType
from typing import Callable, Iterator

import torch

from backbones import Backbone
from backbones.features import extract_features
from datasets import load_dataset
from evaluation.neighbours import knn_accuracy
from utils.console import say
from utils.errors import UserError

KNN_COLUMNS = ("knn_accuracy", "knn_top5")
KNN_NEIGHBOURS = 200


def knn_monitor(
    dataset: str,
    data_root: str,
    download: bool,
    image_size: int,
    images: int,
    seed: int,
    device: torch.device,
    normalised: bool,
) -> Callable[[Backbone], dict]:
    """Scores a backbone by the weighted kNN accuracy (k 200, knn_accuracy's temperature 0.07, as
    `test.py --knn`) of the
    labelled test split against the labelled training split of `dataset`, each a seeded,
    class-balanced subset of at most `images` images (0 = all), read once here, `normalised` or
    in [0, 1] as the method trains its backbone (`Method.normalises_inputs`)."""
    train = load_dataset(dataset, "train", data_root, download=download, image_size=image_size)
    test = load_dataset(dataset, "test", data_root, download=download, image_size=image_size)
    if bool((train.labels < 0).any()) or bool((test.labels < 0).any()):
        raise UserError(
            f"--eval_every needs labelled train and test images, and {dataset} has unlabelled ones: drop --eval_every"
        )
    train = train.balanced_subset(images, seed).as_inputs(normalised)
    test = test.balanced_subset(images, seed).as_inputs(normalised)
    neighbours = min(KNN_NEIGHBOURS, len(train))
    train_labels, test_labels = train.labels.to(device), test.labels.to(device)
    say(f"[INFO] kNN monitor: {len(train)} training and {len(test)} test images of {dataset}, k {neighbours}")

    def score(backbone: Backbone) -> dict:
        train_features = extract_features(backbone, train, device, desc="kNN train features")
        test_features = extract_features(backbone, test, device, desc="kNN test features")
        return knn_accuracy(train_features, train_labels, test_features, test_labels, neighbours)

    return score


def tensorboard_tag(column: str) -> str:
    """A logged column's TensorBoard tag, grouped as TensorBoard groups tags by their prefix:
    the kNN monitor's scores under `monitor/`, what the training step measures under `train/`."""
    return ("monitor/" if column in KNN_COLUMNS else "train/") + column


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
