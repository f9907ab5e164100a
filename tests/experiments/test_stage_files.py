"""What stages 2 and 3 read from a checkpoint: the `kind` stage 2 records, or the keys of older
files, and the input range of the method that trained its backbone."""

from __future__ import annotations

import pytest

from experiments.linear_evaluation import EVALUATION_KINDS
from experiments.stage import backbone_inputs_normalised
from experiments.testing import holds_linear_classifier
from utils.errors import UserError


@pytest.mark.parametrize("kind", EVALUATION_KINDS)
def test_a_stage2_kind_holds_a_classifier(kind):
    assert holds_linear_classifier({"kind": kind})


def test_a_recorded_kind_is_believed_over_the_keys():
    assert not holds_linear_classifier({"kind": "pretraining", "optimizer_lineval": {}})


def test_files_without_a_kind_are_read_by_their_keys():
    assert holds_linear_classifier({"optimizer_lineval": {}})  # a supervised stage-1 run, an older stage-2 file
    assert not holds_linear_classifier({"backbone": {}, "relation": {}})


def test_a_backbone_is_fed_the_input_range_its_checkpoint_records():
    assert not backbone_inputs_normalised({"method": "relic", "inputs_normalised": False}, "f.tar")
    assert not backbone_inputs_normalised({"pretraining_method": "relic", "inputs_normalised": False}, "f.tar")
    assert backbone_inputs_normalised({"method": "simclr"}, "f.tar")
    assert backbone_inputs_normalised({"backbone": {}, "relation": {}}, "f.tar")  # the original code's file
    # A relic file written before relic's views stayed in [0, 1] was trained on normalised images.
    assert backbone_inputs_normalised({"method": "relic"}, "f.tar")


def test_a_forged_input_range_is_refused_in_one_line():
    with pytest.raises(UserError, match="f.tar: its 'inputs_normalised' entry is 'no', not true or false"):
        backbone_inputs_normalised({"inputs_normalised": "no"}, "f.tar")
