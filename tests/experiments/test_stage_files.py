"""What stages 2 and 3 read from a checkpoint: the `kind` stage 2 records, or the keys of older
files, and the input range of the method that trained its backbone."""

from __future__ import annotations

import pytest

from experiments.linear_evaluation import EVALUATION_KINDS
from experiments.stage import backbone_inputs_normalised
from experiments.testing import holds_linear_classifier


@pytest.mark.parametrize("kind", EVALUATION_KINDS)
def test_a_stage2_kind_holds_a_classifier(kind):
    assert holds_linear_classifier({"kind": kind})


def test_a_recorded_kind_is_believed_over_the_keys():
    assert not holds_linear_classifier({"kind": "pretraining", "optimizer_lineval": {}})


def test_files_without_a_kind_are_read_by_their_keys():
    assert holds_linear_classifier({"optimizer_lineval": {}})  # a supervised stage-1 run, an older stage-2 file
    assert not holds_linear_classifier({"backbone": {}, "relation": {}})


def test_a_backbone_is_fed_the_input_range_of_the_method_that_trained_it():
    assert not backbone_inputs_normalised({"method": "relic"})  # a stage-1 file
    assert not backbone_inputs_normalised({"pretraining_method": "relic", "method": "standard"})  # a stage-2 file
    assert backbone_inputs_normalised({"method": "simclr"})
    assert not backbone_inputs_normalised({"method": "simclr"}, "relic")  # named by --method
    assert backbone_inputs_normalised({"backbone": {}, "relation": {}})  # the original code's file
    assert backbone_inputs_normalised({"method": "no such method"})
