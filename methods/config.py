"""A method's options, declared once as the fields of a frozen dataclass.

Each method nests a `Config` (a frozen dataclass derived from `MethodConfig`) whose fields are
made with `option`: the default, the help text, the bounds and, when the flag is not
`--<flag_prefix><name>`, the flag's spelling live on the field; a `Literal[...]` annotation
lists the choices. Building a config checks every field against its bounds and choices, then
the rules between fields in the config's `__post_init__`; a broken one raises `ConfigError`,
which names the fields. Nothing here knows of a command line: `experiments/` turns the fields
into flags and names a `ConfigError` by those flags.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import typing
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

# The key of an `Option` in a field's metadata.
OPTION = "option"


@dataclass(frozen=True)
class Option:
    """What a field of a method's config says beyond its type and default."""

    help: str
    at_least: float | None = None
    at_most: float | None = None
    above: float | None = None  # strictly greater than
    flag: str | None = None  # the flag's name without dashes, when not prefix + field name
    may_change_on_resume: bool = False
    stage: int | None = 1  # the stage whose command line sets it; None: the stage scripts derive it

    def requirement(self, integer: bool) -> str:
        """The bounds in words, as in "must be <requirement>"."""
        limits = [
            f"{sign} {bound}"
            for sign, bound in ((">=", self.at_least), (">", self.above), ("<=", self.at_most))
            if bound is not None
        ]
        noun = "a whole number" if integer else "a finite number"
        return " and ".join([f"{noun} {limits[0]}" if limits else noun, *limits[1:]])

    def admits(self, value: float) -> bool:
        """Whether a number is within the bounds (a float must be finite too)."""
        if isinstance(value, float) and not math.isfinite(value):
            return False
        return (
            (self.at_least is None or value >= self.at_least)
            and (self.above is None or value > self.above)
            and (self.at_most is None or value <= self.at_most)
        )


def option(
    default: Any,
    help: str,
    *,
    at_least: float | None = None,
    at_most: float | None = None,
    above: float | None = None,
    flag: str | None = None,
    may_change_on_resume: bool = False,
    stage: int | None = 1,
) -> Any:
    """A field of a method's config: `dataclasses.field` with its `Option` in the metadata."""
    return dataclasses.field(
        default=default, metadata={OPTION: Option(help, at_least, at_most, above, flag, may_change_on_resume, stage)}
    )


def with_default(config_class: type, name: str, default: Any) -> Any:
    """The field `name` of `config_class` with another default, its help and bounds kept: a
    config derived from a shared one changes a default without repeating the option."""
    inherited = {field.name: field for field in dataclasses.fields(config_class)}[name]
    return dataclasses.field(default=default, metadata=inherited.metadata)


class ConfigError(ValueError):
    """A field out of its bounds or choices, or a broken rule between fields. `fields` are the
    fields' names, `value` the one field's value (None when several fields are named)."""

    def __init__(self, fields: tuple[str, ...], problem: str, value: Any = None):
        self.fields, self.problem, self.value = fields, problem, value
        super().__init__(self.naming(lambda name: name))

    def naming(self, spell: Callable[[str], str]) -> str:
        """The one-line message with each field named by `spell` (a command line names flags)."""
        named = ", ".join(spell(name) for name in self.fields)
        return f"{named}{'' if self.value is None else f' {self.value}'}: {self.problem}"


@functools.lru_cache(maxsize=None)
def field_types(config_class: type) -> dict[str, Any]:
    """The fields' annotations, resolved (the modules write them as strings)."""
    return typing.get_type_hints(config_class)


def choices(annotation: Any) -> tuple | None:
    """The values a `Literal[...]` annotation allows, or None for any other type."""
    return typing.get_args(annotation) if typing.get_origin(annotation) is typing.Literal else None


def option_fields(config_class: type) -> list[tuple[dataclasses.Field, Option]]:
    """The config's fields that are options, in declaration order, with their `Option`."""
    return [(field, field.metadata[OPTION]) for field in dataclasses.fields(config_class) if OPTION in field.metadata]


@dataclass(frozen=True)
class MethodConfig:
    """The base of every method's `Config`: checks each field against its bounds and choices.
    A config with rules between fields overrides `__post_init__`, calling this one first."""

    # Prefixed to a field's name to make its flag, so that the flags of different methods differ.
    flag_prefix: ClassVar[str] = ""

    def __post_init__(self) -> None:
        # As a plain `type`: a frozen dataclass's instance `__hash__` hides, from a type
        # checker, that its class is hashable, as the cache of `field_types` needs.
        config_class: type = type(self)
        types = field_types(config_class)
        for field, spec in option_fields(config_class):
            value = getattr(self, field.name)
            allowed = choices(types[field.name])
            if allowed is not None and value not in allowed:
                raise ConfigError((field.name,), f"choose one of {', '.join(map(str, allowed))}", value)
            if allowed is None and not isinstance(value, bool) and not spec.admits(value):
                raise ConfigError((field.name,), f"must be {spec.requirement(types[field.name] is int)}", value)
