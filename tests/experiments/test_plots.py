"""Training curves: one colour family per series of seeds around its mean, one panel per quantity
and family of comparable runs, labelled axes (accuracies in %), integer epoch ticks, constant
quantities and a score repeating the loss or the accuracy left out."""

from __future__ import annotations

import errno

import pytest

pytest.importorskip("matplotlib")

from experiments.plots import training_curves_figure  # noqa: E402


def write_log(path, columns, rows):
    path.write_text(",".join(columns) + "\n" + "".join(",".join(map(str, row)) + "\n" for row in rows))
    return path


@pytest.fixture
def logs(tmp_path):
    relation = ["epoch", "loss", "score", "accuracy", "lr", "seconds", "knn_accuracy"]
    simclr = ["epoch", "loss", "score", "lr", "seconds"]
    linear = ["epoch", "loss", "accuracy", "test_accuracy", "test_loss", "seconds"]
    return [
        write_log(
            tmp_path / "log_relationnet_cifar10_conv4_seed_1.csv",
            relation,
            [(1, 0.085, 60, 60, 0.001, 9, ""), (2, 0.08, 65, 65, 0.001, 9, 31.5), (3, 0.075, 70, 70, 0.001, 9, 33)],
        ),
        write_log(
            tmp_path / "log_relationnet_cifar10_conv4_seed_2.csv",
            relation,
            [(1, 0.086, 61, 61, 0.001, 9, ""), (2, 0.081, 64, 64, 0.001, 9, 30), (3, 0.074, 71, 71, 0.001, 9, 34)],
        ),
        write_log(
            tmp_path / "log_simclr_cifar10_conv4_seed_1.csv",
            simclr,
            [(1, 5.2, -5.2, 0.001, 9), (2, 5.0, -5.0, 0.001, 9), (3, 4.9, -4.9, 0.001, 9)],
        ),
        write_log(
            tmp_path / "log_simclr_cifar10_conv4_seed_1_epoch_3_linear_evaluation.csv",
            linear,
            [(1, 2.0, 30, 29, 2.1, 1), (2, 1.8, 35, 33, 1.9, 1)],
        ),
    ]


def test_one_colour_family_per_series_with_its_mean_and_one_panel_per_quantity_and_family(logs):
    from matplotlib import pyplot
    from matplotlib.collections import PolyCollection

    figure = training_curves_figure(logs)
    panels = [axis for axis in figure.axes if axis.lines]
    colours = {}
    for axis in panels:
        for line in axis.lines:
            colours.setdefault(line.get_label(), set()).add(tuple(line.get_color()))
    runs = [path.stem.removeprefix("log_") for path in logs]
    assert sorted(colours) == sorted(runs + ["relationnet_cifar10_conv4 mean"])
    assert all(len(used) == 1 for used in colours.values())  # a run keeps its colour in every panel
    assert len({next(iter(used)) for used in colours.values()}) == len(colours)  # and no two runs share one
    # the two seeds of relationnet: lighter shades of the colour of their mean, a band around it
    (mean,) = colours["relationnet_cifar10_conv4 mean"]
    for seed in runs[:2]:
        (shade,) = colours[seed]
        assert all(s >= m for s, m in zip(shade, mean)) and shade != mean
    loss = next(axis for axis in panels if axis.get_title() == "loss (relationnet)")
    mean_line = next(line for line in loss.lines if line.get_label().endswith(" mean"))
    assert list(mean_line.get_ydata()) == pytest.approx([0.0855, 0.0805, 0.0745])
    assert any(isinstance(child, PolyCollection) for child in loss.collections)  # the ± std band
    legend = [text.get_text() for text in figure.legends[0].get_texts()]
    assert legend == ["relationnet_cifar10_conv4, seeds 1, 2: mean ± std", *runs[2:]]
    titles = {axis.get_title() for axis in panels}
    # relationnet's loss (about 0.08) and simclr's (about 5) never share an axis; a score that
    # only repeats the accuracy (relationnet) or the negated loss (simclr) has no panel
    assert {"loss (relationnet)", "loss (simclr)", "test_accuracy (linear evaluation)"} <= titles
    assert "knn_accuracy (relationnet)" in titles and not any(title.startswith("score") for title in titles)
    for axis in panels:
        families = {line.get_label().split("_")[0] for line in axis.lines}
        assert len(families) == 1, axis.get_title()
        quantity = axis.get_title().split(" (")[0]
        assert axis.get_xlabel() == "epoch"
        assert axis.get_ylabel() == (f"{quantity} (%)" if "accuracy" in quantity else quantity)
        ticks = [tick for tick in axis.get_xticks() if axis.get_xlim()[0] <= tick <= axis.get_xlim()[1]]
        assert ticks and all(float(tick).is_integer() for tick in ticks), ticks
    assert not any(title.startswith(("lr ", "seconds")) for title in titles)  # constant, or not a curve
    knn = next(axis for axis in panels if axis.get_title() == "knn_accuracy (relationnet)")
    assert [list(line.get_xdata()) for line in knn.lines] == [[2, 3], [2, 3], [2, 3]]  # epoch 1 not measured
    pyplot.close(figure)


def test_a_feature_map_names_the_classes_labels_its_axes_and_keeps_its_title_whole():
    import torch
    from matplotlib import pyplot

    from experiments.plots import feature_map_figure

    names = ["airplane", "automobile", "bird"]
    title = "PCA of 2000 cifar10 test features: " + "relationnet_notebook_cifar10_conv4_seed_1_epoch_10" * 2 + ".tar"
    figure = feature_map_figure(
        torch.randn(30, 2),
        torch.arange(30) % 3,
        title,
        names,
        ("PC 1 (41.0% of the variance)", "PC 2 (12.5% of the variance)"),
    )
    axis, bar = figure.axes
    assert [label.get_text() for label in bar.get_yticklabels()] == names
    assert axis.get_xlabel().startswith("PC 1 (41.0%") and axis.get_ylabel().startswith("PC 2")
    figure.canvas.draw()
    shown = axis.title.get_window_extent()
    shown_text = axis.title.get_text()
    assert "\n" in shown_text and "".join(shown_text.split()) == "".join(title.split())  # wrapped, all of it
    assert 0 <= shown.x0 and shown.x1 <= figure.bbox.width and shown.y1 <= figure.bbox.height  # not cut
    pyplot.close(figure)


def test_a_grid_figure_keeps_its_title_and_note_whole_and_says_the_paper_marks_are_another_protocol():
    from matplotlib import pyplot

    from experiments.plots import grid_results_figure

    bars = [
        {"method": "relationnet", "mean": 30.0, "std": 1.0, "paper": 61.03},
        {"method": "byol", "mean": 28.0, "std": 2.0, "paper": None},
    ]
    title = "CIFAR-10, conv4: relationnet, simclr, byol, barlowtwins; seeds 1, 2, 3, 4 (study baselines)"
    note = "Not the paper's protocol: 3 stage-1 epochs instead of 200; " * 4
    figure = grid_results_figure([{"label": "CIFAR-10 conv4", "bars": bars}], title, "paper (its protocol)", note)
    figure.canvas.draw()
    (axis,) = figure.axes
    texts = [figure._suptitle, *(text for text in figure.texts if text is not figure._suptitle)]
    for text, wanted in zip(texts, (title, note)):
        box = text.get_window_extent()
        assert "".join(text.get_text().split()) == "".join(wanted.split())  # all of it
        assert 0 <= box.x0 and box.x1 <= figure.bbox.width and 0 <= box.y0 and box.y1 <= figure.bbox.height
    labels = [text.get_text() for text in axis.get_legend().get_texts()]
    assert "paper (its protocol)" in labels and "relationnet" in labels
    pyplot.close(figure)


def test_a_full_disk_while_writing_a_figure_names_it_and_keeps_the_previous_one(tmp_path, monkeypatch, capsys):
    from experiments.plots import plot_grid_results
    from experiments.stage import run_main
    from utils import atomic

    groups = [{"label": "CIFAR-10 conv4", "bars": [{"method": "relationnet", "mean": 60.0, "std": 1.0, "paper": 61.0}]}]
    figure = plot_grid_results(groups, tmp_path / "figure.png", "grid")
    before = figure.read_bytes()

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", disk_full)
    with pytest.raises(SystemExit) as exit_info:
        run_main(lambda: plot_grid_results(groups, figure, "another grid"))
    assert exit_info.value.code == 1
    assert capsys.readouterr().err.strip().endswith(f"error: No space left on device: {figure}")
    assert figure.read_bytes() == before and [path.name for path in tmp_path.iterdir()] == ["figure.png"]


def test_values_past_float32_and_logs_that_are_not_csv_text_are_not_a_traceback(tmp_path):
    from utils.errors import UserError

    huge = write_log(
        tmp_path / "log_simclr_cifar10_conv4_seed_1.csv",
        ["epoch", "loss"],
        [(1, 5.2), (2, 1e308), (3, -1e308), (4, "inf"), (5, 4.9)],
    )
    figure = training_curves_figure([huge])
    assert list(figure.axes[0].lines[0].get_ydata()) == [5.2, 4.9]  # the others are not points of a curve
    not_text = tmp_path / "log_simclr_cifar10_conv4_seed_2.csv"
    not_text.write_bytes(b"epoch,loss\n1,5.\xff2\n")
    too_long = write_log(tmp_path / "log_simclr_cifar10_conv4_seed_3.csv", ["epoch", "loss"], [(1, "1" * 200_000)])
    for log in (not_text, too_long):
        with pytest.raises(UserError) as refused:
            training_curves_figure([huge, log])
        assert f"the log {log} is not readable CSV text" in str(refused.value)
