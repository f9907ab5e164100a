"""A run's arguments once resolved: a read-only record that the stages pass down instead of
argparse's mutable Namespace."""

from __future__ import annotations

import argparse
from dataclasses import FrozenInstanceError
from types import MappingProxyType
from typing import Any, Mapping


class RunArguments:
    """The arguments a stage (or a grid) runs with, each resolved before they freeze: the seed
    drawn for `--seed -1`, the method read from a checkpoint, every default filled in. Nothing
    after that point can change what the run's files record. Read as attributes, as argparse's
    Namespace is; `record()` is the flat dictionary that configs and checkpoints store under
    `args`, unchanged from the files earlier versions wrote."""

    __slots__ = ("_values",)
    _values: Mapping[str, Any]

    def __init__(self, values: Mapping[str, Any]) -> None:
        object.__setattr__(self, "_values", MappingProxyType(dict(values)))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # not an argument: copy and pickle probe for special methods
            raise AttributeError(name)
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(f"the run's arguments have no {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise FrozenInstanceError(f"cannot assign to {name!r}: a run's arguments are frozen once resolved")

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete {name!r}: a run's arguments are frozen once resolved")

    def __reduce__(self) -> tuple:
        # Copied and pickled by building a new record from the values: the frozen object has no
        # state to set after creation.
        return (RunArguments, (dict(self._values),))

    def __repr__(self) -> str:
        return f"RunArguments({', '.join(f'{key}={value!r}' for key, value in self._values.items())})"

    def record(self) -> dict[str, Any]:
        """Every argument with the value used: what the run's config and checkpoints store."""
        return dict(self._values)


def freeze(parsed: argparse.Namespace, **resolved: Any) -> RunArguments:
    """The parsed arguments with the values resolved since parsing (`resolved` replaces or adds
    them), frozen."""
    return RunArguments({**vars(parsed), **resolved})
