"""The validation split: labelled training images held out of every training use, so that
epochs and settings can be chosen without reading the test split.

Stage 1 (`--val_images N`) draws N class-balanced images of the labelled training split of
its data set from the run's seed, trains on none of them (pretraining, the online probe),
scores its monitor and probe on them, and records their positions in that split in its
checkpoints (`VALIDATION_KEY`). Stage 2 holds the same images out of the classifier's training
by default and logs the classifier's accuracy on them every epoch; another choice is refused
unless `--new_val_split` asks for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import nn

from backbones import Backbone
from backbones.features import extract_features
from datasets import ImageSet, load_dataset
from evaluation.linear import evaluate, score_logits
from evaluation.probe import OnlineProbe, ProbeSettings
from utils.checkpoint_fields import field_error
from utils.console import say
from utils.errors import UserError
from utils.seeds import SeedPurpose, derived_seed

# The checkpoint key of the held-out images: their positions in the labelled training split.
VALIDATION_KEY = "validation_indices"


def held_out_positions(train: ImageSet, images: int, seed: int) -> torch.Tensor:
    """The sorted positions in `train` of `images` class-balanced labelled images drawn from
    `seed` (a stream of its own, so the other draws of the run do not move)."""
    labelled = int((train.labels >= 0).sum())
    if images >= labelled:
        raise UserError(
            f"--val_images {images}: the {train.name} {train.split} split has {labelled} labelled "
            "images, and some must be left to train on: lower it"
        )
    return train.balanced_indices(images, derived_seed(seed, 0, SeedPurpose.VALIDATION))


def without(data: ImageSet, indices: torch.Tensor) -> ImageSet:
    """`data` less the images at `indices`, in their order."""
    keep = torch.ones(len(data), dtype=torch.bool)
    keep[indices] = False
    return data.subset(keep)


def stage1_validation(
    args, data: ImageSet, split: str, seed: int
) -> tuple[ImageSet, ImageSet | None, torch.Tensor | None]:
    """(the pretraining images, the validation split or None, the held-out positions in the
    labelled training split or None) of a stage-1 run of `seed` whose pretraining split `split`
    gave `data`. A pretraining split other than the labelled one (STL-10's unlabeled) keeps all
    its images: the validation images come from the labelled split, which it does not hold."""
    if not args.val_images:
        return data, None, None
    labelled = data if split == "train" else load_split(args, "train")
    if not bool((labelled.labels >= 0).any()):
        raise UserError(
            f"--val_images {args.val_images}: the {args.dataset} training split has no labels to "
            "validate on; drop --val_images (the label-free measures of --eval_every need none)"
        )
    indices = held_out_positions(labelled, args.val_images, seed)
    validation = labelled.subset(indices)
    say(
        f"[INFO] Validation split: {len(validation)} labelled {args.dataset} training images held out "
        "of every training use (pretraining, the online probe, stage 2's classifier)"
    )
    return (without(data, indices) if split == "train" else data), validation, indices


def untrained_validation(args, seed: int) -> dict:
    """The checkpoint entry of the images a stage-1 method that does not train holds out (none
    of it, but stage 2 holds them out as of any stage-1 file); `--online_probe` has nothing to
    probe there and is refused."""
    if args.online_probe:
        raise UserError(f"--online_probe: {args.method} does not train, so there is nothing to probe; drop it")
    if not args.val_images:
        return {}
    _, _, held_out = stage1_validation(args, load_split(args, "train"), "train", seed)
    return {VALIDATION_KEY: held_out}


def load_split(args, split: str) -> ImageSet:
    return load_dataset(args.dataset, split, args.data_root, download=not args.no_download, image_size=args.image_size)


def recorded_indices(state: dict, size: int, path: str | Path) -> torch.Tensor | None:
    """The held-out positions a stage-1 checkpoint records, checked to be distinct positions of
    a split of `size` images (nothing read from a file is trusted); None when it records none."""
    if VALIDATION_KEY not in state:
        return None
    value = state[VALIDATION_KEY]
    if (
        not isinstance(value, torch.Tensor)
        or value.dtype != torch.int64
        or value.dim() != 1
        or len(value) == 0
        or len(value) >= size
    ):
        raise field_error(path, VALIDATION_KEY, f"is not a list of positions in a split of {size} images")
    if int(value.min()) < 0 or int(value.max()) >= size or len(torch.unique(value)) != len(value):
        raise field_error(path, VALIDATION_KEY, f"holds positions outside a split of {size} images, or repeats one")
    return value


def stage2_validation(
    args, state: dict, source_dataset: str | None, train: ImageSet, seed: int
) -> tuple[ImageSet, ImageSet | None, torch.Tensor | None]:
    """(the images stage 2 may train on, the validation split or None, its positions in `train`
    or None). By default the stage-1 checkpoint's held-out images when it records them for this
    data set; `--val_images N` with another N is refused unless `--new_val_split` asks to draw a
    new split from `seed` (N 0: none)."""
    recorded = None
    if source_dataset == args.dataset:
        recorded = recorded_indices(state, len(train), args.checkpoint)
    elif VALIDATION_KEY in state:
        say(f"[INFO] The stage-1 validation split belongs to {source_dataset}; it does not apply to {args.dataset}")
    if args.new_val_split and args.val_images is None:
        raise UserError("--new_val_split draws a new validation split: say its size with --val_images N (0 = none)")
    if recorded is not None and not args.new_val_split:
        if args.val_images is not None and args.val_images != len(recorded):
            raise UserError(
                f"--val_images {args.val_images}: the stage-1 checkpoint held out {len(recorded)} training "
                "images, which it never trained on; drop --val_images to use them, or add --new_val_split "
                "to draw another split (its images may have been trained on in stage 1)"
            )
        indices = recorded
        say(f"[INFO] Validation split: the {len(indices)} training images the stage-1 checkpoint held out")
    elif args.val_images:
        indices = held_out_positions(train, args.val_images, seed)
        say(f"[INFO] Validation split: {len(indices)} labelled training images drawn with seed {seed}")
    else:
        return train, None, None
    return without(train, indices), train.subset(indices), indices


def online_probe(
    args, data: ImageSet, validation: ImageSet | None, feature_size: int, device, seed: int
) -> OnlineProbe | None:
    """Stage 1's online probe (`--online_probe`), scored on the validation split, else on a
    class-balanced subset of at most `--eval_images` test images; None without the flag."""
    if not args.online_probe:
        return None
    if not bool((data.labels >= 0).any()):
        raise UserError(
            f"--online_probe trains on the labels of the training images, and the {args.dataset} "
            f"{data.split} images have none: drop --online_probe (--eval_every's label-free measures need none)"
        )
    if validation is None:
        evaluation = load_split(args, "test")
        if bool((evaluation.labels < 0).any()):
            raise UserError(
                f"--online_probe: the {args.dataset} test split has unlabelled images to score on: "
                "add --val_images N to score on held-out training images"
            )
        evaluation, split = evaluation.balanced_subset(args.eval_images, seed), "test"
    else:
        evaluation, split = validation, "val"
    settings = ProbeSettings(
        lr=args.probe_lr, weight_decay=args.probe_weight_decay, warmup_epochs=args.probe_warmup_epochs
    )
    say(
        f"[INFO] Online linear probe: lr {settings.lr:g}, weight decay {settings.weight_decay:g}, momentum "
        f"{settings.momentum:g}, {settings.warmup_epochs} warm-up epochs; scored on {len(evaluation)} "
        + ("held-out training images" if split == "val" else "test images (for monitoring only, not for selecting)")
    )
    return OnlineProbe(feature_size, data.num_classes, settings, seed, evaluation, split, device)


def validation_features(
    backbone: Backbone, validation: ImageSet | None, device, checkpoint
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The frozen backbone's features and the labels of the validation split (None without one)."""
    if validation is None:
        return None
    features = extract_features(backbone, validation, device, desc="Validation features", checkpoint=checkpoint)
    return features, validation.labels.to(device)


@torch.no_grad()
def validation_scores(classifier: nn.Linear, validation: tuple[torch.Tensor, torch.Tensor] | None) -> dict:
    """The log columns `val_accuracy` and `val_loss` of `classifier` on the validation split's
    features and labels; none without a validation split."""
    if validation is None:
        return {}
    classifier.eval()
    result = score_logits(classifier(validation[0]), validation[1])
    return {"val_accuracy": result["accuracy"], "val_loss": result["loss"]}


def finetuning_monitor(classifier: nn.Linear, validation: ImageSet, device) -> Callable[[Backbone], dict]:
    """The fine-tuning engine's monitor: the accuracy and loss of the backbone and `classifier`
    on the validation split, every epoch."""

    def score(backbone: Backbone) -> dict:
        result = evaluate(backbone, classifier, validation, device)
        return {"val_accuracy": result["accuracy"], "val_loss": result["loss"]}

    return score
