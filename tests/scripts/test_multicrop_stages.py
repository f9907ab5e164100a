"""swav and dino through the three stages on real CIFAR-10 images (a few of the shared
sample's, where it is present) with Conv-4 and ResNet-18 (CIFAR stem), with two local views:
stage 2 and test.py score the backbone the method trained, and stage 1's checkpoint holds
SwAV's queue and DINO's centre, teacher and momentum."""

from __future__ import annotations

import math
import pickle

import pytest
import torch

from tests.helpers import HAS_SHARED_CIFAR10, SHARED_CIFAR10, load, read_log, stage_arguments, three_stages

# Small heads, a small queue, no warm-up: the tests' cost, not the reference settings.
SMALL_HEADS = {
    "swav": ["--swav_hidden", "64", "--swav_projection", "32", "--swav_prototypes", "50", "--swav_queue_size", "16"],
    "dino": ["--dino_hidden", "64", "--dino_projection", "32", "--dino_prototypes", "50"],
}


@pytest.fixture(scope="module")
def real_cifar10_root(tmp_path_factory, small_cifar10_root):
    """The first 40 images of each of the shared sample's batch files, in the official format
    (a test split of 40 images keeps test.py's ResNet-18 pass short); the written tiny
    CIFAR-10 where the sample is absent."""
    if not HAS_SHARED_CIFAR10:
        return small_cifar10_root
    root = tmp_path_factory.mktemp("real_cifar10")
    folder = root / SHARED_CIFAR10.name
    folder.mkdir()
    for path in sorted(SHARED_CIFAR10.iterdir()):
        with open(path, "rb") as handle:
            entries = pickle.load(handle, encoding="bytes")
        if b"data" in entries:
            entries = {key: value[:40] if key != b"batch_label" else value for key, value in entries.items()}
        with open(folder / path.name, "wb") as handle:
            pickle.dump(entries, handle, protocol=2)
    return root


@pytest.mark.parametrize("backbone", ["conv4", "resnet18"])
@pytest.mark.parametrize("method", list(SMALL_HEADS))
def test_three_stages(real_cifar10_root, tmp_path, capsys, method, backbone):
    args = stage_arguments(real_cifar10_root, tmp_path, backbone=backbone)
    stage1_file, stage2_file, stage1_out, test_out = three_stages(
        args,
        tmp_path,
        "cifar10",
        method,
        capsys,
        backbone=backbone,
        stage1_args=[
            "--data_size",
            "8",
            "--train_subset",
            "24",
            f"--{method}_warmup_epochs",
            "0",
            f"--{method}_local_views",
            "2",
            *SMALL_HEADS[method],
        ],
        stage2_args=["--train_subset", "40"],
    )
    assert "Test accuracy:" in test_out and "feature_std" in stage1_out
    state = load(stage1_file)
    assert state["steps"] == 3 and state["args"][f"{method}_local_views"] == 2
    if method == "swav":  # three steps of 8 images: the newest 16 projections of each global view
        assert state["queue"].shape == (2, 16, 32)
        torch.testing.assert_close(state["queue"].norm(dim=-1), torch.ones(2, 16))
    else:
        assert state["center"].abs().sum() > 0 and state["momentum"] == 1.0
    evaluated = load(stage2_file)["backbone"]
    assert all(torch.equal(evaluated[key], value) for key, value in state["backbone"].items())
    log = read_log(stage1_file.with_name(f"log_{method}_cifar10_{backbone}_seed_1.csv"))
    assert len(log) == 1 and math.isfinite(float(log[0]["loss"]))
