"""The flags the three stage scripts share, so that a flag means the same everywhere, and those of
stage 1 (the evaluation stages' own are in `experiments/evaluation_cli.py`).

Flag names and defaults follow the original code (docs/original-code.md); every flag is
documented in docs/stages.md.
"""

from __future__ import annotations

import argparse
import os

from experiments.flags import (
    MAX_IMAGE_SIZE,
    Parser,
    gpu_list,
    image_size,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    run_id,
    seed_value,
    wandb_project,
)

DATA_ROOT_ENV = "SSL_DATA_ROOT"


# Which numbered stage-1 checkpoints a run saves (experiments.pretraining.saves_numbered).
KEEP_CHOICES = ("fractions", "last", "all")


# The online probe's warm-up, solo-learn's (of its 1,000-epoch CIFAR schedules).
PROBE_WARMUP_EPOCHS = 10


def method_batch_defaults() -> str:
    """The methods' own mini-batch sizes in words, read from the methods (`default_batch_size`)."""
    from methods import METHODS  # imported here: building a stage-2 or 3 parser needs no method

    sizes: dict[int, list[str]] = {}
    for name, method in METHODS.items():
        sizes.setdefault(method.default_batch_size, []).append(name)
    common = max(sizes, key=lambda size: len(sizes[size]))
    others = "; ".join(f"{', '.join(names)} {size}" for size, names in sorted(sizes.items()) if size != common)
    return f"the method's: {common}" + (f"; {others}" if others else "")


def common_parser(
    description: str,
    batch_default: int | None,
    output_help: str = "output root: files go to <checkpoint_dir>/<method>/<dataset>/",
    parser_class: type[Parser] = Parser,
) -> Parser:
    from backbones import BACKBONES, CIFAR_STEM_MAX_SIDE, STEM_CHOICE, STEMS
    from datasets import DATASETS

    parser = parser_class(description=description)
    parser.add_argument(
        "--seed",
        type=seed_value,
        default=-1,
        help="random seed; -1: the seed of the checkpoint a stage 2 or 3 reads (drawn when it records none), "
        "drawn in stage 1; it names the run's files and is recorded in its config",
    )
    parser.add_argument("--dataset", default="cifar10", choices=sorted(DATASETS), help="data set of this stage")
    parser.add_argument(
        "--backbone",
        default="conv4",
        choices=list(BACKBONES),
        help="feature extractor (stages 2 and 3: the checkpoint's)",
    )
    parser.add_argument(
        "--stem",
        default="auto",
        choices=["auto", *STEMS],
        help=f"stem of {' and '.join(STEM_CHOICE)}: cifar (3x3 conv, no max-pool) or imagenet "
        f"(7x7/2 conv and max-pool); auto: stage 1 picks cifar for images up to "
        f"{CIFAR_STEM_MAX_SIDE} px and imagenet above, stages 2 and 3 the checkpoint's",
    )
    shown_default = batch_default or method_batch_defaults()
    parser.add_argument(
        "--data_size",
        type=positive_int,
        default=batch_default,
        help=f"mini-batch size in images (default {shown_default})",
    )
    # A resumed run may change where things are and what only runs the code (devices, workers).
    parser.add_argument(
        "--data_root",
        default=os.environ.get(DATA_ROOT_ENV, "./data"),
        may_change_on_resume=True,
        help=f"folder holding the data sets (default ${DATA_ROOT_ENV} or ./data)",
    )
    parser.add_argument("--checkpoint_dir", default="./checkpoint", help=output_help, may_change_on_resume=True)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N", may_change_on_resume=True)
    parser.add_argument(
        "--gpu",
        type=gpu_list,
        default=None,
        may_change_on_resume=True,
        help="value for CUDA_VISIBLE_DEVICES, as in the original scripts: GPU numbers, "
        "comma-separated (default: leave it as it is)",
    )
    parser.add_argument(
        "--num_workers",
        type=non_negative_int,
        default=0,
        may_change_on_resume=True,
        help="accepted for the original command lines; the in-memory data path "
        "needs no loader workers, so it changes nothing",
    )
    parser.add_argument(
        "--no_download", action="store_true", may_change_on_resume=True, help="never download a missing data set"
    )
    parser.add_argument(
        "--image_size",
        type=image_size,
        default=0,
        help="square side in pixels to resize the images to, at most "
        f"{MAX_IMAGE_SIZE}; only --dataset folder resizes (0 = the data set's own "
        "size, which folder images must share; default 0)",
    )
    return parser


def apply_gpu_flag(args: argparse.Namespace) -> None:
    """Like the original, restrict the visible GPUs before CUDA is first used."""
    if args.gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(args.gpu)


class Stage1Parser(Parser):
    """Refuses a flag of another method than `--method` (it would be ignored silently), then
    gives every method's flags, the batch and the learning rate their defaults, so the recorded
    arguments list them all with the values used."""

    def parse_known_args(self, args=None, namespace=None):
        from experiments.options import fill_option_defaults
        from methods import METHODS

        parsed, extras = super().parse_known_args(args, namespace)
        if parsed.data_size is None:
            parsed.data_size = METHODS[parsed.method].default_batch_size
        if parsed.lr is None:  # recorded as used, not as null
            parsed.lr = METHODS[parsed.method].default_lr
        for method in METHODS.values():
            given = fill_option_defaults(parsed, method.Config, stage=1)
            if given and method.name != parsed.method:
                self.error(
                    f"--{given[0]} belongs to --method {method.name}, not {parsed.method}: "
                    f"drop it or pass --method {method.name}"
                )
        return parsed, extras


def stage1_parser() -> Parser:
    from engine.precision import PRECISIONS
    from experiments.options import add_option_flags, stage_fields
    from methods import METHODS

    parser = common_parser(
        "Stage 1: train a backbone (self-supervised, supervised or random).", None, parser_class=Stage1Parser
    )
    parser.add_argument(
        "--method",
        default="relationnet",
        choices=list(METHODS),
        help="how the backbone is trained: a self-supervised method, standard (supervised) "
        "or randomweights (untrained)",
    )
    # A resumed run may also train longer, save more often, and change what only sets the speed
    # (and float rounding, as the device does) or is only watched (the kNN monitor, TensorBoard).
    parser.add_argument(
        "--epochs", type=positive_int, default=200, help="total epochs (default 200)", may_change_on_resume=True
    )
    parser.add_argument(
        "--epoch_start",
        type=non_negative_int,
        default=0,
        may_change_on_resume=True,
        help="first epoch when continuing from --checkpoint",
    )
    parser.add_argument(
        "--checkpoint",
        default="",
        may_change_on_resume=True,
        help="checkpoint to load before training (weights and optimizer)",
    )
    parser.add_argument(
        "--resume",
        default=None,
        metavar="PATH|auto",
        may_change_on_resume=True,
        help="continue a run exactly from a checkpoint of this suite; auto picks this run's latest",
    )
    parser.add_argument("--id", type=run_id, default="", help="tag added to the file names")
    parser.add_argument(
        "--lr", type=positive_float, default=None, help="learning rate (default: the method's, as in the paper)"
    )
    parser.add_argument(
        "--train_subset",
        type=non_negative_int,
        default=0,
        help="train on a seeded, class-balanced subset of N images (0 = all)",
    )
    parser.add_argument(
        "--save_every",
        type=non_negative_int,
        default=0,
        may_change_on_resume=True,
        help="also save a checkpoint every N epochs (0 = only those --keep names)",
    )
    parser.add_argument(
        "--keep",
        default="fractions",
        choices=KEEP_CHOICES,
        may_change_on_resume=True,
        help="numbered checkpoints saved: fractions (after 25/50/75/100%% of the epochs, as the "
        "original code; default), last (the last epoch's only) or all (every epoch); the rolling "
        "_last.tar that --resume auto reads is always kept",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        may_change_on_resume=True,
        help="replace the outputs of an earlier run with the same name",
    )
    parser.add_argument(
        "--precision",
        default="fp32",
        choices=list(PRECISIONS),
        help="arithmetic of the training step: fp32 (default), bf16 or fp16 autocast (fp16 with a gradient scaler)",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        may_change_on_resume=True,
        help="compile the backbone with torch.compile (the first steps take longer while it compiles)",
    )
    parser.add_argument(
        "--channels_last",
        action="store_true",
        may_change_on_resume=True,
        help="NHWC memory layout for the backbone (faster for ResNets with bf16)",
    )
    parser.add_argument(
        "--eval_every",
        type=non_negative_int,
        default=0,
        metavar="N",
        may_change_on_resume=True,
        help="every N epochs and after the last, log the backbone's kNN accuracy (k 200) on "
        "the labelled train/test split of --dataset (0 = off)",
    )
    parser.add_argument(
        "--eval_images",
        type=non_negative_int,
        default=5000,
        metavar="N",
        may_change_on_resume=True,
        help="--eval_every: a seeded, class-balanced subset of at most N images of each split (0 = all)",
    )
    parser.add_argument(
        "--tensorboard",
        default=None,
        metavar="DIR",
        may_change_on_resume=True,
        help="also write every logged quantity for TensorBoard into DIR/<run> (needs the tensorboard package)",
    )
    parser.add_argument(
        "--wandb",
        type=wandb_project,
        default=None,
        metavar="PROJECT",
        may_change_on_resume=True,
        help="also log the run's configuration and every logged quantity per epoch to Weights & Biases "
        "project PROJECT, as run <run> (needs the wandb package; uploads only where wandb's settings say so)",
    )
    add_validation_flags(parser)
    for method in METHODS.values():
        if stage_fields(method.Config, stage=1):
            group = parser.add_argument_group(f"{method.name} options (only with --method {method.name})")
            add_option_flags(parser, group, method.Config, stage=1)
    return parser


def add_validation_flags(parser: Parser) -> None:
    """Stage 1's validation split, online linear probe and its settings (solo-learn's online
    classifier's by default; see evaluation/probe.py)."""
    parser.add_argument(
        "--val_images",
        type=non_negative_int,
        default=0,
        metavar="N",
        help="hold out N labelled training images (class-balanced, drawn with --seed) as a "
        "validation split, never trained on; --eval_every and --online_probe then score on it, "
        "and stage 2 reuses it (0 = none: they score on the test split)",
    )
    parser.add_argument(
        "--online_probe",
        action="store_true",
        help="train a linear classifier on the detached features of the backbone while it "
        "trains, with its own optimizer, and log its accuracy on the validation (or test) "
        "split every epoch; the backbone trains exactly as without it",
    )
    parser.add_argument("--probe_lr", type=positive_float, default=0.1, help="--online_probe: its learning rate")
    parser.add_argument(
        "--probe_weight_decay", type=non_negative_float, default=0.0, help="--online_probe: its weight decay"
    )
    parser.add_argument(
        "--probe_warmup_epochs",
        type=non_negative_int,
        default=PROBE_WARMUP_EPOCHS,
        help="--online_probe: epochs of linear warm-up of its learning rate (from 3e-5), then a cosine to 0",
    )
