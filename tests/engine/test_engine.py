"""The shared engine: real short runs, seeded determinism and exact resume."""

from __future__ import annotations

import pytest
import torch

from datasets import load_dataset
from datasets.augment import CropColorViews
from methods.base import Method, StepOutput, ViewGroup
from tests.helpers import engine_for, make_engine, read_log


@pytest.fixture(scope="module")
def real_subset(cifar10_root):
    return load_dataset("cifar10", "train", cifar10_root, download=False).balanced_subset(960, seed=0)


def test_relationnet_learns_on_real_images(real_subset, tmp_path):
    # 8 epochs x 30 steps = 240 steps of 32 images x 4 views.
    engine = make_engine("relationnet", real_subset, tmp_path, epochs=8)
    engine.fit()
    rows = read_log(tmp_path / "log.csv")
    assert [int(r["epoch"]) for r in rows] == list(range(1, 9))  # 1-based, as the checkpoint names
    losses = [float(r["loss"]) for r in rows]
    # Chance level: every pair at p = 0.5 costs 0.5 * 0.25 * log 2 = 0.0866.
    assert losses[-1] < 0.92 * losses[0], losses
    assert float(rows[-1]["accuracy"]) > 60.0  # pairs are half positive: chance is 50%
    assert float(rows[-1]["score"]) == float(rows[-1]["accuracy"])
    assert {"accuracy_positive", "accuracy_negative", "lr", "seconds"} <= set(rows[0])


def test_standard_learns_on_real_images(real_subset, tmp_path):
    engine = make_engine("standard", real_subset, tmp_path, epochs=4)
    engine.fit()
    rows = read_log(tmp_path / "log.csv")
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"])
    assert float(rows[-1]["accuracy"]) > 20.0  # 10 classes: chance is 10%


def test_same_seed_same_numbers_and_other_seed_differs(real_subset, tmp_path):
    subset = real_subset.balanced_subset(200, seed=0)
    runs = []
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        folder = tmp_path / name
        folder.mkdir()
        engine = make_engine("relationnet", subset, folder, seed=seed, epochs=2)
        engine.fit()
        runs.append((read_log(folder / "log.csv"), engine.method.backbone.state_dict()))
    (log_a, weights_a), (log_b, weights_b), (log_c, _) = runs
    assert [r["loss"] for r in log_a] == [r["loss"] for r in log_b]
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    assert [r["loss"] for r in log_a] != [r["loss"] for r in log_c]


@pytest.mark.parametrize("method_name", ["relationnet", "simclr", "standard"])
def test_resume_at_an_epoch_boundary_is_exact(real_subset, tmp_path, method_name):
    subset = real_subset.balanced_subset(160, seed=0)
    straight = tmp_path / "straight"
    straight.mkdir()
    reference = make_engine(method_name, subset, straight, epochs=4)
    reference.fit()

    resumed_dir = tmp_path / "resumed"
    resumed_dir.mkdir()
    interrupted = make_engine(method_name, subset, resumed_dir, epochs=4)
    run_epoch = interrupted.run_epoch

    def stop_at_epoch_2(epoch, partial=None):
        if epoch == 2:
            raise KeyboardInterrupt
        return run_epoch(epoch, partial)

    interrupted.run_epoch = stop_at_epoch_2
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit()
    state = torch.load(resumed_dir / "epoch_2.tar", weights_only=True)
    engine = make_engine(method_name, subset, resumed_dir, seed=1, epochs=4)
    engine.method.load_checkpoint_state(state)
    engine.fit(start_epoch=state["epoch"], resume_state=state)

    for key, value in reference.method.state_dict().items():
        assert torch.equal(value, engine.method.state_dict()[key]), key
    final_a = torch.load(straight / "epoch_4.tar", weights_only=True)["optimizer"]["state"]
    final_b = torch.load(resumed_dir / "epoch_4.tar", weights_only=True)["optimizer"]["state"]
    for index in final_a:
        for name, value in final_a[index].items():
            assert torch.equal(value, final_b[index][name])
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(read_log(straight / "log.csv")) == strip(read_log(resumed_dir / "log.csv"))


def test_non_finite_loss_stops_with_the_epoch_and_step(real_subset, tmp_path):
    from utils.errors import UserError

    engine = make_engine("relationnet", real_subset.balanced_subset(128, seed=0), tmp_path, epochs=3)
    engine.fit(0)  # three good epochs
    before = (tmp_path / "epoch_3.tar").read_bytes()
    engine.plan.epochs = 5
    with torch.no_grad():
        engine.method.relation_module.linear2.weight.fill_(float("nan"))
    with pytest.raises(UserError, match="non-finite inside epoch 4, at step 1"):
        engine.fit(3)
    assert (tmp_path / "epoch_3.tar").read_bytes() == before
    assert not (tmp_path / "epoch_4.tar").exists()
    assert len(read_log(tmp_path / "log.csv")) == 3


class MultiCropProbe(Method):
    """Two global views at 32 px and three local views at 13 px; records what it is given."""

    name = "multicrop_probe"
    checkpoint_keys = {"backbone": "backbone", "optimizer": "optimizer"}

    def __init__(self, backbone, num_classes, lr=None):
        super().__init__(backbone, num_classes, lr)
        self.optimizer = torch.optim.SGD(backbone.parameters(), lr=0.01)
        self.shapes, self.steps = [], []

    @property
    def view_groups(self):
        return [ViewGroup(2, CropColorViews(size=32)), ViewGroup(3, CropColorViews(size=13))]

    def training_step(self, views, labels, index):
        self.shapes.append([tuple(group.shape) for group in views])
        loss = sum(self.backbone(group).square().mean() for group in views)
        return StepOutput(loss=loss, loss_weight=len(index))

    def after_step(self, step):
        self.steps.append(step)


def test_view_groups_of_different_sizes_arrive_in_order(real_subset, tmp_path):
    from backbones import build_backbone

    method = MultiCropProbe(build_backbone("conv4"), 10)
    engine_for(method, real_subset.balanced_subset(40, seed=0), tmp_path, epochs=2, batch=16).fit()
    # 40 images in batches of 16: steps of 16, 16 and 8 images, twice.
    assert method.shapes[:3] == [[(32, 3, 32, 32), (48, 3, 13, 13)]] * 2 + [[(16, 3, 32, 32), (24, 3, 13, 13)]]
    assert method.steps == [1, 2, 3, 4, 5, 6]  # after_step counts the run's optimizer steps


def test_a_methods_epoch_notes_are_one_line():
    from engine.loop import notes_line

    assert notes_line({"learning_rates": [1e-05, 0.0001]}) == "[INFO] Learning rates: 1e-05, 0.0001"
    assert notes_line({"non_empty_clusters": 3, "NMI_with_the_previous_epoch": 0.25}) == (
        "[INFO] Non empty clusters: 3; NMI with the previous epoch: 0.25"
    )


@pytest.mark.parametrize("method_name", ["relic", "simclr"])
def test_views_are_in_the_input_range_of_the_methods_reference(small_cifar10_root, tmp_path, method_name):
    """The views of relic stay in [0, 1] (relic-pytorch); simclr's are normalised with the
    data set's mean and std (the original code): mapped back by x * std + mean, both are
    pixels in [0, 1], and only the normalised ones go below 0."""
    data = load_dataset("cifar10", "train", small_cifar10_root, download=False).balanced_subset(16, seed=0)
    engine = make_engine(method_name, data, tmp_path, batch=8)
    engine.generator.manual_seed(0)
    views = engine.augment_views(data.images[:8])[0]
    assert engine.data.mean == ((0.0,) * 3 if method_name == "relic" else data.mean)
    mean = torch.tensor(engine.data.mean).view(1, 3, 1, 1)
    std = torch.tensor(engine.data.std).view(1, 3, 1, 1)
    pixels = views * std + mean
    assert pixels.min() >= -1e-6 and pixels.max() <= 1 + 1e-6
    assert (views.min() < 0) == (method_name == "simclr")
