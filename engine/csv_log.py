"""The CSV logs of runs: per-epoch logs rewritten atomically, and rows appended to result tables."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from utils.atomic import TEXT_ENCODING, atomic_write_bytes, encode_text
from utils.errors import UserError


class CsvLog:
    """The per-epoch CSV log of a run, rewritten atomically with each new row: whatever instant
    the process dies, the file holds whole rows under one header. Its `epoch` column counts from
    1, as the checkpoint names.

    The rows the file holds from before the first new row's epoch are kept and the later ones
    dropped, so a resumed log equals the log of a run that was never interrupted."""

    def __init__(self, path: Path):
        self.path = path
        self.rows: list[dict] | None = None
        self.columns: list[str] = []

    def append(self, row: dict) -> None:
        if self.rows is None:
            self.columns, rows = read_csv(self.path)
            self.rows = [
                kept for kept in rows if str(kept.get("epoch", "")).isdigit() and int(kept["epoch"]) < row["epoch"]
            ]
        self.rows.append(row)
        self.columns = list(dict.fromkeys([*self.columns, *row]))
        write_csv(self.path, self.columns, self.rows)


def read_csv(path: Path) -> tuple[list[str], list[dict]]:
    """The columns and rows of a CSV file (none when it does not exist); a file that is not
    UTF-8 CSV text gives one line naming it and the fix."""
    if not path.exists():
        return [], []
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            rows = list(reader)
            return list(reader.fieldnames or []), rows
    except (UnicodeDecodeError, csv.Error) as error:
        where = f"invalid byte at offset {error.start}" if isinstance(error, UnicodeDecodeError) else str(error)
        raise UserError(
            f"the log {path} is not readable CSV text ({where}): restore it, or move it aside to go on without its rows"
        ) from None


# Significant digits of the floats in CSV logs: enough for any float32 value and for float64
# sums (whose last digits are noise), and no `28.000000000000004`.
CSV_FLOAT_DIGITS = 8


def csv_row(row: dict) -> dict:
    """`row` with its floats written with CSV_FLOAT_DIGITS significant digits."""
    return {
        key: format(value, f".{CSV_FLOAT_DIGITS}g") if isinstance(value, float) else value for key, value in row.items()
    }


def write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    """Replace `path` atomically by a CSV of `rows` under `columns`."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(csv_row(row) for row in rows)
    atomic_write_bytes(path, encode_text(buffer.getvalue()))


def append_csv_row(path: Path, columns: list[str], row: dict) -> None:
    """Append one row, writing the header first when the file is new.

    A file written with other columns (by an earlier version) is first rewritten under
    `columns`, keeping its rows, so that no row lands under the wrong header."""
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    if not new:
        fieldnames, rows = read_csv(path)
        if fieldnames:
            union = list(dict.fromkeys([*fieldnames, *columns]))
            if union != fieldnames:
                write_csv(path, union, rows)
            columns = union
    with open(path, "a", newline="", **TEXT_ENCODING) as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerow(csv_row(row))
