"""The command lines of the evaluation stages: stage 2 (train_linear_evaluation.py) and stage 3
(test.py), over the flags every stage shares (`experiments/cli.py`)."""

from __future__ import annotations

from experiments.cli import common_parser
from experiments.flags import (
    Parser,
    boolean,
    fraction,
    knn_temperature,
    non_negative_int,
    positive_float,
    positive_int,
    run_id,
)


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
        "--train_subset",
        type=non_negative_int,
        default=0,
        help="kNN and export: the seeded, class-balanced subset of N training images stage 2 drew "
        "with the same --seed, so that kNN votes with the labels the linear classifier learnt "
        "from (default 0 = all)",
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
