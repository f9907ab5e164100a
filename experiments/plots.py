"""Figures: training curves from CSV logs, feature maps, the results of a grid, retrieval grids.

matplotlib is optional: only the functions that draw charts need it, and they say how to
install it. The retrieval grid is a plain image mosaic written with Pillow.

Training curves from the command line:
    python -m experiments.plots curves.png checkpoint/relationnet/cifar10/log_*.csv
    python -m experiments.plots curves.png runs/my_grid      (every stage log in the folder)
"""
from __future__ import annotations

import csv
import importlib.util
import math
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from utils.errors import UserError


def matplotlib_available() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def require_matplotlib():
    """The pyplot module with a file-only backend, or a one-line error saying how to get it."""
    try:
        import matplotlib
    except ImportError:
        raise UserError("plots need matplotlib, which is not installed: "
                        "pip install matplotlib (or leave out the plotting option)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot
    return pyplot


def _read_log(path: Path) -> dict[str, list[float]]:
    """Numeric columns of a CSV log, keyed by name (non-numeric columns are skipped)."""
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    columns: dict[str, list[float]] = {}
    for name in (rows[0].keys() if rows else []):
        try:
            columns[name] = [float(row[name]) for row in rows]
        except (TypeError, ValueError):
            continue
    return columns


def stage_logs(paths: list[Path]) -> list[Path]:
    """Per-epoch logs among `paths`, folders searched recursively (test logs are one row per
    call, not a curve, so they are left out)."""
    found = []
    for path in paths:
        candidates = sorted(path.rglob("log_*.csv")) if path.is_dir() else [path]
        found += [p for p in candidates if not p.name.endswith("_test.csv")]
    return found


def plot_training_curves(logs: list[Path], output: Path) -> Path:
    """One panel per logged quantity (loss, score, accuracies...) against the epoch, one line
    per log; stage-1 and stage-2 logs go in separate rows of panels."""
    pyplot = require_matplotlib()
    curves = [(path, _read_log(path)) for path in logs]
    curves = [(path, columns) for path, columns in curves if columns.get("epoch")]
    if not curves:
        raise UserError(f"no per-epoch CSV log with rows among {', '.join(map(str, logs)) or 'the paths given'}")
    first = ["loss", "score", "accuracy", "test_accuracy"]
    quantities = sorted({name for _, columns in curves for name in columns} - {"epoch", "seconds", "step"},
                        key=lambda name: (first.index(name) if name in first else len(first), name))
    width = min(4, len(quantities))
    height = math.ceil(len(quantities) / width)
    figure, axes = pyplot.subplots(height, width, figsize=(4.2 * width, 3.2 * height), squeeze=False)
    for axis, quantity in zip(axes.flat, quantities):
        for path, columns in curves:
            if quantity in columns:
                axis.plot(columns["epoch"], columns[quantity], marker="o", markersize=2.5,
                          label=path.stem.removeprefix("log_"), linewidth=1.2)
        axis.set_title(quantity)
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3)
    for axis in list(axes.flat)[len(quantities):]:
        axis.axis("off")
    if len(curves) <= 12:  # the first panel is the loss, which every log has
        axes.flat[0].legend(fontsize=6)
    figure.tight_layout()
    return _save(figure, pyplot, output)


def plot_feature_map(points: torch.Tensor, labels: torch.Tensor, output: Path, title: str) -> Path:
    pyplot = require_matplotlib()
    figure, axis = pyplot.subplots(figsize=(7, 6))
    classes = int(labels.max()) + 1
    colours = pyplot.get_cmap("tab10" if classes <= 10 else "tab20" if classes <= 20 else "turbo")
    scatter = axis.scatter(points[:, 0].numpy(), points[:, 1].numpy(), c=labels.numpy(), s=4,
                           cmap=colours, vmin=-0.5, vmax=classes - 0.5)
    if classes <= 20:
        figure.colorbar(scatter, ax=axis, ticks=range(classes), label="class")
    axis.set_title(title, fontsize=9)
    axis.set_xticks([])
    axis.set_yticks([])
    figure.tight_layout()
    return _save(figure, pyplot, output)


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
            axis.scatter(paper_xs, papers, marker="_", s=200, color="black", zorder=3,
                         label=None if paper_marked else "paper")
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
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=120)
    pyplot.close(figure)
    return output


def save_retrieval_grid(images: torch.Tensor, labels: torch.Tensor, queries: torch.Tensor,
                        neighbours: torch.Tensor, output: Path, scale: int = 2) -> Path:
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
            colour = (128, 128, 128) if column == 0 else (
                (0, 170, 0) if labels[index] == labels[query] else (210, 0, 0))
            draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=colour)
            tile = Image.fromarray(images[index].permute(1, 2, 0).numpy()).resize((side, side), Image.NEAREST)
            mosaic.paste(tile, (x + frame, y + frame))
    output.parent.mkdir(parents=True, exist_ok=True)
    mosaic.save(output)
    return output


def main(argv: list[str] | None = None) -> None:
    from experiments.cli import Parser
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
