"""Figures: training curves from CSV logs, feature maps, the results of a grid, retrieval grids.

matplotlib is optional: only the functions that draw charts need it, and they say how to
install it. The retrieval grid is a plain image mosaic written with Pillow.

Training curves from the command line:
    python -m experiments.plots curves.png checkpoint/relationnet/cifar10/log_*.csv
    python -m experiments.plots curves.png runs/my_grid      (every stage log in the folder)
"""

from __future__ import annotations

import importlib.util
import io
import math
import textwrap
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from engine.csv_log import read_csv
from utils.atomic import atomic_write_bytes
from utils.errors import UserError


def matplotlib_available() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def require_matplotlib():
    """The pyplot module with a file-only backend, or a one-line error saying how to get it."""
    try:
        import matplotlib
    except ImportError:
        raise UserError(
            "plots need matplotlib, which is not installed: pip install matplotlib (or leave out the plotting option)"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    return pyplot


# The largest magnitude a stage logs (its quantities are float32 tensors); matplotlib cannot
# scale an axis to values near float64's limit.
_LARGEST_LOGGED = torch.finfo(torch.float32).max


def _read_log(path: Path) -> dict[str, list[float]]:
    """Numeric columns of a CSV log, keyed by name; an empty cell (an epoch a quantity was not
    measured in, e.g. the kNN monitor's) reads as NaN, and so does a value that is not finite or
    past float32's range; non-numeric columns are skipped. A file that is not UTF-8 CSV text is
    one line naming it."""
    _, rows = read_csv(path)
    columns: dict[str, list[float]] = {}
    for name in rows[0].keys() if rows else []:
        try:
            values = [float(row[name]) if row[name] not in ("", None) else math.nan for row in rows]
        except (TypeError, ValueError):
            continue
        values = [value if abs(value) <= _LARGEST_LOGGED else math.nan for value in values]
        if not all(math.isnan(value) for value in values):
            columns[name] = values
    return columns


def stage_logs(paths: list[Path]) -> list[Path]:
    """Per-epoch logs among `paths`, folders searched recursively (test logs are one row per
    call, not a curve, so they are left out)."""
    found = []
    for path in paths:
        candidates = sorted(path.rglob("log_*.csv")) if path.is_dir() else [path]
        found += [p for p in candidates if not p.name.endswith("_test.csv")]
    return found


# Stage-2 logs are named after what they train; their accuracies compare across methods.
_EVALUATION_FAMILIES = {
    "_linear_evaluation": "linear evaluation",
    "_finetune": "fine-tuning",
    "_logistic_regression": "logistic regression",
}
_FIRST_QUANTITIES = ["loss", "score", "accuracy", "test_accuracy", "knn_accuracy"]


def log_family(path: Path) -> str:
    """What a log's quantities are comparable within: the kind of stage-2 run, or the stage-1
    method (relationnet's loss of about 0.08 and simclr's of about 5 need their own axes)."""
    from methods import METHODS

    header = path.stem.removeprefix("log_")
    for suffix, family in _EVALUATION_FAMILIES.items():
        if suffix in header:
            return family
    methods = [name for name in METHODS if header == name or header.startswith(name + "_")]
    return max(methods, key=len) if methods else "other"


def training_curves_figure(logs: list[Path]):
    """The figure of `plot_training_curves`, for saving or inspection."""
    pyplot = require_matplotlib()
    from matplotlib.ticker import MaxNLocator

    curves = [(path, _read_log(path)) for path in logs]
    curves = [(path, columns) for path, columns in curves if columns.get("epoch")]
    if not curves:
        raise UserError(f"no per-epoch CSV log with rows among {', '.join(map(str, logs)) or 'the paths given'}")
    palette = pyplot.get_cmap("tab10" if len(curves) <= 10 else "tab20")
    colour = {path: palette(i % palette.N) for i, (path, _) in enumerate(curves)}
    panels: dict[tuple[str, str], list] = {}  # (family, quantity) -> the runs' (path, epochs, values)
    for path, columns in curves:
        for quantity, values in columns.items():
            if quantity in ("epoch", "seconds", "step"):
                continue
            points = [(e, v) for e, v in zip(columns["epoch"], values) if not math.isnan(v)]
            if len({v for _, v in points}) <= 1:
                continue  # a constant (a fixed learning rate) says nothing as a curve
            panels.setdefault((log_family(path), quantity), []).append((path, *zip(*points)))
    if not panels:
        raise UserError("every logged quantity is constant: there is no curve to draw")
    order = sorted(
        panels,
        key=lambda key: (
            key[0],
            _FIRST_QUANTITIES.index(key[1]) if key[1] in _FIRST_QUANTITIES else len(_FIRST_QUANTITIES),
            key[1],
        ),
    )
    width = min(4, len(order))
    height = math.ceil(len(order) / width)
    figure, axes = pyplot.subplots(height, width, figsize=(4.2 * width, 3.2 * height + 0.6), squeeze=False)
    for axis, (family, quantity) in zip(axes.flat, order):
        for path, epochs, values in panels[(family, quantity)]:
            axis.plot(
                epochs,
                values,
                marker="o",
                markersize=2.5,
                linewidth=1.2,
                color=colour[path],
                label=path.stem.removeprefix("log_"),
            )
        axis.set_title(f"{quantity} ({family})", fontsize=9)
        axis.set_xlabel("epoch")
        axis.set_ylabel(quantity)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
    for axis in list(axes.flat)[len(order) :]:
        axis.axis("off")
    if len(curves) <= 20:  # one entry per run, in its colour everywhere
        handles = [
            pyplot.Line2D([], [], color=colour[path], marker="o", markersize=3, label=path.stem.removeprefix("log_"))
            for path, _ in curves
        ]
        figure.legend(
            handles=handles, loc="lower center", ncol=min(3, len(handles)), fontsize=7, bbox_to_anchor=(0.5, 0.0)
        )
        figure.tight_layout(rect=(0, 0.04 + 0.025 * math.ceil(len(handles) / 3), 1, 1))
    else:
        figure.tight_layout()
    return figure


def plot_training_curves(logs: list[Path], output: Path) -> Path:
    """One panel per logged quantity and family of comparable runs (`log_family`) against the
    epoch, one colour per run across the whole figure, constant quantities left out."""
    pyplot = require_matplotlib()
    return _save(training_curves_figure(logs), pyplot, output)


def feature_map_figure(
    points: torch.Tensor,
    labels: torch.Tensor,
    title: str,
    class_names: list[str] | None = None,
    axis_labels: tuple[str, str] = ("", ""),
):
    """A 2-D map of points coloured by class; the colour bar names the classes (numbers when
    `class_names` is None), up to 20 classes."""
    pyplot = require_matplotlib()
    figure, axis = pyplot.subplots(figsize=(7, 6))
    classes = int(labels.max()) + 1
    colours = pyplot.get_cmap("tab10" if classes <= 10 else "tab20" if classes <= 20 else "turbo")
    scatter = axis.scatter(
        points[:, 0].numpy(), points[:, 1].numpy(), c=labels.numpy(), s=4, cmap=colours, vmin=-0.5, vmax=classes - 0.5
    )
    if classes <= 20:
        bar = figure.colorbar(scatter, ax=axis, ticks=range(classes), label="class")
        if class_names:
            bar.ax.set_yticklabels(class_names[:classes], fontsize=8)
    axis.set_title(textwrap.fill(title, 70), fontsize=9)  # long checkpoint names wrap, not cut
    axis.set_xlabel(axis_labels[0])
    axis.set_ylabel(axis_labels[1])
    axis.set_xticks([])
    axis.set_yticks([])
    figure.tight_layout()
    return figure


def plot_feature_map(
    points: torch.Tensor,
    labels: torch.Tensor,
    output: Path,
    title: str,
    class_names: list[str] | None = None,
    axis_labels: tuple[str, str] = ("", ""),
) -> Path:
    """`feature_map_figure` saved as a PNG."""
    return _save(feature_map_figure(points, labels, title, class_names, axis_labels), require_matplotlib(), output)


def plot_grid_results(groups: list[dict], output: Path, title: str) -> Path:
    """Grouped bars: one group per condition, one bar per method (mean ± std over seeds),
    the paper's value as a black mark where it exists.

    `groups`: [{"label": str, "bars": [{"method", "mean", "std", "paper"}...]}...].
    """
    pyplot = require_matplotlib()
    methods = list(dict.fromkeys(bar["method"] for group in groups for bar in group["bars"]))
    width = 0.8 / max(1, len(methods))
    figure, axis = pyplot.subplots(figsize=(max(6.0, 1.3 * len(groups) * max(1, len(methods)) ** 0.5 + 2), 4.5))
    colours = pyplot.get_cmap("tab10")
    paper_marked = False
    for m, method in enumerate(methods):
        xs, means, stds, paper_xs, papers = [], [], [], [], []
        for g, group in enumerate(groups):
            for bar in group["bars"]:
                if bar["method"] == method:
                    x = g + (m - (len(methods) - 1) / 2) * width
                    xs.append(x)
                    means.append(bar["mean"])
                    stds.append(bar["std"])
                    if bar.get("paper") is not None:
                        paper_xs.append(x)
                        papers.append(bar["paper"])
        axis.bar(xs, means, width, yerr=stds, capsize=2, label=method, color=colours(m % 10))
        if paper_xs:
            axis.scatter(
                paper_xs, papers, marker="_", s=200, color="black", zorder=3, label=None if paper_marked else "paper"
            )
            paper_marked = True
    axis.set_xticks(range(len(groups)))
    axis.set_xticklabels([group["label"] for group in groups], fontsize=8)
    axis.set_ylabel("test accuracy (%)")
    axis.set_title(title, fontsize=9)
    axis.grid(axis="y", alpha=0.3)
    axis.legend(fontsize=7, ncol=2)
    figure.tight_layout()
    return _save(figure, pyplot, output)


def _save(figure, pyplot, output: Path) -> Path:
    """Render in memory, then write atomically: a full disk names the file and keeps the
    previous figure whole."""
    rendered = io.BytesIO()
    figure.savefig(rendered, format=output.suffix[1:].lower() or "png", dpi=120)  # as savefig(output) picks
    pyplot.close(figure)
    atomic_write_bytes(output, rendered.getvalue())
    return output


def save_retrieval_grid(
    images: torch.Tensor,
    labels: torch.Tensor,
    queries: torch.Tensor,
    neighbours: torch.Tensor,
    output: Path,
    scale: int = 2,
) -> Path:
    """A mosaic: one row per query (first column, grey frame) followed by its neighbours,
    framed green when of the query's class and red otherwise. `images` is uint8 (N, 3, H, W)."""
    side = images.shape[-1] * scale
    cell, frame = side + 6, 3
    columns = 1 + neighbours.shape[1]
    mosaic = Image.new("RGB", (columns * cell + 8, len(queries) * cell), "white")
    draw = ImageDraw.Draw(mosaic)
    for row, query in enumerate(queries.tolist()):
        shown = [query] + neighbours[query].tolist()
        for column, index in enumerate(shown):
            x = column * cell + (8 if column else 0)
            y = row * cell
            colour = (
                (128, 128, 128) if column == 0 else ((0, 170, 0) if labels[index] == labels[query] else (210, 0, 0))
            )
            draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=colour)
            tile = Image.fromarray(images[index].permute(1, 2, 0).numpy()).resize((side, side), Image.NEAREST)
            mosaic.paste(tile, (x + frame, y + frame))
    png = io.BytesIO()
    mosaic.save(png, format="png")
    atomic_write_bytes(output, png.getvalue())
    return output


def main(argv: list[str] | None = None) -> None:
    from experiments.flags import Parser

    parser = Parser(description="Plot training curves from the CSV logs of runs or of a grid.")
    parser.add_argument("output", help="PNG file to write")
    parser.add_argument("logs", nargs="+", help="log_*.csv files, or folders searched for them")
    args = parser.parse_args(argv)
    paths = [Path(p) for p in args.logs]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise UserError(f"{missing[0]} does not exist: pass log_*.csv files or folders holding them")
    print(f"Saved {plot_training_curves(stage_logs(paths), Path(args.output))}")


if __name__ == "__main__":
    from experiments.stage import run_main

    run_main(main)
