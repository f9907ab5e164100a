"""The outputs of a grid: results.csv (one row per run), table.md (mean ± std over seeds beside
the paper's value) and figure.png (the same as bars)."""

from __future__ import annotations

import statistics
from pathlib import Path

from engine.csv_log import write_csv
from experiments.plots import matplotlib_available, plot_grid_results
from experiments.studies import (
    COMPARABLE,
    CONDITIONS,
    PAPER_RETRIEVAL,
    SOURCES,
    paper_value,
    published_value,
)
from utils.atomic import atomic_write_bytes, encode_text
from utils.runtime import format_duration

RESULT_COLUMNS = [
    "condition",
    "variant",
    "method",
    "backbone",
    "seed",
    "epochs",
    "evaluation_epochs",
    "train_subset",
    "accuracy",
    "top5",
    "knn_accuracy",
    "retrieval_precision",
    "probe_accuracy",
    "wall_seconds",
    "stage1_checkpoint",
    "evaluation_checkpoint",
]


def group_runs(records: list[dict]) -> list[dict]:
    """Runs of the same cell (condition, variant, backbone, method) pooled over seeds, in the
    order the records come in."""
    cells: dict[tuple, dict] = {}
    for record in records:
        key = (record["condition"], record["variant"], record["backbone"], record["method"])
        cells.setdefault(
            key, {"condition": key[0], "variant": key[1], "backbone": key[2], "method": key[3], "runs": []}
        )["runs"].append(record)
    for cell in cells.values():
        runs = sorted(cell["runs"], key=lambda r: r["seed"])
        cell.update(
            seeds=[r["seed"] for r in runs],
            epochs=sorted({r["epochs"] for r in runs}),
            evaluation_epochs=sorted({r["evaluation_epochs"] for r in runs}),
            wall_seconds=statistics.fmean(r["wall_seconds"] for r in runs),
            paper=paper_value(cell["condition"], cell["method"], cell["backbone"], cell["variant"]),
            published=published_value(cell["condition"], cell["method"], cell["backbone"]),
        )
        for name in ("accuracy", "knn_accuracy", "retrieval_precision", "probe_accuracy"):
            values = [r[name] for r in runs if r.get(name) is not None]
            cell[name] = (
                (statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0) if values else None
            )
    return list(cells.values())


def _mean_std(value: tuple[float, float] | None, seeds: int) -> str:
    if value is None:
        return "–"
    return f"{value[0]:.2f} ± {value[1]:.2f}" if seeds > 1 else f"{value[0]:.2f}"


def markdown_table(
    cells: list[dict], title: str, settings: str, knn: int = 200, retrieval: int = 10, differences: list[str] = ()
) -> str:
    """The table; `differences` say in words how the grid's protocol differs from the paper's."""
    variants = any(cell["variant"] for cell in cells)
    probed = any(cell.get("probe_accuracy") for cell in cells)  # runs of stage 1 with --online_probe
    sources = sorted({cell["published"][1] for cell in cells if cell["published"]})
    header = (
        ["condition"]
        + (["variant"] if variants else [])
        + ["backbone", "method", "seeds", "accuracy (%)"]
        + (["online probe (%)"] if probed else [])
        + ["paper"]
        + (["published (source)"] if sources else [])
        + [
            "difference",
            f"{knn}-NN (%)" if knn else "kNN",
            f"top-{retrieval} retrieval (%)" if retrieval else "retrieval",
            "epochs",
            "wall time / run",
        ]
    )
    warning = (
        [
            "**Not the paper's protocol**: " + "; ".join(differences) + ". The difference to the paper "
            "measures this shortened protocol as much as the methods.",
            "",
        ]
        if differences
        else []
    )
    lines = [f"# {title}", "", *warning, settings, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for cell in cells:
        seeds = len(cell["seeds"])
        paper = cell["paper"]
        paper_text = (
            "–"
            if paper is None
            else (f"{paper[0]:.2f} ± {paper[1]:.2f}" if paper[1] is not None else f"{paper[0]:.2f}")
        )
        anchor = paper or cell["published"]
        difference = "–" if anchor is None or cell["accuracy"] is None else f"{cell['accuracy'][0] - anchor[0]:+.2f}"
        label = CONDITIONS[cell["condition"]].label if cell["condition"] in CONDITIONS else cell["condition"]
        row = (
            [label]
            + ([cell["variant"] or "–"] if variants else [])
            + [
                cell["backbone"],
                cell["method"],
                ", ".join(map(str, cell["seeds"])),
                _mean_std(cell["accuracy"], seeds),
            ]
            + ([_mean_std(cell.get("probe_accuracy"), seeds)] if probed else [])
            + [
                paper_text,
            ]
            + (
                [f"{cell['published'][0]:.2f} ({cell['published'][1]})" if cell["published"] else "–"]
                if sources
                else []
            )
            + [
                difference,
                _mean_std(cell["knn_accuracy"], seeds),
                _mean_std(cell["retrieval_precision"], seeds),
                " / ".join(f"{'/'.join(map(str, cell[k]))}" for k in ("epochs", "evaluation_epochs")),
                format_duration(round(cell["wall_seconds"])),
            ]
        )
        lines.append("| " + " | ".join(row) + " |")
    lines += [
        "",
        "Accuracy: top-1 on the test split, mean ± standard deviation over the seeds (n − 1 in "
        "the denominator). Difference: this grid's mean minus the paper's (or, where the paper has "
        "none, the published reference's). "
        + (f"{knn}-NN: weighted k-nearest-neighbour accuracy on frozen features (cosine, k = {knn}). " if knn else "")
        + (f"Retrieval: share of the {retrieval} nearest test images of the query's class. " if retrieval else "")
        + (
            "Online probe: top-1 of stage 1's online linear classifier after its last epoch, on the "
            "held-out validation split where the run had one, else on the test split. "
            if probed
            else ""
        )
        + "Epochs: stage 1 / evaluation. Wall time: the three stages of one run; a stage-1 run shared "
        "by several conditions counts in each.",
        "Paper's top-10 retrieval on CIFAR-10 (appendix B.10): "
        + ", ".join(f"{method} {value}" for method, value in PAPER_RETRIEVAL.items())
        + ".",
    ]
    lines += [
        f"Published ({source}): {SOURCES[source]}. Comparable column: {COMPARABLE[source]}." for source in sources
    ]
    return "\n".join(lines) + "\n"


def write_results(
    records: list[dict],
    folder: Path,
    title: str,
    settings: str,
    knn: int = 200,
    retrieval: int = 10,
    differences: list[str] = (),
) -> list[Path]:
    """Write results.csv, table.md and (with matplotlib) figure.png; returns what was written."""
    rows = [{**record, "variant": record["variant"] or ""} for record in records]
    write_csv(folder / "results.csv", RESULT_COLUMNS, rows)
    cells = group_runs(records)
    table = markdown_table(cells, title, settings, knn, retrieval, differences)
    atomic_write_bytes(folder / "table.md", encode_text(table))
    written = [folder / "results.csv", folder / "table.md"]
    if not matplotlib_available():
        print("[INFO] matplotlib is not installed: no figure.png (pip install matplotlib)")
        return written
    groups: dict[str, dict] = {}
    for cell in cells:
        if cell["accuracy"] is None:
            continue
        label = " ".join(
            filter(
                None,
                [
                    CONDITIONS[cell["condition"]].label if cell["condition"] in CONDITIONS else cell["condition"],
                    cell["variant"],
                    cell["backbone"],
                ],
            )
        )
        groups.setdefault(label, {"label": label, "bars": []})["bars"].append(
            {
                "method": cell["method"],
                "mean": cell["accuracy"][0],
                "std": cell["accuracy"][1],
                "paper": None if cell["paper"] is None else cell["paper"][0],
            }
        )
    if groups:
        # a mark of the paper's full protocol beside bars of a shortened one would read as a gap
        paper_label = "paper (its full protocol, not this grid's)" if differences else "paper"
        note = ("Not the paper's protocol: " + "; ".join(differences) + ".") if differences else ""
        written.append(plot_grid_results(list(groups.values()), folder / "figure.png", title, paper_label, note))
    return written
