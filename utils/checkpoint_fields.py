"""Checks of a checkpoint's entries against what will use them, made before anything is loaded
or written: a checkpoint is data, and a field of the wrong type, range, dtype or shape would
otherwise be cast silently, give wrong numbers or fail later with a traceback.

Each check raises a `UserError` of one line that names the file, the entry and the fix.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from utils.errors import UserError

# The largest whole number a flag or a checkpoint entry holds: torch's index and seed arithmetic
# is 32-bit in places, and no count here (epochs, images, iterations) sensibly reaches it.
INTEGER_LIMIT = 2**31 - 1

DAMAGED = "the file is damaged or forged; use the file the stage wrote"
OTHER_RUN = (
    "it was made by another method or with another backbone or options; pass a checkpoint of a run like this one"
)
DIVERGED = "the run that wrote it diverged; use an earlier checkpoint of that run"


def field_error(path: str | Path | None, key: str, problem: str, fix: str = DAMAGED) -> UserError:
    """The one-line refusal of entry `key` of the checkpoint `path` (None: a state in memory)."""
    source = f"checkpoint {path}" if path is not None else "the checkpoint"
    return UserError(f"{source}: its '{key}' entry {problem}: {fix}")


def _shape(tensor: torch.Tensor) -> str:
    return f"({', '.join(map(str, tensor.shape))})"


def check_tensor(value: object, expected: torch.Tensor, path: str | Path | None, key: str) -> None:
    """`value` is a tensor of `expected`'s dtype and shape, and finite when it holds floats."""
    if not isinstance(value, torch.Tensor):
        raise field_error(path, key, f"is a {type(value).__name__}, not a tensor")
    if value.dtype != expected.dtype:
        raise field_error(path, key, f"is a {value.dtype} tensor where this run holds {expected.dtype}")
    if value.shape != expected.shape:
        raise field_error(
            path, key, f"has the shape {_shape(value)} where this run builds {_shape(expected)}", OTHER_RUN
        )
    if value.is_meta:
        raise field_error(path, key, "is a tensor without values (on the meta device)")
    if (value.is_floating_point() or value.is_complex()) and not bool(torch.isfinite(value).all()):
        raise field_error(path, key, "holds non-finite values (NaN or inf)", DIVERGED)


def check_state_dict(entry: dict, expected: dict[str, torch.Tensor], path: str | Path | None, key: str) -> None:
    """The state dict `entry` has the names of `expected` (a built module's state dict), and
    each tensor its dtype, shape and finite values."""
    unexpected = [name for name in entry if name not in expected]
    missing = [name for name in expected if name not in entry]
    if unexpected or missing:
        problem = f"holds '{unexpected[0]}', which" if unexpected else f"lacks '{missing[0]}', which"
        raise field_error(
            path, key, f"{problem} this run's {key} {'does not have' if unexpected else 'has'}", OTHER_RUN
        )
    for name, tensor in expected.items():
        check_tensor(entry[name], tensor, path, f"{key}.{name}")


def check_number(value: object, built: float, low: float, high: float, path: str | Path | None, key: str) -> None:
    """`value` is a number of `built`'s kind (a whole number where the run keeps one), from
    `low` to `high`; a float with no range (both infinite) may be NaN (a value not yet known)."""
    whole = type(built) is int
    # The exact types, not isinstance: a bool or a numpy number is not a number of the run.
    if not (type(value) is int or (type(value) is float and not whole)):
        raise field_error(path, key, f"is {str(value)[:40]!r}, not a {'whole ' if whole else ''}number")
    if math.isinf(low) and math.isinf(high) and not whole:
        return
    if not (math.isfinite(value) and low <= value <= high):
        bounds = f">= {low:g}" if math.isinf(high) else f"from {low:g} to {high:g}"
        raise field_error(path, key, f"is {value!r}, not a finite number {bounds}")


def check_optimizer_state(entry: object, optimizer: torch.optim.Optimizer, path: str | Path | None, key: str) -> None:
    """The optimizer state `entry` fits `optimizer`: its groups hold as many parameters, the
    hyperparameters both know are numbers (or flags) as the built ones, and every
    per-parameter tensor has its parameter's shape and dtype (a scalar such as Adam's step
    count excepted), finite."""
    built = optimizer.state_dict()
    if (
        not isinstance(entry, dict)
        or not isinstance(entry.get("state"), dict)
        or not isinstance(entry.get("param_groups"), list)
    ):
        raise field_error(path, key, "is not an optimizer's state (a dict of 'state' and 'param_groups')")
    groups = entry["param_groups"]
    if len(groups) != len(built["param_groups"]) or not all(
        isinstance(group, dict)
        and isinstance(group.get("params"), list)
        and len(group["params"]) == len(built_group["params"])
        and all(type(index) is int for index in group["params"])
        for group, built_group in zip(groups, built["param_groups"], strict=True)
    ):
        raise field_error(path, key, "holds other parameter groups than this run's optimizer", OTHER_RUN)
    parameters: dict[int, torch.Tensor] = {}  # a saved parameter index -> the built parameter
    for group, built_group, group_parameters in zip(groups, built["param_groups"], optimizer.param_groups, strict=True):
        for name, value in group.items():
            if name != "params" and name in built_group:
                _check_hyperparameter(value, built_group[name], path, f"{key}.{name}")
        parameters.update(zip(group["params"], group_parameters["params"], strict=True))
    for index, values in entry["state"].items():
        if index not in parameters or not isinstance(values, dict):
            raise field_error(
                path, key, f"holds the state of a parameter {str(index)[:20]!r} that none of its groups lists"
            )
        parameter = parameters[index]
        for name, value in values.items():
            where = f"{key}.state.{index}.{name}"
            if isinstance(value, torch.Tensor) and value.dim() == 0 and parameter.dim() > 0:
                check_number(value.item(), 0.0, 0, math.inf, path, where)  # a count (Adam's step)
            elif isinstance(value, torch.Tensor):
                check_tensor(value, parameter.detach(), path, where)
            elif value is not None:
                check_number(value, 0.0, 0, math.inf, path, where)


def _check_hyperparameter(value: object, built: object, path: str | Path | None, key: str) -> None:
    """A hyperparameter of a saved group: a flag where the built group has a flag (or None),
    a finite number >= 0 where it has a number, as many such numbers where it has a tuple."""
    if isinstance(built, bool) or built is None:
        if not (value is None or isinstance(value, bool)):
            raise field_error(path, key, f"is {str(value)[:40]!r}, not a flag")
    elif isinstance(built, (int, float)):
        check_number(value, 0.0, 0, math.inf, path, key)
    elif isinstance(built, (tuple, list)):
        if not isinstance(value, (tuple, list)) or len(value) != len(built):
            raise field_error(path, key, f"is {str(value)[:40]!r}, not {len(built)} numbers")
        for number in value:
            check_number(number, 0.0, 0, math.inf, path, key)


def check_module_entry(entry: object, module: nn.Module, path: str | Path | None, key: str) -> None:
    """`entry` is a state dict that `module` can load unchanged (see `check_state_dict`)."""
    if not isinstance(entry, dict):
        raise field_error(path, key, f"is a {type(entry).__name__}, not a state dict")
    check_state_dict(entry, module.state_dict(), path, key)


def check_data_tensor(
    value: object, expected: torch.Tensor, low: float, high: float, path: str | Path | None, key: str
) -> None:
    """`value` is a tensor of `expected`'s dtype and number of dimensions whose length is data
    (one entry per training image), its values finite and from `low` to `high`."""
    if not isinstance(value, torch.Tensor):
        raise field_error(path, key, f"is a {type(value).__name__}, not a tensor")
    if value.dtype != expected.dtype or value.dim() != expected.dim():
        raise field_error(
            path,
            key,
            f"is a {value.dim()}-dimensional {value.dtype} tensor where this run holds "
            f"a {expected.dim()}-dimensional {expected.dtype} one",
        )
    if value.numel() and not bool(((value >= low) & (value <= high)).all()):
        raise field_error(path, key, f"holds values outside [{low:g}, {high:g}]")
