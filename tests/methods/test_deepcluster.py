"""The deepcluster method: per-epoch clustering, its head, checkpoints, real runs, stage scripts."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

from backbones import build_backbone
from datasets import load_dataset
from datasets.augment import CropFlipViews
from methods.base import EpochContext, ViewGroup
from methods.config import ConfigError
from methods.deepcluster import DeepCluster
from tests.helpers import REPO, make_engine, read_log
from utils.errors import UserError

pytestmark = pytest.mark.usefixtures("single_cpu_thread")


def _options(**overrides):
    return {"num_clusters": 0, "kmeans_restarts": 2, "sampling": "weighted", **overrides}


def make_method(seed=0, num_classes=10, **overrides):
    torch.manual_seed(seed)
    return DeepCluster(build_backbone("conv4"), num_classes, DeepCluster.Config(**_options(**overrides)))


@pytest.fixture(scope="module")
def real_subset(cifar10_root):
    return load_dataset("cifar10", "train", cifar10_root, download=False).balanced_subset(1000, seed=0)


# ---------------------------------------------------------------------- flags and head


@pytest.mark.parametrize("overrides", [{"num_clusters": -3}, {"kmeans_restarts": 0}, {"sampling": "foo"}])
def test_bad_options_are_named(overrides):
    with pytest.raises(ConfigError) as raised:
        DeepCluster.Config(**_options(**overrides))
    assert raised.value.fields == tuple(overrides) and str(raised.value).startswith(f"{next(iter(overrides))} ")
    assert "\n" not in str(raised.value)
    DeepCluster.Config(**_options())


def test_head_and_clusters_follow_the_original():
    method = make_method()
    assert method.num_clusters == 100  # 10 x classes
    assert make_method(num_clusters=7).num_clusters == 7
    assert [type(m).__name__ for m in method.classifier] == ["Linear", "BatchNorm1d", "LeakyReLU", "Linear"]
    assert method.classifier.linear2.out_features == 100
    assert [g["lr"] for g in method.optimizer.param_groups] == [1e-3, 1e-3]
    assert method.view_groups == [ViewGroup(1, CropFlipViews())] and method.score_name == "accuracy"


# ---------------------------------------------------------------------- one epoch start


def epoch_context(data, seed=5):
    return EpochContext(
        epoch=0,
        total_epochs=3,
        steps_per_epoch=1,
        images=data.images,
        labels=data.labels,
        data=data,
        device=torch.device("cpu"),
        seed=seed,
    )


def test_epoch_start_clusters_resets_the_layer_and_weights_the_classes(real_subset):
    data = real_subset.balanced_subset(300, seed=0)
    method = make_method(num_clusters=20)
    method.train()
    # One step so Adam holds moments for the output layer.
    method.assignments = torch.randint(0, 20, (len(data),))
    views = torch.randn(8, 3, 32, 32)
    out = method.training_step([views], torch.zeros(8, dtype=torch.long), torch.arange(8))
    out.loss.backward()
    method.optimizer.step()
    layer = method.classifier.linear2
    assert layer.weight in method.optimizer.state
    method.assignments = torch.empty(0, dtype=torch.long)  # as before the first epoch

    method.on_epoch_start(epoch_context(data))
    labels = method.assignments
    assert labels.shape == (300,) and 0 <= labels.min() and labels.max() < 20
    assert layer.weight not in method.optimizer.state and layer.bias not in method.optimizer.state
    assert torch.all(layer.bias == 0)
    assert 0.007 < layer.weight.std().item() < 0.013
    counts = torch.bincount(labels, minlength=20).float()
    torch.testing.assert_close(method.class_weights, 1 - counts / 300)
    assert math.isnan(method.nmi)
    assert method.backbone.training  # the feature pass left train mode as it found it

    # Un-augmented images through a backbone in eval mode (BN statistics untouched) and a
    # seeded k-means: the same seed and epoch give the same clusters, hence an NMI of 1.
    method.on_epoch_start(epoch_context(data))
    assert torch.equal(method.assignments, labels) and method.nmi == pytest.approx(1.0)


def test_uniform_sampling_gives_each_cluster_equal_turns():
    method = make_method(num_clusters=8, sampling="uniform")
    # Clusters of 150, 40, 7 and 3 images; clusters 1, 4, 5 and 6 are empty.
    method.assignments = torch.cat(
        [torch.full((150,), 0), torch.full((40,), 2), torch.full((7,), 3), torch.full((3,), 7)]
    )[torch.randperm(200)]
    order = method.epoch_order(0, torch.Generator().manual_seed(0))
    assert order.shape == (200,)
    per_cluster = torch.bincount(method.assignments[order], minlength=8)
    assert per_cluster[[1, 4, 5, 6]].sum() == 0
    assert per_cluster[[0, 2, 3, 7]].tolist() == [50, 50, 50, 50]
    # A small cluster shows every member, each as often as possible (3 members: 17/17/16).
    small = order[method.assignments[order] == 7]
    assert sorted(torch.bincount(small).tolist())[-3:] == [16, 17, 17]
    # A large cluster draws without repeats.
    large = order[method.assignments[order] == 0]
    assert len(torch.unique(large)) == 50
    again = method.epoch_order(0, torch.Generator().manual_seed(0))
    assert torch.equal(order, again)
    assert not torch.equal(order, method.epoch_order(0, torch.Generator().manual_seed(1)))
    # Uneven split: 201 images over 4 clusters gives 51/50/50/50.
    method.assignments = torch.arange(201) % 4
    counts = torch.bincount(method.assignments[method.epoch_order(0, torch.Generator())])
    assert sorted(counts.tolist()) == [50, 50, 50, 51]
    assert make_method().epoch_order(0, torch.Generator()) is None  # weighted: the engine's shuffle


# ---------------------------------------------------------------------- checkpoints


def test_checkpoint_round_trip_and_original_keys():
    method = make_method()
    method.assignments = torch.randint(0, 100, (50,))
    state = method.checkpoint_state()
    assert set(state) == {"classifier", "backbone", "optimizer", "cluster_assignments", "cluster_nmi"}
    assert set(state["classifier"]) == {
        "linear1.weight",
        "linear1.bias",
        "bn1.weight",
        "bn1.bias",
        "bn1.running_mean",
        "bn1.running_var",
        "bn1.num_batches_tracked",
        "linear2.weight",
        "linear2.bias",
    }

    restored = make_method(seed=1)
    restored.load_checkpoint_state(state)
    assert torch.equal(restored.assignments, method.assignments)
    for key, value in method.state_dict().items():
        assert torch.equal(value, restored.state_dict()[key]), key

    original = {key: state[key] for key in ("classifier", "backbone", "optimizer")}
    from_original = make_method(seed=2)
    from_original.load_checkpoint_state(original)
    assert len(from_original.assignments) == 0  # no previous clustering: NMI starts empty

    with pytest.raises(UserError, match="--num_clusters"):
        make_method(num_clusters=30).load_checkpoint_state(state)


# ---------------------------------------------------------------------- real runs


def test_deepcluster_learns_its_pseudo_labels_on_real_images(real_subset, tmp_path):
    engine = make_engine("deepcluster", real_subset, tmp_path, batch=50, kmeans_restarts=2, epochs=3, num_clusters=20)
    method = engine.method
    step_losses = []
    training_step = method.training_step

    def recording_step(views, labels, index):
        out = training_step(views, labels, index)
        step_losses.append(out.loss.item())
        return out

    method.training_step = recording_step
    engine.fit()

    rows = read_log(tmp_path / "log.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    chance = 100.0 / 20
    assert float(rows[-1]["accuracy"]) > 3 * chance, rows
    assert float(rows[-1]["score"]) == float(rows[-1]["accuracy"])
    # Each epoch starts from a fresh output layer, i.e. from the loss ln k of uniform guesses;
    # within the last epoch the loss falls clearly below it.
    last_epoch = step_losses[-20:]
    assert last_epoch[0] == pytest.approx(math.log(20), rel=0.05)
    assert sum(last_epoch[-5:]) / 5 < 0.9 * math.log(20), last_epoch
    assert all(float(r["loss"]) < math.log(20) for r in rows)
    # NMI between consecutive clusterings: empty first, then a value in (0, 1].
    assert rows[0]["nmi"] == "nan"
    assert all(0.0 < float(r["nmi"]) <= 1.0 for r in rows[1:])
    assert float(rows[-1]["nmi"]) == pytest.approx(method.nmi, rel=1e-5)


def test_same_seed_same_clusters_and_exact_resume(real_subset, tmp_path):
    subset = real_subset.balanced_subset(300, seed=0)
    runs = []
    for name in ("a", "b"):
        folder = tmp_path / name
        folder.mkdir()
        engine = make_engine(
            "deepcluster", subset, folder, batch=50, kmeans_restarts=2, seed=3, epochs=3, num_clusters=30
        )
        engine.fit()
        runs.append((read_log(folder / "log.csv"), engine.method.assignments))
    (log_a, clusters_a), (log_b, clusters_b) = runs
    assert torch.equal(clusters_a, clusters_b)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(log_a) == strip(log_b)

    # Resume after epoch 2: the stored clustering gives the same NMI for epoch 2.
    folder = tmp_path / "resumed"
    folder.mkdir()
    state = torch.load(tmp_path / "a" / "epoch_2.tar", weights_only=True)
    engine = make_engine("deepcluster", subset, folder, batch=50, kmeans_restarts=2, seed=3, epochs=3, num_clusters=30)
    engine.method.load_checkpoint_state(state)
    engine.fit(start_epoch=2, resume_state=state)
    assert strip(read_log(folder / "log.csv")) == strip(log_a[2:])
    assert torch.equal(engine.method.assignments, clusters_a)


def test_uniform_sampling_trains(real_subset, tmp_path):
    subset = real_subset.balanced_subset(200, seed=0)
    engine = make_engine(
        "deepcluster", subset, tmp_path, batch=50, kmeans_restarts=2, epochs=1, num_clusters=10, sampling="uniform"
    )
    seen = []
    training_step = engine.method.training_step

    def recording_step(views, labels, index):
        seen.append(index)
        return training_step(views, labels, index)

    engine.method.training_step = recording_step
    engine.fit()
    assert engine.method.class_weights is None  # balanced by sampling instead
    visited = torch.bincount(engine.method.assignments[torch.cat(seen)])
    visited = visited[visited > 0]
    assert visited.max() - visited.min() <= 1


# ---------------------------------------------------------------------- stage scripts


def run_script(script, *argv):
    return subprocess.run([sys.executable, script, *argv], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_three_stages_end_to_end(small_cifar10_root, tmp_path):
    common = [
        "--data_root",
        str(small_cifar10_root),
        "--checkpoint_dir",
        str(tmp_path),
        "--no_download",
        "--backbone",
        "conv4",
        "--seed",
        "1",
        "--device",
        "cpu",
    ]
    stage1 = run_script(
        "train_unsupervised.py", *common, "--method", "deepcluster", "--epochs", "2", "--data_size", "32"
    )
    assert stage1.returncode == 0, stage1.stderr
    folder = tmp_path / "deepcluster" / "cifar10"
    header = "deepcluster_cifar10_conv4_seed_1"
    checkpoint = folder / f"{header}_epoch_2.tar"
    state = torch.load(checkpoint, weights_only=True)
    assert {"classifier", "backbone", "optimizer", "cluster_assignments"} <= set(state)
    assert state["classifier"]["linear2.weight"].shape == (100, 256)
    assert state["cluster_assignments"].shape == (200,)
    rows = read_log(folder / f"log_{header}.csv")
    assert len(rows) == 2 and rows[0]["nmi"] == "nan" and 0.0 < float(rows[1]["nmi"]) <= 1.0

    stage2 = run_script("train_linear_evaluation.py", *common, "--checkpoint", str(checkpoint), "--epochs", "1")
    assert stage2.returncode == 0, stage2.stderr
    linear = folder / f"{header}_epoch_1_linear_evaluation.tar"
    assert {"classifier", "backbone", "optimizer_lineval"} <= set(torch.load(linear, weights_only=True))
    assert "Test accuracy:" in stage2.stdout

    stage3 = run_script("test.py", *common, "--checkpoint", str(linear))
    assert stage3.returncode == 0, stage3.stderr
    assert "Test accuracy:" in stage3.stdout


@pytest.mark.parametrize("flag,value", [("--deepcluster_sampling", "foo"), ("--num_clusters", "-3")])
def test_bad_flags_exit_2_with_one_line(small_cifar10_root, tmp_path, flag, value):
    result = run_script(
        "train_unsupervised.py",
        "--data_root",
        str(small_cifar10_root),
        "--no_download",
        "--checkpoint_dir",
        str(tmp_path),
        "--method",
        "deepcluster",
        "--epochs",
        "1",
        flag,
        value,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and flag in lines[0], result.stderr
    assert not list(tmp_path.rglob("*.tar"))
