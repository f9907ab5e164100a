"""Evaluation beyond linear accuracy: kNN, retrieval, label fractions, feature export, maps,
training curves, and test.py / stage 2 using them on real-format data."""

from __future__ import annotations

import csv
import json
import sys

import numpy as np
import pytest
import torch

import experiments.linear_evaluation as stage2
import experiments.pretraining as stage1
import experiments.testing as stage3
from datasets import load_dataset
from engine.csv_log import append_csv_row
from evaluation.embedding import pca_2d, principal_components, tsne_2d
from evaluation.neighbours import knn_accuracy, nearest_neighbours, retrieval_precision
from experiments.plots import plot_training_curves, require_matplotlib
from experiments.stage import run_main
from utils.errors import UserError


def clusters(n_per_class=60, classes=4, dim=16, seed=0):
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=generator) * 5
    labels = torch.arange(n_per_class * classes) // n_per_class
    return centres[labels] + torch.randn(len(labels), dim, generator=generator), labels


def test_knn_votes_are_weighted_by_similarity_and_temperature():
    train = torch.tensor([[1.0, 0.01], [0.6, 0.8], [0.6, -0.8]])
    labels = torch.tensor([1, 0, 0])
    query, target = torch.tensor([[1.0, 0.0]]), torch.tensor([1])
    # The one very similar neighbour outweighs two far ones at a low temperature...
    assert knn_accuracy(train, labels, query, target, k=3, temperature=0.07)["knn_accuracy"] == 100.0
    # ...while at a high temperature the votes are nearly equal and the majority wins.
    assert knn_accuracy(train, labels, query, target, k=3, temperature=10.0)["knn_accuracy"] == 0.0
    # Cosine: the scale of a feature vector does not matter.
    assert knn_accuracy(train * torch.tensor([[100.0], [1.0], [1.0]]), labels, query, target, 3)["knn_accuracy"] == 100
    with pytest.raises(ValueError):
        knn_accuracy(train, labels, query, target, k=4)


def test_knn_separates_clusters_and_scores_top5():
    features, labels = clusters()
    result = knn_accuracy(features[::2], labels[::2], features[1::2], labels[1::2], k=10)
    assert result["knn_accuracy"] == 100.0 and result["knn_top5"] == 100.0
    shuffled = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))]
    assert knn_accuracy(features[::2], shuffled[::2], features[1::2], shuffled[1::2], k=10)["knn_accuracy"] < 50


def test_retrieval_excludes_the_query_and_counts_same_class_neighbours():
    features = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [0.8, 0.3]])
    labels = torch.tensor([0, 0, 1, 1, 1])
    neighbours = nearest_neighbours(features, 2)
    assert not (neighbours == torch.arange(5)[:, None]).any()
    assert neighbours[0].tolist() == [1, 4] and neighbours[2].tolist() == [3, 4]
    # Hand count: query 0 -> {1: same, 4: other}; 1 -> {0, 4}; 2 -> {3, 4}; 3 -> {2, 4}; 4 -> {1, 0}
    assert retrieval_precision(neighbours, labels) == pytest.approx(100 * (1 + 1 + 2 + 2 + 0) / 10)
    with pytest.raises(ValueError):
        nearest_neighbours(features, 5)


def test_pca_gives_the_two_largest_variances_in_order():
    features, _ = clusters()
    points = pca_2d(features)
    centred = features.double() - features.double().mean(0)
    eigenvalues = torch.linalg.eigvalsh(centred.T @ centred / (len(features) - 1)).flip(0)
    variances = points.double().var(dim=0)
    assert torch.allclose(variances, eigenvalues[:2], rtol=1e-4)
    _, shares = principal_components(features)  # each axis's share of the total variance
    assert shares == pytest.approx((eigenvalues[:2] / eigenvalues.sum()).tolist(), rel=1e-4)


def test_tsne_keeps_clusters_apart_and_is_seeded():
    features, labels = clusters(n_per_class=50)
    points = tsne_2d(features, seed=3, iterations=400)
    assert points.shape == (200, 2) and torch.isfinite(points).all()
    assert knn_accuracy(points, labels, points, labels, k=5)["knn_accuracy"] == 100.0
    assert torch.equal(points, tsne_2d(features, seed=3, iterations=400))


def test_label_fraction_is_stratified_and_seeded(small_cifar10_root):
    train = load_dataset("cifar10", "train", small_cifar10_root, download=False)
    counts = torch.bincount(train.labels, minlength=10)
    part = train.labelled_fraction(0.25, seed=1)
    expected = torch.tensor([max(1, round(0.25 * int(c))) for c in counts])
    assert torch.equal(torch.bincount(part.labels, minlength=10), expected)
    again = train.labelled_fraction(0.25, seed=1)
    other = train.labelled_fraction(0.25, seed=2)
    assert torch.equal(part.images, again.images) and not torch.equal(part.images, other.images)
    assert train.labelled_fraction(1.0, seed=1) is train
    assert len(train.labelled_fraction(0.001, seed=1)) == 10  # at least one image per class


@pytest.fixture()
def random_backbone(small_cifar10_root, tmp_path):
    out = tmp_path / "out"
    common = [
        "--data_root",
        str(small_cifar10_root),
        "--checkpoint_dir",
        str(out),
        "--seed",
        "1",
        "--no_download",
        "--device",
        "cpu",
    ]
    run_main(lambda: stage1.main(common + ["--method", "randomweights"]))
    return common, out / "randomweights" / "cifar10" / "randomweights_cifar10_conv4_seed_1.tar"


def test_test_py_scores_a_stage1_backbone_by_knn_and_retrieval_and_exports(random_backbone, tmp_path, capsys):
    common, checkpoint = random_backbone
    capsys.readouterr()
    export = tmp_path / "features"
    run_main(
        lambda: stage3.main(
            common
            + [
                "--checkpoint",
                str(checkpoint),
                "--knn",
                "20",
                "--retrieval",
                "5",
                "--retrieval_grid",
                "3",
                "--export_features",
                str(export),
                "--feature_map",
                "pca",
            ]
        )
    )
    out = capsys.readouterr().out
    assert "kNN accuracy (k 20, cosine, weighted):" in out and "Top-5 retrieval precision:" in out
    assert "Test accuracy" not in out  # a stage-1 backbone has no linear classifier to score
    exported = json.loads((export / "features.json").read_text())
    assert exported["features"].endswith("normalised images")  # randomweights: as the original's
    shapes = exported["shapes"]
    assert shapes == {
        "test_features": [40, 64],
        "test_labels": [40],
        "train_features": [200, 64],
        "train_labels": [200],
    }
    assert (
        np.load(export / "train_labels.npy").tolist()
        == load_dataset("cifar10", "train", common[1], download=False).labels.tolist()
    )
    folder = checkpoint.parent
    for name in (
        "randomweights_cifar10_conv4_seed_1_retrieval_top5.png",
        "randomweights_cifar10_conv4_seed_1_test_pca.png",
    ):
        assert (folder / name).read_bytes()[:4] == b"\x89PNG"
    with open(folder / "log_randomweights_cifar10_conv4_seed_1_test.csv", newline="") as handle:
        row = list(csv.DictReader(handle))[-1]
    assert row["accuracy"] == "" and row["knn_k"] == "20" and 0 <= float(row["retrieval_precision"]) <= 100

    with pytest.raises(SystemExit) as exit_info:  # without those options it still needs a classifier
        run_main(lambda: stage3.main(common + ["--checkpoint", str(checkpoint)]))
    assert exit_info.value.code == 2 and "--knn" in capsys.readouterr().err


def test_knn_of_a_trained_backbone_beats_a_random_one(cifar10_root, tmp_path, capsys):
    """Features trained with labels for one epoch group the classes better than random ones."""
    common = [
        "--data_root",
        str(cifar10_root),
        "--checkpoint_dir",
        str(tmp_path),
        "--seed",
        "1",
        "--no_download",
        "--device",
        "cpu",
        "--train_subset",
        "1000",
    ]
    run_main(lambda: stage1.main(common + ["--method", "randomweights"]))
    run_main(lambda: stage1.main(common + ["--method", "standard", "--epochs", "2", "--lr", "0.05"]))
    scores = {}
    for method, name in (
        ("randomweights", "randomweights_cifar10_conv4_seed_1.tar"),
        ("standard", "standard_cifar10_conv4_seed_1_epoch_2.tar"),
    ):
        capsys.readouterr()
        run_main(
            lambda: stage3.main(
                common[:-2]
                + [
                    "--checkpoint",
                    str(tmp_path / method / "cifar10" / name),
                    "--knn",
                    "20",
                    "--retrieval",
                    "10",
                    "--retrieval_grid",
                    "0",
                ]
            )
        )
        out = capsys.readouterr().out
        scores[method] = float(out.split("Top-10 retrieval precision: ")[1].split("%")[0])
    assert scores["standard"] > scores["randomweights"] + 2, scores


def test_stage2_label_fraction_trains_on_a_share_and_says_so_in_the_name(random_backbone, capsys):
    common, checkpoint = random_backbone
    run_main(
        lambda: stage2.main(common + ["--checkpoint", str(checkpoint), "--epochs", "1", "--label_fraction", "0.1"])
    )
    folder = checkpoint.parent
    name = "randomweights_cifar10_conv4_seed_1_epoch_1_linear_evaluation_labels_10pct"
    assert (folder / f"{name}.tar").exists()
    assert json.loads((folder / f"config_{name}.json").read_text())["training_images"] == 20
    assert "Semi-supervised: 20 labelled images (10% of each class)" in capsys.readouterr().out
    run_main(lambda: stage3.main(common + ["--checkpoint", str(folder / f"{name}.tar")]))
    assert "Test accuracy" in capsys.readouterr().out


def test_a_test_log_of_an_older_version_gains_the_new_columns(tmp_path):
    log = tmp_path / "log_test.csv"
    log.write_text("time,accuracy\n2026-01-01,50.0\n")
    append_csv_row(log, ["time", "accuracy", "knn_accuracy"], {"time": "t", "accuracy": 60, "knn_accuracy": 55})
    with open(log, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert rows == [
        {"time": "2026-01-01", "accuracy": "50.0", "knn_accuracy": ""},
        {"time": "t", "accuracy": "60", "knn_accuracy": "55"},
    ]


def test_training_curves_from_logs(tmp_path):
    logs = []
    for seed in (1, 2):
        path = tmp_path / f"log_run_seed_{seed}.csv"
        path.write_text("epoch,loss,score,seconds\n0,2.0,10,1\n1,1.5,20,1\n2,1.0,30,1\n")
        logs.append(path)
    output = plot_training_curves(logs, tmp_path / "curves.png")
    assert output.read_bytes()[:4] == b"\x89PNG"
    empty = tmp_path / "log_empty.csv"
    empty.write_text("epoch,loss\n")
    with pytest.raises(UserError):
        plot_training_curves([empty], tmp_path / "none.png")


def test_without_matplotlib_plots_say_how_to_get_it(random_backbone, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import raises ImportError
    with pytest.raises(UserError, match="pip install matplotlib"):
        require_matplotlib()
    common, checkpoint = random_backbone
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_main(lambda: stage3.main(common + ["--checkpoint", str(checkpoint), "--feature_map", "tsne"]))
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1 and "matplotlib" in err
    assert not list(checkpoint.parent.glob("*.png"))
