"""Stage 3, run by test.py: score a stage-2 or supervised checkpoint on the test split, and any
backbone by kNN accuracy, top-k retrieval, feature export and maps."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from backbones import check_image_side
from backbones.features import extract_features
from datasets import DATASETS, ImageSet, image_side, load_dataset
from engine.checkpoint import check_backbone, read_checkpoint, stage1_method_by_keys
from engine.csv_log import append_csv_row
from evaluation.linear import score_logits
from evaluation.neighbours import knn_accuracy, nearest_neighbours, retrieval_precision
from experiments.arguments import RunArguments, freeze
from experiments.cli import apply_gpu_flag
from experiments.evaluation_cli import stage3_parser
from experiments.linear_evaluation import EVALUATION_KINDS
from experiments.stage import run_seed, stage_backbone
from utils.atomic import MAX_NAME_BYTES, temporary_path
from utils.checkpoint_fields import check_module_entry
from utils.console import say
from utils.errors import UserError
from utils.runtime import resolve_device
from utils.seeds import seed_everything

COLUMNS = [
    "time",
    "dataset",
    "seed",
    "accuracy",
    "top5",
    "loss",
    "images",
    "seconds",
    "checkpoint",
    "knn_k",
    "knn_accuracy",
    "knn_top5",
    "retrieval_k",
    "retrieval_precision",
]


def refuse_other_domain(state: dict, args: RunArguments, linear: bool, side: int) -> None:
    """A classifier scored on another data set's classes (CIFAR-10's on STL-10: ten classes
    both) or a backbone fed images of another size gives a number that looks valid; refuse
    both unless --cross_domain asks for it. Checkpoints that do not record their data set
    (the original code's) are not refused."""
    trained_on = state.get("dataset")
    if trained_on is None:
        return
    if linear and trained_on != args.dataset:
        raise UserError(
            f"the classifier in {args.checkpoint} was trained on {trained_on}, not {args.dataset}: "
            f"pass --dataset {trained_on}, or --cross_domain to score it on {args.dataset} anyway"
        )
    stored = state.get("args") if isinstance(state.get("args"), dict) else {}
    trained_side = image_side(trained_on, stored.get("image_size", 0)) if trained_on in DATASETS else None
    if trained_side is not None and trained_side != side:
        raise UserError(
            f"{args.checkpoint} was trained on {trained_side}x{trained_side} {trained_on} images, "
            f"these are {side}x{side}: pass --cross_domain to score it on them anyway"
        )


def output_names(args: argparse.Namespace) -> dict[str, str]:
    """The files this test writes, named after its checkpoint: the log, and the retrieval grid
    and the feature map when asked for."""
    stem = Path(args.checkpoint).stem
    names = {"log": f"log_{stem}_test.csv"}
    if args.retrieval and args.retrieval_grid:
        names["retrieval_grid"] = f"{stem}_retrieval_top{args.retrieval}.png"
    if args.feature_map != "none":
        names["feature_map"] = f"{stem}_test_{args.feature_map}.png"
    return names


def check_output_names(checkpoint: str, names: dict[str, str]) -> None:
    """A name over the file system's limit would fail only once the test has run ('File name
    too long'); refuse the checkpoint's name first. Each file may be written through a longer
    temporary name, which is what must fit."""
    longest = max(len(os.fsencode(temporary_path(Path(name)).name)) for name in names.values())
    if longest > MAX_NAME_BYTES:
        allowed = len(os.fsencode(Path(checkpoint).stem)) - (longest - MAX_NAME_BYTES)
        raise UserError(
            f"--checkpoint {checkpoint}: its name is too long for the files named after it ({longest} "
            f"bytes, over the file system's {MAX_NAME_BYTES}); rename the checkpoint so that its name "
            f"without the extension has at most {allowed} bytes (--log_dir changes the folder, not the "
            "names)"
        )


def check_output_folder(flag: str, path: str | None) -> None:
    if path and Path(path).exists() and not Path(path).is_dir():
        raise UserError(f"{flag} {path} is a file: pass a folder (it is created when missing)")


def main(argv: list[str] | None = None) -> None:
    parsed = stage3_parser().parse_args(argv)
    names = output_names(parsed)
    check_output_names(parsed.checkpoint, names)
    apply_gpu_flag(parsed)
    device = resolve_device(parsed.device)
    state = read_checkpoint(parsed.checkpoint)
    linear = holds_linear_classifier(state)
    stem = check_request(parsed, state, linear)
    args = freeze(parsed, seed=run_seed(parsed))  # frozen from here on, with the seed used
    seed = args.seed
    seed_everything(seed)
    test = test_split(args, state, linear, stem)
    train = training_split(args) if args.knn or args.export_features else None
    backbone = stage_backbone(args.backbone, stem, device, state["backbone"])
    classifier = stored_classifier(args, state, backbone.feature_size, test.num_classes) if linear else None
    backbone.to(device)
    say("[INFO] Loading checkpoint: done!")
    say("Testing...")
    start = time.time()
    checkpoint = Path(args.checkpoint)
    test_features = extract_features(backbone, test, device, args.data_size, desc="Test", checkpoint=checkpoint)
    train_features = None
    if train is not None:
        train_features = extract_features(
            backbone, train, device, args.data_size, desc="Train features", checkpoint=checkpoint
        )
    result, neighbours = scores(args, classifier, test, test_features, train, train_features, device)
    result["seconds"] = round(time.time() - start, 3)
    report(args, result)  # first: a folder that cannot be written loses no result
    outputs = Path(args.log_dir) if args.log_dir else checkpoint.parent
    if args.retrieval and args.retrieval_grid:
        draw_retrieval_grid(args, seed, test, neighbours, outputs / names["retrieval_grid"])
    if args.export_features:
        export_features(Path(args.export_features), args, test_features, test.labels, train_features, train)
    if args.feature_map != "none":
        draw_feature_map(args, seed, test_features.cpu(), test.labels, checkpoint, outputs / names["feature_map"])
    log_result(
        outputs / names["log"],
        {
            **result,
            "time": time.strftime("%Y-%m-%d %H:%M:%S"),
            "dataset": args.dataset,
            "seed": args.seed,
            "checkpoint": str(checkpoint),
        },
    )


def holds_linear_classifier(state: dict) -> bool:
    """Whether the checkpoint holds a trained linear classifier: a stage-2 file says so by its
    `kind`; a file without one (a supervised stage-1 run's, or a stage-2 file written before
    files recorded it) has one when it holds the optimizer that trained a classifier."""
    if "kind" in state:
        return state["kind"] in EVALUATION_KINDS
    return "optimizer_lineval" in state


def check_request(args: argparse.Namespace, state: dict, linear: bool) -> str | None:
    """Refuse what the checkpoint cannot give (a score without a classifier, another backbone)
    and output folders that are files, before any data are read; returns the backbone's stem."""
    backbone_only = args.knn or args.retrieval or args.export_features or args.feature_map != "none"
    if not linear and not backbone_only:
        kind = state.get("method") or stage1_method_by_keys(state)
        raise UserError(
            f"{args.checkpoint} is a stage-1 {kind} checkpoint without a trained linear "
            "classifier: run train_linear_evaluation.py on it and test the file that writes, "
            "or score its backbone with --knn K or --retrieval K"
        )
    stem = check_backbone(state, args.backbone, args.checkpoint, args.stem)
    check_output_folder("--export_features", args.export_features)
    check_output_folder("--log_dir", args.log_dir)
    if args.feature_map != "none":
        from experiments.plots import require_matplotlib

        require_matplotlib()
    return stem


def test_split(args: RunArguments, state: dict, linear: bool, stem: str | None) -> ImageSet:
    """The test split, refused when the checkpoint's classifier or backbone does not fit it."""
    test = load_dataset(args.dataset, "test", args.data_root, download=not args.no_download, image_size=args.image_size)
    weight = state.get("classifier", {}).get("weight")
    if linear and isinstance(weight, torch.Tensor) and weight.dim() == 2 and len(weight) != test.num_classes:
        raise UserError(
            f"the classifier in {args.checkpoint} has {len(weight)} classes but {args.dataset} has "
            f"{test.num_classes}: pass the --dataset it was trained on"
        )
    if not args.cross_domain:
        refuse_other_domain(state, args, linear, test.side)
    check_image_side(args.backbone, stem, test.side)
    if args.retrieval >= len(test):
        raise UserError(
            f"--retrieval {args.retrieval}: the {args.dataset} test split has only {len(test)} images to retrieve from"
        )
    return test


def training_split(args: RunArguments) -> ImageSet:
    """The training split, for kNN accuracy (labelled, at least --knn images) and export."""
    train = load_dataset(
        args.dataset, "train", args.data_root, download=not args.no_download, image_size=args.image_size
    )
    if args.knn and bool((train.labels < 0).any()):
        raise UserError(f"--knn needs labelled training images, and the {args.dataset} training split has none")
    if args.knn > len(train):
        raise UserError(f"--knn {args.knn}: the {args.dataset} training split has only {len(train)} images")
    return train


def stored_classifier(args: RunArguments, state: dict, feature_size: int, num_classes: int) -> nn.Linear:
    """The linear classifier of the checkpoint, checked against the layer it must fit."""
    classifier = nn.Linear(feature_size, num_classes)
    check_module_entry(state.get("classifier"), classifier, args.checkpoint, "classifier")
    classifier.load_state_dict(state["classifier"])
    return classifier


def scores(
    args: RunArguments, classifier: nn.Linear | None, test: ImageSet, test_features, train, train_features, device
) -> tuple[dict, torch.Tensor | None]:
    """The numbers asked for: the classifier's accuracy and loss, kNN accuracy, retrieval
    precision; and the retrieved neighbours of each test image, when retrieval is asked."""
    test_labels = test.labels.to(device)
    result = {"images": len(test)}
    if classifier is not None:
        with torch.no_grad():
            result.update(score_logits(classifier.to(device).eval()(test_features), test_labels))
    if args.knn:
        result.update(
            knn_k=args.knn,
            **knn_accuracy(
                train_features, train.labels.to(device), test_features, test_labels, args.knn, args.knn_temperature
            ),
        )
    neighbours = None
    if args.retrieval:
        neighbours = nearest_neighbours(test_features, args.retrieval).cpu()
        result.update(
            retrieval_k=args.retrieval, retrieval_precision=round(retrieval_precision(neighbours, test.labels), 4)
        )
    return result, neighbours


def draw_retrieval_grid(args: RunArguments, seed: int, test: ImageSet, neighbours: torch.Tensor, grid: Path) -> None:
    from experiments.plots import save_retrieval_grid

    queries = torch.randperm(len(test), generator=torch.Generator().manual_seed(seed))
    save_retrieval_grid(test.images, test.labels, queries[: args.retrieval_grid], neighbours, grid)
    say(f"[INFO] Retrieval grid (query, then its neighbours; green = same class): {grid}")


def log_result(log: Path, row: dict) -> None:
    """Append the result to the stage's log; a log that cannot be written is one line and exit
    status 1 (the result is printed, but a script that reads the log must see the failure)."""
    try:
        append_csv_row(log, COLUMNS, row)
    except OSError as error:
        failure = UserError(
            f"could not write the log {log} ({error.strerror or error}): the result above is "
            "not recorded; pass --log_dir DIR to write the log elsewhere"
        )
        failure.exit_status = 1
        raise failure from None
    say(f"[INFO] Result appended to {log}")


def export_features(folder: Path, args: RunArguments, test_features, test_labels, train_features, train) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "test_features": test_features,
        "test_labels": test_labels,
        "train_features": train_features,
        "train_labels": None if train is None else train.labels,
    }
    for name, tensor in arrays.items():
        np.save(folder / f"{name}.npy", tensor.cpu().numpy())
    (folder / "features.json").write_text(
        json.dumps(
            {
                "checkpoint": str(args.checkpoint),
                "backbone": args.backbone,
                "dataset": args.dataset,
                "features": "frozen backbone in eval mode, un-augmented normalised images",
                "shapes": {name: list(tensor.shape) for name, tensor in arrays.items()},
            },
            indent=2,
        )
        + "\n"
    )
    say(f"[INFO] Features saved in {folder} (train_features.npy, train_labels.npy, test_*.npy)")


def draw_feature_map(
    args: RunArguments, seed: int, features: torch.Tensor, labels: torch.Tensor, checkpoint: Path, output: Path
) -> None:
    from datasets import class_names
    from evaluation.embedding import principal_components, tsne_2d
    from experiments.plots import plot_feature_map

    chosen = torch.randperm(len(features), generator=torch.Generator().manual_seed(seed))[: args.map_points]
    chosen = chosen.sort().values
    if args.feature_map == "tsne":
        points, axis_labels = tsne_2d(features[chosen], seed), ("t-SNE 1", "t-SNE 2")
    else:
        points, shares = principal_components(features[chosen])
        axis_labels = tuple(f"PC {i + 1} ({share * 100:.1f}% of the variance)" for i, share in enumerate(shares))
    name = "t-SNE" if args.feature_map == "tsne" else "PCA"
    plot_feature_map(
        points,
        labels[chosen],
        output,
        f"{name} of {len(chosen)} {args.dataset} test features: {checkpoint.name}",
        class_names(args.dataset, args.data_root, int(labels.max()) + 1),
        axis_labels,
    )
    say(f"[INFO] Feature map: {output}")


def report(args: RunArguments, result: dict) -> None:
    say("===========================")
    say(f"Seed: {args.seed}")
    if "accuracy" in result:
        say(f"Test loss: {result['loss']:.4f}")
        say(f"Test top-5 accuracy: {result['top5']:.2f}%")
        say(f"Test accuracy: {result['accuracy']:.2f}%")
    if "knn_accuracy" in result:
        say(
            f"kNN accuracy (k {args.knn}, cosine, weighted): {result['knn_accuracy']:.2f}% "
            f"(top-5 {result['knn_top5']:.2f}%)"
        )
    if "retrieval_precision" in result:
        say(f"Top-{args.retrieval} retrieval precision: {result['retrieval_precision']:.2f}%")
    say("===========================")
