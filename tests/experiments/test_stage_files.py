"""What stage 3 reads from a checkpoint: the `kind` stage 2 records, or the keys of older files."""

from __future__ import annotations

import pytest

from experiments.linear_evaluation import EVALUATION_KINDS
from experiments.testing import holds_linear_classifier


@pytest.mark.parametrize("kind", EVALUATION_KINDS)
def test_a_stage2_kind_holds_a_classifier(kind):
    assert holds_linear_classifier({"kind": kind})


def test_a_recorded_kind_is_believed_over_the_keys():
    assert not holds_linear_classifier({"kind": "pretraining", "optimizer_lineval": {}})


def test_files_without_a_kind_are_read_by_their_keys():
    assert holds_linear_classifier({"optimizer_lineval": {}})  # a supervised stage-1 run, an older stage-2 file
    assert not holds_linear_classifier({"backbone": {}, "relation": {}})
