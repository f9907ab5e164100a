"""Pins the numbers of every method: refactoring the code must not change a single one.

For each of the seven methods, one short seeded stage-1 epoch on written CIFAR-10 files; the
CSV log row, the columns, the checkpoint keys and a fingerprint of every saved tensor are
compared with `tests/golden/pinned_numbers.json`, recorded on the code before the layered
reshape. One relationnet pipeline also pins the stage-2 and stage-3 accuracies.

The fingerprint of a tensor is (sum, sum of absolute values) in float64: any change of the
random streams, the order of operations or the initialisation moves it far beyond the
tolerance, which only absorbs the last-bit differences another CPU's kernels could give.
Flags added later (a new method's) may join the recorded arguments; the pinned ones keep their values.

`PIN_NUMBERS_WRITE=1 pytest tests/test_pinned_numbers.py` rewrites the file; do that only
for a change that is meant to change the numbers, and say so in the commit.
"""
from __future__ import annotations

import csv
import json
import math
import os

import pytest
import torch

import test as stage3
import train_linear_evaluation as stage2
import train_unsupervised as stage1
from tests.helpers import REPO, run_stage, stage_arguments

PINNED = REPO / "tests" / "golden" / "pinned_numbers.json"
METHOD_ARGS = {
    "relationnet": ["--K", "3", "--data_size", "16"],
    "simclr": ["--data_size", "16"],
    "rotationnet": ["--data_size", "16"],
    "deepcluster": ["--data_size", "16", "--kmeans_restarts", "2"],
    "deepinfomax": ["--data_size", "16"],
    "standard": ["--data_size", "16"],
    "randomweights": [],
}
REL, ABS = 1e-5, 1e-6


def fingerprint(value):
    """Nested dicts/lists of tensors -> the same shape of [sum, abs-sum] pairs; numbers kept."""
    if isinstance(value, torch.Tensor):
        if value.is_floating_point() or value.dtype in (torch.int64, torch.int32, torch.uint8):
            v = value.double()
            return [v.sum().item(), v.abs().sum().item()]
        return None
    if isinstance(value, dict):
        return {str(k): fingerprint(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [fingerprint(v) for v in value]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    return None


def weights_of(state: dict) -> dict:
    """The model and optimizer parts of a checkpoint (not its arguments, RNG or versions)."""
    skip = {"args", "rng", "seed", "method", "backbone_name", "dataset", "epoch", "format_version",
            "world_size", "interrupted"}
    return {key: fingerprint(value) for key, value in state.items() if key not in skip}


def read_rows(path):
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def measure(root, out) -> dict:
    results = {}
    for method, extra in METHOD_ARGS.items():
        args = stage_arguments(root, out, seed=3) + ["--method", method, "--epochs", "1",
                                                      "--train_subset", "48", *extra]
        run_stage(stage1, args)
        folder = out / method / "cifar10"
        header = f"{method}_cifar10_conv4_seed_3"
        path = folder / (f"{header}.tar" if method == "randomweights" else f"{header}_epoch_1.tar")
        state = torch.load(path, weights_only=True)
        log = folder / f"log_{header}.csv"
        results[method] = {
            "keys": sorted(state),
            # Every flag with its resolved default: the command line must not change either.
            "args": {k: v for k, v in state["args"].items() if k not in ("data_root", "checkpoint_dir")},
            "weights": weights_of(state),
            "log_columns": log.read_text().splitlines()[0].split(",") if log.exists() else [],
            "log_rows": read_rows(log) if log.exists() else [],
        }
    relation = out / "relationnet" / "cifar10" / "relationnet_cifar10_conv4_seed_3_epoch_1.tar"
    common = stage_arguments(root, out, seed=3)
    run_stage(stage2, common + ["--checkpoint", str(relation), "--epochs", "10", "--data_size", "16"])
    linear = relation.with_name("relationnet_cifar10_conv4_seed_3_epoch_10_linear_evaluation.tar")
    run_stage(stage3, common + ["--checkpoint", str(linear)])
    folder = relation.parent
    results["pipeline"] = {
        "linear_evaluation_log": read_rows(folder / "log_relationnet_cifar10_conv4_seed_3_epoch_10_linear_evaluation.csv"),
        "linear_evaluation_weights": weights_of(torch.load(linear, weights_only=True)),
        "test_log": [{k: v for k, v in row.items() if k not in ("seconds", "time", "checkpoint")}
                     for row in read_rows(folder / "log_relationnet_cifar10_conv4_seed_3_epoch_10_linear_evaluation_test.csv")],
    }
    return results


def assert_close(expected, actual, where="") -> None:
    if where.endswith("/args"):  # flags added later (a new method's) are allowed; old ones keep their values
        actual = {key: value for key, value in actual.items() if key in expected}
    if isinstance(expected, dict):
        assert isinstance(actual, dict) and set(expected) == set(actual), \
            f"{where}: keys {sorted(expected)} != {sorted(actual) if isinstance(actual, dict) else actual}"
        for key in expected:
            assert_close(expected[key], actual[key], f"{where}/{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(expected) == len(actual), f"{where}: {expected} != {actual}"
        for i, (e, a) in enumerate(zip(expected, actual)):
            assert_close(e, a, f"{where}[{i}]")
    elif isinstance(expected, str):
        try:
            e, a = float(expected), float(actual)
        except ValueError:
            assert expected == actual, f"{where}: {expected!r} != {actual!r}"
            return
        assert math.isclose(e, a, rel_tol=REL, abs_tol=ABS) or (math.isnan(e) and math.isnan(a)), \
            f"{where}: {expected} != {actual}"
    elif isinstance(expected, float):
        assert math.isclose(expected, actual, rel_tol=REL, abs_tol=ABS) or (math.isnan(expected) and math.isnan(actual)), \
            f"{where}: {expected} != {actual}"
    else:
        assert expected == actual, f"{where}: {expected!r} != {actual!r}"


def test_every_method_keeps_its_numbers(small_cifar10_root, tmp_path, capsys):
    results = json.loads(json.dumps(measure(small_cifar10_root, tmp_path)))  # the types JSON gives back
    if os.environ.get("PIN_NUMBERS_WRITE") == "1":
        PINNED.parent.mkdir(exist_ok=True)
        PINNED.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
        pytest.skip(f"rewrote {PINNED}")
    assert_close(json.loads(PINNED.read_text()), results)
