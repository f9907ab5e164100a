"""Variants of a grid from the command line: `reproduce.py --set byol.warmup_epochs=0` replaces
a field of a method's `Config` (or its stage-1 batch or learning rate) in every run of that
method. Each value is parsed and bounded as the stage-1 flag of that field parses it
(`experiments.options.flag_type`), so a value the flag refuses is refused here, in one line,
before anything runs; the rules between fields are checked when the grid builds each run's
config. A variant's runs carry a tag (`warmup_epochs0`) in their names, files and records, so
that they and the runs without it are separate rows of one table."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Callable

from experiments.flags import boolean, positive_float, positive_int
from experiments.options import flag_type
from methods import METHODS
from methods.config import choices, field_types, option_fields

# Stage-1 flags a variant may change besides the config's fields: (parser, what it is).
STAGE1_SETTINGS: dict[str, tuple[Callable[[str], Any], str]] = {
    "data_size": (positive_int, "images per step"),
    "lr": (positive_float, "learning rate"),
}


@dataclass(frozen=True)
class Replacement:
    """One `--set METHOD.NAME=VALUE`: `name` a field of the method's `Config` or a key of
    `STAGE1_SETTINGS`, `value` parsed and within the flag's bounds."""

    method: str
    name: str
    value: Any

    @property
    def tag(self) -> str:
        """The replacement in a run's name: the name, then the value (`K8`, `lr0.5`)."""
        value = {True: "on", False: "off"}.get(self.value, self.value) if isinstance(self.value, bool) else self.value
        return f"{self.name}{value}"

    @property
    def shown(self) -> str:
        return f"{self.method}.{self.name}={self.value}"


def settable_names(method: str) -> list[str]:
    """What `--set METHOD.NAME=...` may name for `method`: the stage-1 fields of its config,
    then the batch and the learning rate."""
    config_class = METHODS[method].Config
    return [field.name for field, spec in option_fields(config_class) if spec.stage == 1] + list(STAGE1_SETTINGS)


def value_parser(method: str, name: str) -> Callable[[str], Any]:
    """The parser of a value for `name` of `method`: the one its stage-1 flag has, choices and
    switches included."""
    if name in STAGE1_SETTINGS:
        return STAGE1_SETTINGS[name][0]
    config_class = METHODS[method].Config
    spec = {field.name: spec for field, spec in option_fields(config_class)}[name]
    annotation = field_types(config_class)[name]
    if annotation is bool:
        return boolean
    parse = flag_type(annotation, spec)
    allowed = choices(annotation)
    if allowed is None:
        return parse

    def parse_choice(text: str) -> Any:
        value = parse(text)
        if value not in allowed:
            raise argparse.ArgumentTypeError(f"choose one of {', '.join(map(str, allowed))}, got '{text}'")
        return value

    return parse_choice


def replacement(text: str) -> Replacement:
    """`METHOD.NAME=VALUE` parsed and checked (argparse's type of `--set`)."""
    target, equals, value_text = text.partition("=")
    method, dot, name = target.partition(".")
    if not equals or not dot or not name or not value_text:
        raise argparse.ArgumentTypeError(f"expected METHOD.NAME=VALUE like byol.warmup_epochs=0, got '{text}'")
    if method not in METHODS:
        raise argparse.ArgumentTypeError(f"unknown method '{method}' in '{text}'; choose from {', '.join(METHODS)}")
    names = settable_names(method)
    if name not in names:
        raise argparse.ArgumentTypeError(f"{method} has no option '{name}'; it has {', '.join(names)}")
    try:
        value = value_parser(method, name)(value_text)
    except argparse.ArgumentTypeError as error:
        raise argparse.ArgumentTypeError(f"{method}.{name}: {error}") from None
    return Replacement(method, name, value)


def replacements_of(replacements: list[Replacement], method: str) -> list[Replacement]:
    return [change for change in replacements if change.method == method]


def variant_tag(replacements: list[Replacement]) -> str:
    """The tag a run of these replacements carries; empty for none."""
    return "_".join(change.tag for change in replacements)
