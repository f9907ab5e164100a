#!/usr/bin/env python
"""Stage 3: score a linear-evaluation, fine-tuning or supervised checkpoint on the test split,
and, from any backbone checkpoint, kNN accuracy, top-k retrieval, feature export and maps.

Example: python test.py --dataset cifar10 --backbone conv4 --seed 1 --knn 200 --retrieval 10 \
  --checkpoint ./checkpoint/relationnet/cifar10/relationnet_cifar10_conv4_seed_1_epoch_100_linear_evaluation.tar
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from utils.threads import configure_threads

configure_threads()  # before torch loads OpenMP, which reads its variables only then

from utils.runtime import tune_allocator  # noqa: E402

tune_allocator()

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from backbones import build_backbone  # noqa: E402
from backbones.features import extract_features  # noqa: E402
from datasets import load_dataset  # noqa: E402
from engine.checkpoint import append_csv_row, check_backbone, read_checkpoint  # noqa: E402
from evaluation.linear import score_logits  # noqa: E402
from evaluation.neighbours import knn_accuracy, nearest_neighbours, retrieval_precision  # noqa: E402
from experiments.cli import apply_gpu_flag, stage3_parser  # noqa: E402
from experiments.stage import describe_backbone, run_main  # noqa: E402
from utils.errors import UserError  # noqa: E402
from utils.runtime import resolve_device  # noqa: E402
from utils.seeds import resolve_seed, seed_everything  # noqa: E402

COLUMNS = ["time", "dataset", "seed", "accuracy", "top5", "loss", "images", "seconds", "checkpoint",
           "knn_k", "knn_accuracy", "knn_top5", "retrieval_k", "retrieval_precision"]


def stage1_method_by_keys(state: dict) -> str:
    """Name the method of a checkpoint of the original code from its keys (section 9)."""
    for key, method in (("relation", "relationnet"), ("head", "simclr"), ("loss_fn", "deepinfomax"),
                        ("classifier", "rotationnet or deepcluster")):
        if key in state:
            return method
    return "randomweights"


def check_output_folder(path: str | None) -> None:
    if path and Path(path).exists() and not Path(path).is_dir():
        raise UserError(f"--export_features {path} is a file: pass a folder (it is created when missing)")


def main(argv: list[str] | None = None) -> None:
    args = stage3_parser().parse_args(argv)
    apply_gpu_flag(args)
    device = resolve_device(args.device)
    state = read_checkpoint(args.checkpoint)
    linear = "optimizer_lineval" in state  # every stage-2 file and stage-1 standard file has it
    backbone_only = args.knn or args.retrieval or args.export_features or args.feature_map != "none"
    if not linear and not backbone_only:
        kind = state.get("method") or stage1_method_by_keys(state)
        raise UserError(f"{args.checkpoint} is a stage-1 {kind} checkpoint without a trained linear "
                        "classifier: run train_linear_evaluation.py on it and test the file that writes, "
                        "or score its backbone with --knn K or --retrieval K")
    stem = check_backbone(state, args.backbone, args.checkpoint, args.stem)
    check_output_folder(args.export_features)
    if args.feature_map != "none":
        from experiments.plots import require_matplotlib
        require_matplotlib()
    seed = resolve_seed(args.seed)
    seed_everything(seed)
    download = not args.no_download
    test = load_dataset(args.dataset, "test", args.data_root, download=download, image_size=args.image_size)
    if linear and state["classifier"]["weight"].shape[0] != test.num_classes:
        raise UserError(f"the classifier in {args.checkpoint} has {state['classifier']['weight'].shape[0]} "
                        f"classes but {args.dataset} has {test.num_classes}: pass the --dataset it was trained on")
    if args.retrieval >= len(test):
        raise UserError(f"--retrieval {args.retrieval}: the {args.dataset} test split has only {len(test)} "
                        "images to retrieve from")
    train = None
    if args.knn or args.export_features:
        train = load_dataset(args.dataset, "train", args.data_root, download=download, image_size=args.image_size)
        if args.knn and bool((train.labels < 0).any()):
            raise UserError(f"--knn needs labelled training images, and the {args.dataset} training split has none")
        if args.knn > len(train):
            raise UserError(f"--knn {args.knn}: the {args.dataset} training split has only {len(train)} images")

    backbone = build_backbone(args.backbone, stem)
    describe_backbone(args.backbone, backbone, device, stem)
    print("[INFO] Loading checkpoint...")
    backbone.load_state_dict(state["backbone"])
    backbone.to(device)
    print("[INFO] Loading checkpoint: done!")
    print("Testing...")
    start = time.time()
    test_features = extract_features(backbone, test, device, args.data_size, desc="Test")
    test_labels = test.labels.to(device)
    result = {"images": len(test)}
    if linear:
        classifier = nn.Linear(backbone.feature_size, test.num_classes)
        classifier.load_state_dict(state["classifier"])
        with torch.no_grad():
            result.update(score_logits(classifier.to(device).eval()(test_features), test_labels))
    if train is not None:
        train_features = extract_features(backbone, train, device, args.data_size, desc="Train features")
    if args.knn:
        result.update(knn_k=args.knn, **knn_accuracy(train_features, train.labels.to(device), test_features,
                                                     test_labels, args.knn, args.knn_temperature))
    checkpoint = Path(args.checkpoint)
    if args.retrieval:
        neighbours = nearest_neighbours(test_features, args.retrieval).cpu()
        result.update(retrieval_k=args.retrieval,
                      retrieval_precision=round(retrieval_precision(neighbours, test.labels), 4))
        if args.retrieval_grid:
            queries = torch.randperm(len(test), generator=torch.Generator().manual_seed(seed))
            grid = checkpoint.parent / f"{checkpoint.stem}_retrieval_top{args.retrieval}.png"
            from experiments.plots import save_retrieval_grid
            save_retrieval_grid(test.images, test.labels, queries[:args.retrieval_grid], neighbours, grid)
            print(f"[INFO] Retrieval grid (query, then its neighbours; green = same class): {grid}")
    result["seconds"] = round(time.time() - start, 3)
    if args.export_features:
        export_features(Path(args.export_features), args, test_features, test.labels,
                        train_features if train is not None else None, train)
    if args.feature_map != "none":
        draw_feature_map(args, seed, test_features.cpu(), test.labels, checkpoint)

    log = checkpoint.parent / f"log_{checkpoint.stem}_test.csv"
    append_csv_row(log, COLUMNS, {**result, "time": time.strftime("%Y-%m-%d %H:%M:%S"),
                                  "dataset": args.dataset, "seed": args.seed, "checkpoint": str(checkpoint)})
    report(args, result)
    print(f"[INFO] Result appended to {log}")


def export_features(folder: Path, args, test_features, test_labels, train_features, train) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {"test_features": test_features, "test_labels": test_labels,
              "train_features": train_features, "train_labels": None if train is None else train.labels}
    for name, tensor in arrays.items():
        np.save(folder / f"{name}.npy", tensor.cpu().numpy())
    (folder / "features.json").write_text(json.dumps(
        {"checkpoint": str(args.checkpoint), "backbone": args.backbone, "dataset": args.dataset,
         "features": "frozen backbone in eval mode, un-augmented normalised images",
         "shapes": {name: list(tensor.shape) for name, tensor in arrays.items()}}, indent=2) + "\n")
    print(f"[INFO] Features saved in {folder} (train_features.npy, train_labels.npy, test_*.npy)")


def draw_feature_map(args, seed: int, features: torch.Tensor, labels: torch.Tensor, checkpoint: Path) -> None:
    from evaluation.embedding import pca_2d, tsne_2d
    from experiments.plots import plot_feature_map
    chosen = torch.randperm(len(features), generator=torch.Generator().manual_seed(seed))[:args.map_points]
    chosen = chosen.sort().values
    points = tsne_2d(features[chosen], seed) if args.feature_map == "tsne" else pca_2d(features[chosen])
    output = checkpoint.parent / f"{checkpoint.stem}_test_{args.feature_map}.png"
    plot_feature_map(points, labels[chosen], output,
                     f"{args.feature_map.upper()} of {len(chosen)} {args.dataset} test features: {checkpoint.name}")
    print(f"[INFO] Feature map: {output}")


def report(args, result: dict) -> None:
    print("===========================")
    print(f"Seed: {args.seed}")
    if "accuracy" in result:
        print(f"Test loss: {result['loss']:.4f}")
        print(f"Test top-5 accuracy: {result['top5']:.2f}%")
        print(f"Test accuracy: {result['accuracy']:.2f}%")
    if "knn_accuracy" in result:
        print(f"kNN accuracy (k {args.knn}, cosine, weighted): {result['knn_accuracy']:.2f}% "
              f"(top-5 {result['knn_top5']:.2f}%)")
    if "retrieval_precision" in result:
        print(f"Top-{args.retrieval} retrieval precision: {result['retrieval_precision']:.2f}%")
    print("===========================")


if __name__ == "__main__":
    run_main(main)
