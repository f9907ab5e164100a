#!/usr/bin/env python
"""Stage 3: score a linear-evaluation, fine-tuning or supervised checkpoint on the test split.

Example: python test.py --dataset cifar10 --backbone conv4 --seed 1 --checkpoint \
  ./checkpoint/relationnet/cifar10/relationnet_cifar10_conv4_seed_1_epoch_100_linear_evaluation.tar
"""
from __future__ import annotations

import time
from pathlib import Path

from utils.runtime import tune_allocator

tune_allocator()

from torch import nn  # noqa: E402

from backbones import build_backbone  # noqa: E402
from datasets import load_dataset  # noqa: E402
from utils.checkpoint import append_csv_row, check_backbone, read_checkpoint  # noqa: E402
from utils.cli import apply_gpu_flag, stage3_parser  # noqa: E402
from utils.evaluation import evaluate  # noqa: E402
from utils.runtime import UserError, resolve_device, resolve_seed, seed_everything  # noqa: E402
from utils.stage import describe_backbone, run_main  # noqa: E402

COLUMNS = ["time", "dataset", "seed", "accuracy", "top5", "loss", "images", "seconds", "checkpoint"]


def stage1_method_by_keys(state: dict) -> str:
    """Name the method of a checkpoint of the original code from its keys (section 9)."""
    for key, method in (("relation", "relationnet"), ("head", "simclr"), ("loss_fn", "deepinfomax"),
                        ("classifier", "rotationnet or deepcluster")):
        if key in state:
            return method
    return "randomweights"


def main(argv: list[str] | None = None) -> None:
    args = stage3_parser().parse_args(argv)
    apply_gpu_flag(args)
    device = resolve_device(args.device)
    state = read_checkpoint(args.checkpoint)
    if "optimizer_lineval" not in state:  # every stage-2 file and stage-1 standard file has it
        kind = state.get("method") or stage1_method_by_keys(state)
        raise UserError(f"{args.checkpoint} is a stage-1 {kind} checkpoint without a trained linear "
                        "classifier: run train_linear_evaluation.py on it and test the file that writes")
    check_backbone(state, args.backbone, args.checkpoint)
    seed_everything(resolve_seed(args.seed))
    test = load_dataset(args.dataset, "test", args.data_root, download=not args.no_download,
                        image_size=args.image_size)
    outputs = state["classifier"]["weight"].shape[0]
    if outputs != test.num_classes:
        raise UserError(f"the classifier in {args.checkpoint} has {outputs} classes but {args.dataset} "
                        f"has {test.num_classes}: pass the --dataset it was trained on")

    backbone = build_backbone(args.backbone)
    describe_backbone(args.backbone, backbone, device)
    print("[INFO] Loading checkpoint...")
    backbone.load_state_dict(state["backbone"])
    classifier = nn.Linear(backbone.feature_size, outputs)
    classifier.load_state_dict(state["classifier"])
    print("[INFO] Loading checkpoint: done!")
    print("Testing...")
    result = evaluate(backbone.to(device), classifier.to(device), test, device, batch_size=args.data_size)

    checkpoint = Path(args.checkpoint)
    log = checkpoint.parent / f"log_{checkpoint.stem}_test.csv"
    append_csv_row(log, COLUMNS, {**result, "time": time.strftime("%Y-%m-%d %H:%M:%S"),
                                  "dataset": args.dataset, "seed": args.seed, "checkpoint": str(checkpoint)})
    print("===========================")
    print(f"Seed: {args.seed}")
    print(f"Test loss: {result['loss']:.4f}")
    print(f"Test top-5 accuracy: {result['top5']:.2f}%")
    print(f"Test accuracy: {result['accuracy']:.2f}%")
    print("===========================")
    print(f"[INFO] Result appended to {log}")


if __name__ == "__main__":
    run_main(main)
