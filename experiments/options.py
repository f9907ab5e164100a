"""Methods' configurations on the command line: the one place where a config's fields become
flags, flags a config, and a config the values of its flags.

A field's flag is `--<flag_prefix><name>` unless its `Option` spells it; a `Literal` field
gets choices, a bounded number one of the one-line validators of `experiments/cli.py`, a bool
a switch. A `ConfigError` raised while building a config is reported with the flags' names.
"""

from __future__ import annotations

import argparse
from typing import Any, Callable

from datasets import DATASETS
from experiments.arguments import RunArguments
from experiments.flags import INTEGER_LIMIT, Parser, bounded_integer, checked_number, positive_float
from methods import Method
from methods.config import ConfigError, MethodConfig, Option, choices, field_types, option_fields
from methods.standard import Finetune, Standard
from utils.errors import UserError


def option_flag(config_class: type[MethodConfig], name: str) -> str:
    """The flag, without its dashes, that sets field `name` (also its key in the recorded arguments)."""
    spec = {field.name: spec for field, spec in option_fields(config_class)}[name]
    return spec.flag or config_class.flag_prefix + name


def option_values(config: MethodConfig, names: set[str]) -> list[tuple[str, Any]]:
    """(flag, value) of the fields `names` of `config`, in the order the config declares them:
    what a command line gives to set them."""
    return [
        (option_flag(type(config), field.name), getattr(config, field.name))
        for field, _ in option_fields(type(config))
        if field.name in names
    ]


def stage_fields(config_class: type[MethodConfig], stage: int) -> list[tuple[str, Option, Any]]:
    """(name, option, default) of the fields whose flags `stage` has."""
    return [(field.name, spec, field.default) for field, spec in option_fields(config_class) if spec.stage == stage]


def flag_type(annotation: Any, spec: Option) -> Callable[[str], Any]:
    """The parser of a field's flag, which checks the field's bounds."""
    if annotation is int:
        lows = [bound for bound in (spec.at_least, None if spec.above is None else spec.above + 1) if bound is not None]
        highest = INTEGER_LIMIT if spec.at_most is None else int(spec.at_most)
        return bounded_integer(int(max(lows, default=-INTEGER_LIMIT)), highest)
    if annotation is float:
        if (spec.at_least, spec.above, spec.at_most) == (None, 0, None):
            return positive_float
        return checked_number(spec.admits, spec.requirement(integer=False))
    allowed = choices(annotation)
    return type(allowed[0]) if allowed else annotation


def add_option_flags(parser: Parser, group, config_class: type[MethodConfig], stage: int) -> None:
    """Register on `group` (of `parser`, or `parser` itself) the flags of the fields `stage`
    sets, each with its help and default. They have no parser default (SUPPRESS): an absent
    flag leaves no attribute, so a given flag can be told from a default;
    `fill_option_defaults` then sets the defaults."""
    types = field_types(config_class)
    for name, spec, default in stage_fields(config_class, stage):
        flag = option_flag(config_class, name)
        if spec.may_change_on_resume:
            parser.may_change_on_resume.add(flag)
        parser.option_defaults[flag] = default
        if types[name] is bool:
            group.add_argument(
                f"--{flag}", action="store_true", default=argparse.SUPPRESS, help=f"{spec.help} (default off)"
            )
        else:
            group.add_argument(
                f"--{flag}",
                type=flag_type(types[name], spec),
                choices=choices(types[name]),
                default=argparse.SUPPRESS,
                help=f"{spec.help} (default {default})",
            )


def fill_option_defaults(parsed: argparse.Namespace, config_class: type[MethodConfig], stage: int) -> list[str]:
    """Give the flags of `config_class` that the command line lacks their defaults, so that the
    recorded arguments list them all; returns the flags it had."""
    given = []
    for name, _, default in stage_fields(config_class, stage):
        flag = option_flag(config_class, name)
        if hasattr(parsed, flag):
            given.append(flag)
        else:
            setattr(parsed, flag, default)
    return given


def config_from_args(
    config_class: type[MethodConfig], args: argparse.Namespace | RunArguments, stage: int, **derived: Any
) -> MethodConfig:
    """The config the flags of `stage` (and the `derived` fields) give; a broken rule is a
    one-line UserError that names the flags."""
    values = {name: getattr(args, option_flag(config_class, name)) for name, _, _ in stage_fields(config_class, stage)}
    try:
        return config_class(**values, **derived)
    except ConfigError as error:
        raise UserError(error.naming(lambda name: "--" + option_flag(config_class, name))) from None


def stage1_config(method_class: type[Method], args: argparse.Namespace) -> MethodConfig:
    """The method's config from a stage-1 command line."""
    # The supervised baseline trains with the augmentation its data set's record names, if any.
    augmentation = DATASETS[args.dataset].supervised_augmentation
    derived = {"augmentation": augmentation} if method_class is Standard and augmentation else {}
    return config_from_args(method_class.Config, args, 1, **derived)


def stage2_model(backbone, num_classes: int, args: RunArguments) -> Standard:
    """The classifier over the backbone of a stage-2 command line: linear evaluation, or with
    `--finetune` fine-tuning with its learning rates and `--augmentation`."""
    if args.finetune:
        config = config_from_args(Standard.Config, args, 2, augmentation=args.augmentation)
        return Finetune(backbone, num_classes, config)
    return Standard(backbone, num_classes, config_from_args(Standard.Config, args, 2))
