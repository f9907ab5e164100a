"""The files a grid reads back, as data to validate: the JSON files it keeps in its folder
(grid.json, timings.json, runs/<run>.json) and test.py's logs, which its records are built from.
A file truncated, edited by hand or planted must give one line naming it, not a traceback nor a
table built from values of the wrong type."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Callable, NamedTuple

Check = Callable[[object], bool]


def is_text(value: object) -> bool:
    return type(value) is str


def is_count(value: object) -> bool:
    return type(value) is int and value >= 0


def is_seconds(value: object) -> bool:
    return type(value) in (int, float) and math.isfinite(value) and value >= 0


def is_percent(value: object) -> bool:
    return type(value) in (int, float) and 0 <= value <= 100


def optional(check: Check) -> Check:
    return lambda value: value is None or check(value)


def is_order(value: object) -> bool:
    """A run's place in its study (condition, variant, backbone, method, seed), for sorting."""
    return type(value) is list and len(value) == 5 and all(is_count(part) for part in value)


class Schema(NamedTuple):
    what: str  # what the file is, for the message
    fields: dict[str, Check]  # each key it must hold, and its check
    optional: frozenset[str] = frozenset()  # keys that files of earlier versions lack
    any_key: Check | None = None  # instead of `fields`: a mapping of names to such values


SETTINGS = Schema(
    "a grid's settings",
    {
        "study": is_text,
        "epochs": optional(is_count),
        "linear_epochs": optional(is_count),
        "train_subset": is_count,
        "K": optional(is_count),
        "knn": is_count,
        "retrieval": is_count,
    },
)
TIMINGS = Schema("the stages' wall times", {}, any_key=is_seconds)
RECORD = Schema(
    "a run's record",
    {
        "condition": is_text,
        "variant": is_text,
        "method": is_text,
        "backbone": is_text,
        "seed": is_count,
        "epochs": is_count,
        "evaluation_epochs": is_count,
        "train_subset": is_count,
        "knn": is_count,
        "knn_train_subset": is_count,
        "retrieval": is_count,
        "accuracy": is_percent,
        "top5": optional(is_percent),
        "knn_accuracy": optional(is_percent),
        "retrieval_precision": optional(is_percent),
        "probe_accuracy": optional(is_percent),
        "wall_seconds": is_seconds,
        "stage1_checkpoint": is_text,
        "evaluation_checkpoint": is_text,
        "order": is_order,
        "finished": is_text,
    },
    optional=frozenset({"knn", "knn_train_subset", "retrieval", "probe_accuracy"}),
)


def problem_of(data: object, schema: Schema) -> str | None:
    """Why `data` is not a file of `schema`, or None when it is."""
    if type(data) is not dict:
        return f"a JSON {type(data).__name__}, not {schema.what}"
    if schema.any_key is not None:
        wrong = [key for key, value in data.items() if not schema.any_key(value)]
    else:
        missing = [key for key in schema.fields if key not in data and key not in schema.optional]
        if missing:
            return f"{schema.what} without '{missing[0]}'"
        wrong = [key for key, check in schema.fields.items() if key in data and not check(data[key])]
    if not wrong:
        return None
    value = data[wrong[0]]
    # a nested value is named by its type: printing it could recurse as deep as the file nests
    shown = repr(value)[:40] if isinstance(value, (str, int, float, bool, type(None))) else f"a {type(value).__name__}"
    return f"its '{wrong[0]}' is {shown}, not a value of {schema.what}"


def read_grid_file(path: Path, schema: Schema) -> tuple[dict | None, str | None]:
    """(its content, None) when `path` holds a JSON object of `schema`; (None, why not) otherwise:
    truncated, not UTF-8 JSON, nested past Python's recursion limit, or of other keys or types."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        return None, "nested too deep" if isinstance(error, RecursionError) else "truncated or not JSON text"
    problem = problem_of(data, schema)
    return (None, problem) if problem else (data, None)


def read_test_result(path: Path, columns: list[str]) -> tuple[dict | None, str | None]:
    """({column: percentage}, None) when the last row of `path`, a test log of test.py, holds each
    of `columns` as a percentage; (None, why not) otherwise. test.py appends its row, so an
    earlier row left open (an unclosed quote) swallows it and leaves another row last."""
    try:
        with open(path, newline="", encoding="utf-8", errors="replace") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as error:
        return None, error.strerror or str(error)
    except csv.Error as error:
        return None, f"not CSV: {error}"
    if not rows:
        return None, "no result row"
    result = {}
    for column in columns:
        text = rows[-1].get(column)
        if not text:
            return None, f"its last row has no '{column}'"
        try:
            value = float(text)
        except ValueError:
            value = None
        if not is_percent(value):
            return None, f"its last row's '{column}' is {text[:40]!r}, not a percentage"
        result[column] = round(value, 4)
    return result, None


def read_probe_accuracy(log: Path) -> float | None:
    """The online probe's top-1 accuracy (`val_probe_accuracy`, or `test_probe_accuracy` without
    a validation split) in the last row of a stage-1 log that has it as a percentage; None
    without a probe, or when the log cannot be read."""
    try:
        with open(log, newline="", encoding="utf-8", errors="replace") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, csv.Error):
        return None
    for column in ("val_probe_accuracy", "test_probe_accuracy"):
        cells = [row.get(column) for row in rows if row.get(column)]
        if cells:
            try:
                value = float(cells[-1])  # type: ignore[arg-type]
            except ValueError:
                return None
            return round(value, 4) if is_percent(value) else None
    return None


def unfounded_record(path: Path, record: dict) -> str | None:
    """Why a record of an earlier command is not what its run left, or None: its file is named
    after another run, its evaluation checkpoint is another seed's, or that checkpoint's test
    log does not end with its accuracy (a record copied or edited by hand)."""
    name = "_".join(
        filter(
            None,
            [record["condition"], record["variant"], record["method"], record["backbone"], f"seed_{record['seed']}"],
        )
    )
    if path.stem != name:
        return f"it describes run {name}"
    evaluation = Path(record["evaluation_checkpoint"])
    if f"_seed_{record['seed']}_" not in evaluation.name:
        return f"its evaluation checkpoint {evaluation.name} is not of seed {record['seed']}"
    tested, problem = read_test_result(evaluation.parent / f"log_{evaluation.stem}_test.csv", ["accuracy"])
    if problem or tested is None or tested["accuracy"] != round(record["accuracy"], 4):
        return "its evaluation's test log does not end with its accuracy"
    return None


def describe_records(records: list[dict]) -> str:
    """Records in a few words: per method (and variant), its seeds."""
    seeds: dict[str, list[int]] = {}
    for record in records:
        name = " ".join(filter(None, [record["method"], record["variant"]]))
        seeds.setdefault(name, []).append(record["seed"])
    return "; ".join(
        f"{name} seed{'s' if len(s) > 1 else ''} {', '.join(map(str, sorted(s)))}" for name, s in seeds.items()
    )
