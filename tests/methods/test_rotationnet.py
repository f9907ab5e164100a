"""RotationNet: the rotated batch and its labels, checkpoints, a real run, the stage scripts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from backbones import build_backbone
from engine.checkpoint import read_checkpoint
from methods.rotationnet import rotations
from tests.helpers import (
    build_method,
    cifar10_subset,
    save_original_checkpoint,
    three_stage_commands,
    train_method,
)


def test_rotations_are_counter_clockwise_quarter_turns_rotation_major():
    image = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2)
    rotated, labels = rotations(torch.cat([image, 10 * image]))
    assert labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3] and labels.dtype == torch.int64
    # As displayed (row 0 on top), a counter-clockwise quarter turn brings the right column up.
    expected = [[[1, 2], [3, 4]], [[2, 4], [1, 3]], [[4, 3], [2, 1]], [[3, 1], [4, 2]]]
    for k, grid in enumerate(expected):
        assert rotated[2 * k, 0].tolist() == grid
        assert torch.equal(rotated[2 * k + 1], 10 * rotated[2 * k])


def test_non_square_images_are_refused():
    with pytest.raises(ValueError, match="square images, got 32x48"):
        rotations(torch.zeros(2, 3, 32, 48))


def test_training_step_loss_and_accuracy():
    method = build_method("rotationnet")
    # A head that always answers "not rotated" is right on exactly the first quarter.
    with torch.no_grad():
        method.classifier.weight.zero_()
        method.classifier.bias.copy_(torch.tensor([5.0, 0.0, 0.0, 0.0]))
    out = method.training_step([torch.randn(3, 3, 32, 32)], torch.full((3,), -1), torch.arange(3))
    correct, count = out.metrics["accuracy"]
    assert (correct / count).item() == 25.0 and count.item() == 12 and out.loss_weight == 12
    expected = nn.functional.cross_entropy(
        torch.tensor([[5.0, 0, 0, 0]]).repeat(12, 1), torch.arange(4).repeat_interleave(3)
    )
    torch.testing.assert_close(out.loss, expected)


def test_checkpoint_round_trip_and_original_files(tmp_path):
    method = build_method("rotationnet")
    method.training_step([torch.randn(2, 3, 32, 32)], torch.zeros(2, dtype=torch.long), torch.arange(2)).loss.backward()
    method.optimizer.step()
    state = method.checkpoint_state()
    assert set(state) == {"classifier", "backbone", "optimizer"}
    assert set(state["classifier"]) == {"weight", "bias"} and state["classifier"]["weight"].shape == (4, 64)
    fresh = build_method("rotationnet", 2)
    fresh.load_checkpoint_state(state)
    assert all(torch.equal(value, fresh.state_dict()[key]) for key, value in method.state_dict().items())

    # A file as the original code writes it: its own modules, two Adam groups, nothing else.
    backbone, classifier = build_backbone("conv4"), nn.Linear(64, 4)
    path = tmp_path / "rotationnet_cifar10_conv4_seed_1_epoch_200.tar"
    save_original_checkpoint(path, backbone, "classifier", classifier)
    fresh.load_checkpoint_state(read_checkpoint(path))
    assert torch.equal(fresh.classifier.weight, classifier.weight)
    assert torch.equal(fresh.backbone.state_dict()["layer1.conv.weight"], backbone.state_dict()["layer1.conv.weight"])
    assert len(fresh.optimizer.state_dict()["state"]) == len(read_checkpoint(path)["optimizer"]["state"])


def test_learns_rotations_on_real_images(cifar10_root, tmp_path):
    # 3 epochs x 20 steps of 32 images x 4 rotations; chance is 25%, log 4 = 1.386.
    rows = train_method(build_method("rotationnet"), cifar10_subset(cifar10_root, 640), tmp_path, epochs=3)
    losses = [float(row["loss"]) for row in rows]
    assert losses[-1] < losses[0] - 0.08, losses
    assert float(rows[-1]["accuracy"]) > 38.0, rows[-1]
    assert float(rows[-1]["score"]) == float(rows[-1]["accuracy"])


def test_same_seed_same_loss(cifar10_root, tmp_path):
    data = cifar10_subset(cifar10_root, 64)
    methods = [build_method("rotationnet", 3), build_method("rotationnet", 3)]
    loss_a, loss_b = [
        train_method(method, data, tmp_path / name, seed=3)[0]["loss"] for method, name in zip(methods, "ab")
    ]
    assert loss_a == loss_b
    weights_b = methods[1].state_dict()
    assert all(torch.equal(value, weights_b[key]) for key, value in methods[0].state_dict().items())


def test_three_stages(small_cifar10_root, tmp_path):
    state = three_stage_commands("rotationnet", small_cifar10_root, tmp_path)
    assert {"classifier", "backbone", "optimizer"} <= set(state)
    assert state["classifier"]["weight"].shape == (4, 64)
