import argparse
import copy
import pickle
from dataclasses import FrozenInstanceError

import pytest

from experiments.arguments import freeze


def test_frozen_arguments_read_like_a_namespace_and_refuse_every_change():
    args = freeze(argparse.Namespace(seed=-1, epochs=3, methods=["a"]), seed=7)
    assert (args.seed, args.epochs, args.methods) == (7, 3, ["a"])
    with pytest.raises(FrozenInstanceError):
        args.seed = 1
    with pytest.raises(FrozenInstanceError):
        del args.epochs
    with pytest.raises(AttributeError, match="no 'lr'"):
        args.lr  # noqa: B018
    assert getattr(args, "lr", None) is None  # a missing argument reads as argparse's would


def test_the_record_is_a_copy_with_the_resolved_values():
    parsed = argparse.Namespace(seed=-1, method=None)
    args = freeze(parsed, seed=12, method="simclr")
    record = args.record()
    assert record == {"seed": 12, "method": "simclr"}
    record["seed"] = 0
    assert args.seed == 12 and parsed.seed == -1  # neither the frozen record nor the parse changes


def test_frozen_arguments_survive_copy_and_pickle():
    args = freeze(argparse.Namespace(seed=3, out="runs/x"))
    for clone in (copy.copy(args), copy.deepcopy(args), pickle.loads(pickle.dumps(args))):
        assert clone.record() == args.record()
