"""Command-line flags shared by the three stage scripts, so a flag means the same everywhere.

Flag names and defaults follow the original code (sections 1.1, 2.1 and 3 of its
description); the additions are documented in the README.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Callable

from utils.checkpoint_fields import INTEGER_LIMIT

DATA_ROOT_ENV = "SSL_DATA_ROOT"


def shown_default(value) -> str:
    """A default as `--help` shows it: switches and empty values read as off or none."""
    if value is False:
        return "off"
    if value is None or value == "":
        return "none"
    return str(value).replace("%", "%%")  # argparse %-formats help texts


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Appends `(default: X)` to every flag's help that does not already state its default
    (`(required)` to a required one); method options (no parser default) state theirs in their help."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if not action.option_strings or action.default is argparse.SUPPRESS or "default" in text:
            return text
        if action.required:
            return f"{text} (required)"
        return f"{text} (default: {shown_default(action.default)})"


class Parser(argparse.ArgumentParser):
    """Reports a bad flag as one line on stderr (no usage block), exit status 2; `--help` shows
    every flag's default. `may_change_on_resume` holds the arguments whose flags were declared
    with `may_change_on_resume=True`: a run resumed with other values of them is the same run."""

    def __init__(self, *args, **kwargs):
        self.may_change_on_resume: set[str] = set()
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def add_argument(self, *args, may_change_on_resume: bool = False, **kwargs) -> argparse.Action:
        action = super().add_argument(*args, **kwargs)
        if may_change_on_resume:
            self.may_change_on_resume.add(action.dest)
        return action

    def error(self, message: str) -> None:
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(2)


# The largest image side a resize may ask for: 16 times STL-10's 96 px. Decoding holds
# N x 3 x side^2 bytes, so a side of 20,000 asked gigabytes per image before any check.
MAX_IMAGE_SIZE = 1536


def _integer(minimum: int, maximum: int = INTEGER_LIMIT):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got '{text}'") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        if value > maximum:
            raise argparse.ArgumentTypeError(f"must be at most {maximum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def _number(accepts: Callable[[float], bool], requirement: str):
    """A parser of numbers that `accepts`; errors say the `requirement`."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {requirement}, got '{text}'") from None
        if not accepts(value):
            raise argparse.ArgumentTypeError(f"must be {requirement}, got {text}")
        return value

    parse.__name__ = requirement
    return parse


positive_float = _number(lambda value: 0 < value < float("inf"), "a positive number")
fraction = _number(lambda value: 0 < value <= 1, "a number in (0, 1]")
non_negative_float = _number(lambda value: 0 <= value < float("inf"), "a number >= 0")
# kNN votes with exp(similarity / T) and similarities reach 1: float32's exp overflows above 88.
knn_temperature = _number(lambda value: 0.02 <= value <= 100, "a number from 0.02 to 100")


def boolean(text: str) -> bool:
    """The original passed `--finetune True` as a string; accept that and plain switches."""
    lowered = text.lower()
    if lowered in {"true", "1", "yes"}:
        return True
    if lowered in {"false", "0", "no"}:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got '{text}'")


# The longest --id. A file name holds at most 255 bytes, and the longest name of a run's files
# takes 165 besides its id: the temporary file of test.py's retrieval grid of a stage-2 run whose
# other name-forming values (method, data sets, backbone, seed, epochs, label fraction,
# --retrieval K) are all at their longest (tests/experiments/test_command_line.py builds it).
# So 90 would fit; 64 leaves room for longer method and data set names.
MAX_ID_LENGTH = 64


def run_id(text: str) -> str:
    if re.fullmatch(r"[A-Za-z0-9._-]*", text) is None:
        raise argparse.ArgumentTypeError(f"'{text}' may only hold letters, digits, '-', '_' and '.'")
    if len(text) > MAX_ID_LENGTH:
        raise argparse.ArgumentTypeError(
            f"at most {MAX_ID_LENGTH} characters, so that the run's file names fit the "
            f"file system's 255 bytes; got {len(text)}"
        )
    return text


positive_int = _integer(1)
non_negative_int = _integer(0)
_seed = _integer(-1)


# Whether the backbone can take a side is checked when the data are known (backbones.check_image_side).
image_size = _integer(0, MAX_IMAGE_SIZE)
_GPU = r"(\d+|GPU-[0-9A-Fa-f-]+|MIG-[\w/-]+)"


def gpu_list(text: str) -> str:
    """A CUDA_VISIBLE_DEVICES value: device numbers or GPU-/MIG- identifiers, comma-separated;
    empty or -1 hides every GPU."""
    if text in {"", "-1"} or re.fullmatch(f"{_GPU}(,{_GPU})*", text):
        return text
    raise argparse.ArgumentTypeError(f"'{text}' is not a list of GPU numbers (for example 0 or 0,1)")


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
        type=_seed,
        default=-1,
        help="random seed; -1 draws one, which names the run's files and is recorded in its config",
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
    shown_default = batch_default or "the method's: 128, relic 256"
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
        help="also save a checkpoint every N epochs (0 = only at 25/50/75/100%%)",
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
    add_validation_flags(parser)
    for method in METHODS.values():
        if stage_fields(method.Config, stage=1):
            group = parser.add_argument_group(f"{method.name} options (only with --method {method.name})")
            add_option_flags(parser, group, method.Config, stage=1)
    return parser


class Stage2Parser(Parser):
    """Refuses the flags that make no sense with `--classifier` (they would be ignored
    silently), then gives the flags of each classifier their defaults."""

    LINEAR_EPOCHS = 100
    LOGISTIC_DEFAULTS = {"logistic_c": 1.0, "logistic_max_iter": 100}

    def parse_known_args(self, args=None, namespace=None):
        from experiments.options import fill_option_defaults
        from methods.standard import Standard

        parsed, extras = super().parse_known_args(args, namespace)
        fill_option_defaults(parsed, Standard.Config, stage=2)
        if parsed.classifier == "logistic":
            if parsed.finetune:
                self.error(
                    "--finetune with --classifier logistic: logistic regression fits a classifier on "
                    "the frozen backbone; drop --finetune or --classifier logistic"
                )
            if parsed.resume:
                self.error(
                    "--resume with --classifier logistic: logistic regression is solved in one go, "
                    "so there is nothing to resume; run it again without --resume"
                )
            if parsed.epochs is not None:
                self.error(
                    "--epochs with --classifier logistic: logistic regression has no epochs "
                    "(--logistic_max_iter bounds its iterations); drop --epochs"
                )
        else:
            for name in self.LOGISTIC_DEFAULTS:
                if getattr(parsed, name) is not None:
                    self.error(
                        f"--{name} belongs to --classifier logistic, not {parsed.classifier}: "
                        "drop it or pass --classifier logistic"
                    )
            parsed.epochs = self.LINEAR_EPOCHS if parsed.epochs is None else parsed.epochs
        for name, default in self.LOGISTIC_DEFAULTS.items():
            if getattr(parsed, name) is None:
                setattr(parsed, name, default)
        return parsed, extras


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
        default=10,
        help="--online_probe: epochs of linear warm-up of its learning rate (from 3e-5), then a cosine to 0",
    )


def stage2_parser() -> Parser:
    from experiments.options import add_option_flags
    from methods import METHODS
    from methods.standard import Standard

    parser = common_parser(
        "Stage 2: linear evaluation (or fine-tuning, or logistic regression) of a trained backbone.",
        128,
        parser_class=Stage2Parser,
    )
    parser.add_argument("--checkpoint", required=True, help="stage-1 checkpoint (.tar)")
    parser.add_argument(
        "--method",
        default=None,
        choices=list(METHODS),
        help="method that trained the checkpoint (default: read from it)",
    )
    parser.add_argument(
        "--classifier",
        default="linear",
        choices=["linear", "logistic"],
        help="linear: a linear layer trained with Adam on mini-batches for --epochs (the "
        "paper's protocol, default); logistic: L2-regularised multinomial logistic "
        "regression on the frozen features by full-batch L-BFGS, as scikit-learn's "
        "LogisticRegression",
    )
    parser.add_argument(
        "--logistic_c",
        type=positive_float,
        default=None,
        help="logistic: inverse regularisation strength C, as scikit-learn's (default "
        f"{Stage2Parser.LOGISTIC_DEFAULTS['logistic_c']:g})",
    )
    parser.add_argument(
        "--logistic_max_iter",
        type=positive_int,
        default=None,
        help="logistic: at most this many L-BFGS iterations (default "
        f"{Stage2Parser.LOGISTIC_DEFAULTS['logistic_max_iter']})",
    )
    parser.add_argument(
        "--epochs",
        type=positive_int,
        default=None,
        help=f"epochs of the linear classifier or of fine-tuning (default "
        f"{Stage2Parser.LINEAR_EPOCHS}; none with --classifier logistic)",
    )
    parser.add_argument(
        "--finetune",
        type=boolean,
        nargs="?",
        const=True,
        default=False,
        help="train the backbone too (--finetune or --finetune true)",
    )
    add_option_flags(parser, parser, Standard.Config, stage=2)
    parser.add_argument(
        "--augmentation",
        default="none",
        choices=["none", "standard"],
        help="fine-tuning: augmentation of the training images (default none)",
    )
    parser.add_argument(
        "--resume",
        default=None,
        metavar="PATH|auto",
        may_change_on_resume=True,
        help="fine-tuning: continue an interrupted run exactly; auto picks its last checkpoint",
    )
    parser.add_argument(
        "--id", type=run_id, default="", help="tag added to the file names (the stage-1 run's tag is not carried over)"
    )
    parser.add_argument(
        "--train_subset",
        type=non_negative_int,
        default=0,
        help="use a seeded, class-balanced subset of N labelled images (0 = all)",
    )
    parser.add_argument(
        "--val_images",
        type=non_negative_int,
        default=None,
        metavar="N",
        help="hold out N labelled training images as a validation split and log the "
        "classifier's accuracy on it every epoch (default: the images the stage-1 checkpoint "
        "held out, if it holds any, else none)",
    )
    parser.add_argument(
        "--new_val_split",
        action="store_true",
        help="with --val_images: draw the validation split anew from --seed instead of reusing "
        "the stage-1 checkpoint's (whose images stage 1 did not train on)",
    )
    parser.add_argument(
        "--label_fraction",
        type=fraction,
        default=1.0,
        help="semi-supervised: train on this share of the labelled images, the "
        "same share of every class, drawn with --seed (default 1 = all)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        may_change_on_resume=True,
        help="replace the outputs of an earlier run with the same name",
    )
    return parser


def stage3_parser() -> Parser:
    parser = common_parser(
        "Stage 3: score a linear-evaluation (or supervised) checkpoint on the test split.",
        256,
        output_help="unused here: the test log is written beside the checkpoint "
        "or in --log_dir; accepted so that one set of flags serves all "
        "three stages",
    )
    parser.add_argument(
        "--checkpoint",
        required=True,
        help="stage-2 checkpoint, or a stage-1 checkpoint of method standard; any "
        "backbone checkpoint when only the options below are asked for",
    )
    parser.add_argument(
        "--knn",
        type=non_negative_int,
        default=0,
        metavar="K",
        help="also score a weighted k-nearest-neighbour classifier (cosine, "
        "neighbours from the labelled training split; 0 = off)",
    )
    parser.add_argument(
        "--knn_temperature",
        type=knn_temperature,
        default=0.07,
        help="kNN: a neighbour votes with weight exp(similarity / T) (default 0.07)",
    )
    parser.add_argument(
        "--retrieval",
        type=non_negative_int,
        default=0,
        metavar="K",
        help="also score top-K image retrieval on the test split: the share of "
        "each query's K nearest test images of its class (0 = off)",
    )
    parser.add_argument(
        "--retrieval_grid",
        type=non_negative_int,
        default=8,
        metavar="N",
        help="retrieval: save a PNG of N random queries and their neighbours (0 = none)",
    )
    parser.add_argument(
        "--export_features",
        default=None,
        metavar="DIR",
        help="save the train and test features and labels as .npy files in DIR",
    )
    parser.add_argument(
        "--feature_map",
        default="none",
        choices=["none", "pca", "tsne"],
        help="save a 2-D map of the test features coloured by class (needs matplotlib)",
    )
    parser.add_argument(
        "--map_points",
        type=positive_int,
        default=2000,
        help="feature map: at most this many test images, drawn with --seed",
    )
    parser.add_argument(
        "--log_dir",
        default=None,
        metavar="DIR",
        help="folder of the test log (log_<checkpoint name>_test.csv), the retrieval "
        "grid and the feature map (default: the checkpoint's folder)",
    )
    parser.add_argument(
        "--cross_domain",
        action="store_true",
        help="score a checkpoint on a data set other than the one it was trained on, or with "
        "images of another size (refused by default, as a score of the wrong classes "
        "would look valid)",
    )
    return parser
