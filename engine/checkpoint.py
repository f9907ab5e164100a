"""Saving and reading checkpoints: atomic saves, and loading that refuses, in one line, a file
this suite cannot use (foreign, damaged, of another stage or method, of another backbone).

The names of the files are made in `engine/run_files.py`, the writes in `utils/atomic.py`.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch

from backbones.identify import backbone_state, check_backbone_identity
from utils.atomic import atomic_write_bytes
from utils.checkpoint_fields import (
    INTEGER_LIMIT,
    check_number,
    check_state_dict,
    field_error,
)
from utils.errors import UserError

FORMAT_VERSION = 1


def save_checkpoint(state: dict, path: Path) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def read_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint on the CPU without running code from the file (`weights_only`)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"checkpoint {path} does not exist")
    if path.is_dir():
        raise UserError(f"checkpoint {path} is a folder: pass the .tar file written by the previous stage")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for truncated or foreign files
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(
            f"checkpoint {path} cannot be read ({reason[:160]}): it is truncated, corrupt or not a PyTorch checkpoint"
        ) from None
    if not isinstance(state, dict) or "backbone" not in state:
        raise UserError(
            f"checkpoint {path} has no 'backbone' entry: not a checkpoint of this suite or of the original code"
        )
    for key, value in state.items():
        if key in STATE_DICT_KEYS and not _is_state_dict(value):
            raise field_error(path, key, f"is a {type(value).__name__}, not a state dict of named tensors")
    _check_record(state, path)
    return state


def _check_record(state: dict, path: Path) -> None:
    """The entries of the suite's record of a run that the stages read, where the file holds
    them (the original code's files hold none): whole numbers in bounds, and names of the
    suite's methods and data sets (a data set's name becomes part of stage 2's file names)."""
    from datasets import DATASETS
    from methods import METHODS

    for key, low in (("epoch", 0), ("seed", 0), ("world_size", 1)):
        if key in state:
            check_number(state[key], 0, low, INTEGER_LIMIT, path, key)
    for key, names, kind in (("method", METHODS, "methods"), ("dataset", DATASETS, "data sets")):
        if key in state and not (isinstance(state[key], str) and state[key] in names):
            raise field_error(path, key, f"is {str(state[key])[:40]!r}, not one of the suite's {kind}")


# Entries that hold a module's state dict wherever they appear (the original code's keys).
STATE_DICT_KEYS = frozenset({"backbone", "online_backbone", "relation", "head", "classifier", "loss_fn"})


def _is_state_dict(value: object) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())


def stage1_method_by_keys(state: dict) -> str:
    """Name the method of a checkpoint of the original code from its keys (docs/original-code.md,
    checkpoint keys): its files record no method name."""
    for key, method in (
        ("relation", "relationnet"),
        ("head", "simclr"),
        ("loss_fn", "deepinfomax"),
        ("classifier", "rotationnet or deepcluster"),
    ):
        if key in state:
            return method
    return "randomweights"


def refuse_other_kind(state: dict, path: str | Path, method: str) -> None:
    """Refuse, naming what the file is and where it belongs, a checkpoint that stage 1's
    `--method method` cannot start from: a stage-2 file or another method's checkpoint."""
    if "pretraining_method" in state:  # recorded by every stage-2 file of this suite
        raise UserError(
            f"checkpoint {path} is a stage-2 file (linear evaluation or fine-tuning of a "
            f"{state['pretraining_method']} backbone): "
            "score it with test.py --checkpoint; stage 1 starts from a stage-1 checkpoint"
        )
    kind = state.get("method") or stage1_method_by_keys(state)
    if method not in str(kind).split(" or "):
        raise UserError(
            f"checkpoint {path} is a stage-1 {kind} checkpoint, not {method}: pass --method "
            f"{str(kind).split(' or ')[0]} to continue it, or give it to train_linear_evaluation.py "
            "--checkpoint to evaluate it"
        )


def refuse_other_than_finetuning(state: dict, path: str | Path) -> None:
    """Refuse, naming what the file is, a checkpoint that a fine-tuning run cannot resume: any
    file but a fine-tuning run's (a stage-1 checkpoint, a linear classifier)."""
    args = state.get("args")
    if "pretraining_method" not in state:
        raise UserError(
            f"checkpoint {path} is not a stage-2 file: a fine-tuning run resumes from its own "
            "_last.tar; to fine-tune a stage-1 checkpoint, pass it as --checkpoint without --resume"
        )
    if not isinstance(args, dict) or args.get("finetune") is not True:
        raise UserError(
            f"checkpoint {path} is not a fine-tuning run's file (a linear classifier is saved "
            "once, whole): run the linear evaluation again without --resume"
        )


def check_backbone(state: dict, backbone: str, path: str | Path, stem: str | None = "auto") -> str | None:
    """Refuse, with the fix, a checkpoint whose backbone is not `--backbone` or whose stem is not
    `stem` (the stem the stage builds; 'auto' takes the checkpoint's); returns the stem it
    holds (None for a backbone with a single stem).

    The backbone and stem are told from the weights (`backbones/identify.py`). Weights of
    another dtype (which loading would cast silently) or that are not finite (a diverged
    run's: every result from them would be chance) are refused too."""
    held_stem = check_backbone_identity(state["backbone"], backbone, path, stem)
    check_state_dict(state["backbone"], backbone_state(backbone, held_stem), path, "backbone")
    return held_stem
