"""The parts every command line of the suite is made of: a parser that reports a bad flag in one
line and shows every default, and the flag types that check a value as it is read (bounds,
choices, file-name safety), each failing with the requirement in words."""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from utils.checkpoint_fields import INTEGER_LIMIT


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


@dataclass(frozen=True)
class ResumeRules:
    """What a resumed run may differ in from the run its checkpoint records: any value of the
    arguments `may_change`; an argument the record lacks (a flag added since the file was
    written) only at its `defaults` value, which is how the earlier code ran."""

    may_change: frozenset[str]
    defaults: Mapping[str, Any]


class Parser(argparse.ArgumentParser):
    """Reports a bad flag as one line on stderr (no usage block), exit status 2; `--help` shows
    every flag's default. `may_change_on_resume` holds the arguments whose flags were declared
    with `may_change_on_resume=True`: a run resumed with other values of them is the same run;
    `option_defaults` the defaults of flags whose parser default is SUPPRESS (methods' options)."""

    def __init__(self, *args, **kwargs):
        self.may_change_on_resume: set[str] = set()
        self.option_defaults: dict[str, Any] = {}
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def resume_rules(self) -> ResumeRules:
        """The rules `experiments.stage.resume_point` checks a resumed run by."""
        defaults = {
            action.dest: action.default
            for action in self._actions
            if action.option_strings and action.default is not argparse.SUPPRESS
        }
        return ResumeRules(frozenset(self.may_change_on_resume), {**defaults, **self.option_defaults})

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


def bounded_integer(minimum: int, maximum: int = INTEGER_LIMIT):
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


def checked_number(accepts: Callable[[float], bool], requirement: str):
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


positive_float = checked_number(lambda value: 0 < value < float("inf"), "a positive number")
fraction = checked_number(lambda value: 0 < value <= 1, "a number in (0, 1]")
non_negative_float = checked_number(lambda value: 0 <= value < float("inf"), "a number >= 0")
# kNN votes with exp(similarity / T) and similarities reach 1: float32's exp overflows above 88.
knn_temperature = checked_number(lambda value: 0.02 <= value <= 100, "a number from 0.02 to 100")


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


# What Weights & Biases accepts as a project name (its settings refuse the rest at wandb.init).
MAX_WANDB_PROJECT_LENGTH = 128
WANDB_PROJECT_FORBIDDEN = "/\\#?%:"


def wandb_project(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("a W&B project needs a name")
    if len(text) > MAX_WANDB_PROJECT_LENGTH:
        raise argparse.ArgumentTypeError(f"at most {MAX_WANDB_PROJECT_LENGTH} characters, got {len(text)}")
    if any(char in WANDB_PROJECT_FORBIDDEN for char in text):
        forbidden = " ".join(WANDB_PROJECT_FORBIDDEN)
        raise argparse.ArgumentTypeError(f"'{text}': a W&B project name holds none of {forbidden}")
    return text


positive_int = bounded_integer(1)
non_negative_int = bounded_integer(0)
seed_value = bounded_integer(-1)


# Whether the backbone can take a side is checked when the data are known (backbones.check_image_side).
image_size = bounded_integer(0, MAX_IMAGE_SIZE)
_GPU = r"(\d+|GPU-[0-9A-Fa-f-]+|MIG-[\w/-]+)"


def gpu_list(text: str) -> str:
    """A CUDA_VISIBLE_DEVICES value: device numbers or GPU-/MIG- identifiers, comma-separated;
    empty or -1 hides every GPU."""
    if text in {"", "-1"} or re.fullmatch(f"{_GPU}(,{_GPU})*", text):
        return text
    raise argparse.ArgumentTypeError(f"'{text}' is not a list of GPU numbers (for example 0 or 0,1)")
