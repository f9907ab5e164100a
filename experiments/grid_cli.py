"""The command line of `reproduce.py`: which grid, which part of it, how long and where."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from backbones import BACKBONES
from experiments.arguments import RunArguments, freeze
from experiments.cli import DATA_ROOT_ENV
from experiments.flags import Parser, non_negative_int, positive_int
from experiments.parallel import MEMORY_PER_CPU_JOB, automatic_jobs, visible_gpus
from experiments.studies import ALL_METHODS, CONDITIONS, STUDIES
from utils.errors import UserError
from utils.runtime import resolve_device


def name_list(choices, what: str):
    def parse(text: str) -> list[str]:
        names = [name for name in text.split(",") if name]
        unknown = [name for name in names if name not in choices]
        if unknown or not names:
            raise argparse.ArgumentTypeError(
                f"unknown {what} '{','.join(unknown) or text}'; choose from {', '.join(choices)}"
            )
        return names

    parse.__name__ = f"{what} list"
    return parse


def seed_list(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",") if part]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seeds like 1,2,3 or 1 2 3, got '{text}'") from None
    if not seeds or any(not 0 <= seed < 2**31 for seed in seeds):
        raise argparse.ArgumentTypeError(f"expected seeds from 0 to 2^31-1 like 1,2,3, got '{text}'")
    return seeds


class ListFlag(argparse.Action):
    """A list given comma-separated, space-separated or both (`--seeds 1,2 3`), repeats dropped."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, list(dict.fromkeys(item for value in values for item in value)))


def shard(text: str) -> tuple[int, int]:
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected I/N like 1/4, got '{text}'") from None
    if not 1 <= index <= count:
        raise argparse.ArgumentTypeError(f"expected I/N with 1 <= I <= N, like 1/4, got '{text}'")
    return index, count


def relation_k(text: str) -> int:
    value = positive_int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"relationnet needs at least 2 views per image, got {value}")
    return value


def grid_parser() -> Parser:
    p = Parser(
        description="Run a grid of the paper's experiments through the three stages; "
        "finished runs are skipped, interrupted ones resumed."
    )
    p.add_argument(
        "--study",
        default="table1",
        choices=list(STUDIES),
        help="which grid (default table1): " + "; ".join(f"{name}: {s.description}" for name, s in STUDIES.items()),
    )
    p.add_argument(
        "--conditions",
        type=name_list(list(CONDITIONS), "condition"),
        nargs="+",
        action=ListFlag,
        default=None,
        help="subset of the study's conditions, comma- or space-separated (default: all)",
    )
    p.add_argument(
        "--methods",
        type=name_list(list(ALL_METHODS), "method"),
        nargs="+",
        action=ListFlag,
        default=None,
        help="subset of the study's methods, comma- or space-separated (default: all)",
    )
    p.add_argument(
        "--backbone",
        type=name_list(list(BACKBONES), "backbone"),
        nargs="+",
        action=ListFlag,
        default=None,
        help="backbones instead of the paper's for the study, comma- or space-separated",
    )
    p.add_argument(
        "--seeds",
        type=seed_list,
        nargs="+",
        action=ListFlag,
        default=[1, 2, 3],
        help="seeds, comma- or space-separated (default 1 2 3)",
    )
    p.add_argument(
        "--epochs", type=positive_int, default=None, help="stage-1 epochs instead of the paper's (200; 300 on STL-10)"
    )
    p.add_argument(
        "--linear_epochs",
        type=positive_int,
        default=None,
        help="stage-2 epochs instead of the paper's (100; 20 of fine-tuning on STL-10)",
    )
    p.add_argument(
        "--train_subset",
        type=non_negative_int,
        default=0,
        help="train both stages on a seeded, class-balanced subset of N images (default 0 = all)",
    )
    p.add_argument(
        "--K",
        type=relation_k,
        default=None,
        help="relationnet views per image instead of the paper's (32; 16 tiny/slim; 25 STL-10)",
    )
    p.add_argument(
        "--knn",
        type=non_negative_int,
        default=200,
        help="k of the kNN accuracy reported beside the linear one (default 200; 0 = off)",
    )
    p.add_argument(
        "--retrieval",
        type=non_negative_int,
        default=10,
        help="K of the top-K retrieval precision reported (default 10; 0 = off)",
    )
    p.add_argument(
        "--data_root",
        default=os.environ.get(DATA_ROOT_ENV, "./data"),
        help=f"folder holding the data sets (default ${DATA_ROOT_ENV} or ./data)",
    )
    p.add_argument("--out", default=None, help="grid folder (default runs/<study>)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument(
        "--jobs",
        type=positive_int,
        default=None,
        help="stages run side by side, each on its own share of the CPUs (and its own GPU); "
        "default: one per visible GPU times --jobs_per_gpu, on the CPU one per usable "
        f"core as far as memory allows ({MEMORY_PER_CPU_JOB // 2**30} GiB each)",
    )
    p.add_argument(
        "--jobs_per_gpu",
        type=positive_int,
        default=None,
        help="jobs sharing each GPU, for models too small to fill one (default 1)",
    )
    p.add_argument(
        "--shard",
        type=shard,
        default=None,
        metavar="I/N",
        help="run the I-th of N shares of the grid (runs sharing a stage-1 run stay together), "
        "for N machines or GPUs writing the same --out (default: the whole grid)",
    )
    p.add_argument("--no_download", action="store_true", help="never download a missing data set")
    p.add_argument(
        "--dry_run",
        action="store_true",
        help="print a summary and the commands that would run (each once), run nothing",
    )
    return p


def grid_arguments(parsed: argparse.Namespace) -> RunArguments:
    """The grid's arguments resolved and frozen: the output folder, the GPUs it sees, how many
    jobs run side by side and the device its children are given."""
    out = Path(parsed.out or Path("runs") / parsed.study)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file: pass a folder (it is created when missing)")
    data_root = Path(parsed.data_root)
    if not data_root.is_dir() and parsed.no_download:
        raise UserError(f"--data_root {data_root} is not a folder: pass the folder holding the data sets")
    device = resolve_device(parsed.device)  # a bad name stops here, not in the first child
    gpus = visible_gpus(device)
    if parsed.jobs_per_gpu and not gpus:
        raise UserError(f"--jobs_per_gpu: the grid runs on the CPU (--device {parsed.device}); use --jobs")
    return freeze(
        parsed,
        out=str(out),
        gpus=gpus,
        jobs=parsed.jobs or automatic_jobs(gpus, parsed.jobs_per_gpu or 1),
        # Each child sees only its own GPU (CUDA_VISIBLE_DEVICES), as its first CUDA device.
        child_device="cuda" if gpus else parsed.device,
    )
