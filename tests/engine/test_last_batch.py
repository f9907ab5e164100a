"""The engine's batching: a last batch of a single image (which batch norm cannot normalise in
training mode) joins the step before it, for every method; every image is still visited once."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import build_method, cifar10_subset, engine_for
from utils.errors import UserError


def test_deepcluster_trains_when_the_last_batch_would_hold_one_image(small_cifar10_root, tmp_path, single_cpu_thread):
    data = cifar10_subset(small_cifar10_root, 17)  # batches 8, 8, 1: its head's BatchNorm1d failed
    method = build_method("deepcluster", 1, "--num_clusters", "4", "--kmeans_restarts", "1")
    engine = engine_for(method, data, tmp_path, epochs=1, batch=8, checkpoints=False)
    order = torch.randperm(len(data))
    steps = engine.steps_per_epoch(len(order))
    assert steps == 2 and len(engine.batch_index(order, 1)) == 9
    assert torch.equal(torch.cat([engine.batch_index(order, step) for step in range(steps)]), order)
    engine.fit()
    assert (tmp_path / "log.csv").exists()


@pytest.mark.parametrize(
    "images,batch,drop_last,sizes",
    [
        (16, 8, False, [8, 8]),
        (18, 8, False, [8, 8, 2]),
        (17, 8, True, [8, 8]),  # dropped, as the method asks
        (3, 8, False, [3]),
    ],
)
def test_batch_sizes_of_an_epoch(small_cifar10_root, tmp_path, images, batch, drop_last, sizes):
    method = build_method("rotationnet")
    method.drop_last = drop_last
    engine = engine_for(method, cifar10_subset(small_cifar10_root, images), tmp_path, batch=batch)
    order = torch.arange(images)
    assert [len(engine.batch_index(order, step)) for step in range(engine.steps_per_epoch(images))] == sizes


def test_a_single_training_image_is_one_line(small_cifar10_root, tmp_path):
    engine = engine_for(build_method("rotationnet"), cifar10_subset(small_cifar10_root, 1), tmp_path, epochs=1)
    with pytest.raises(UserError, match="a single training image"):
        engine.fit()
