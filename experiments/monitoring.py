"""What stage 1 reports besides its loss while it trains: a kNN accuracy of the backbone every
few epochs (`--eval_every`), and a TensorBoard copy of every logged quantity (`--tensorboard`).

Both reach the engine as plain callables (its `monitor` and `row_listeners`), so the engine
does not depend on evaluation or on TensorBoard.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import nn

from backbones.features import extract_features
from datasets import load_dataset
from evaluation.neighbours import knn_accuracy
from utils.errors import UserError

KNN_COLUMNS = ("knn_accuracy", "knn_top5")
KNN_NEIGHBOURS = 200


def knn_monitor(dataset: str, data_root: str, download: bool, image_size: int, images: int, seed: int,
                device: torch.device) -> Callable[[nn.Module], dict]:
    """Scores a backbone by the weighted kNN accuracy (k 200, knn_accuracy's temperature 0.07, as
    `test.py --knn`) of the
    labelled test split against the labelled training split of `dataset`, each a seeded,
    class-balanced subset of at most `images` images (0 = all), read once here."""
    train = load_dataset(dataset, "train", data_root, download=download, image_size=image_size)
    test = load_dataset(dataset, "test", data_root, download=download, image_size=image_size)
    if bool((train.labels < 0).any()) or bool((test.labels < 0).any()):
        raise UserError(f"--eval_every needs labelled train and test images, and {dataset} has unlabelled ones: "
                        "drop --eval_every")
    train, test = train.balanced_subset(images, seed), test.balanced_subset(images, seed)
    neighbours = min(KNN_NEIGHBOURS, len(train))
    train_labels, test_labels = train.labels.to(device), test.labels.to(device)
    print(f"[INFO] kNN monitor: {len(train)} training and {len(test)} test images of {dataset}, k {neighbours}")

    def score(backbone: nn.Module) -> dict:
        train_features = extract_features(backbone, train, device, desc="kNN train features")
        test_features = extract_features(backbone, test, device, desc="kNN test features")
        return knn_accuracy(train_features, train_labels, test_features, test_labels, neighbours)
    return score


def tensorboard_listener(folder: str | Path, run: str) -> Callable[[dict], None]:
    """Writes every number of each logged row as a TensorBoard scalar at its epoch, in
    `<folder>/<run>`; refused in one line when the tensorboard package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError("--tensorboard needs the tensorboard package, which is not installed: "
                        "pip install tensorboard (or leave out --tensorboard)") from None
    writer = SummaryWriter(log_dir=str(Path(folder) / run))

    def write(row: dict) -> None:
        for name, value in row.items():
            if name != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
                writer.add_scalar(name, value, row["epoch"])
        writer.flush()
    return write
