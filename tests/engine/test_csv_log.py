"""CSV logs: the floats they hold."""

from __future__ import annotations

from engine import csv_log


def test_csv_logs_write_floats_with_fixed_significant_digits(tmp_path):
    path = tmp_path / "log.csv"
    csv_log.append_csv_row(
        path, ["epoch", "accuracy", "loss"], {"epoch": 1, "accuracy": 28.000000000000004, "loss": 1 / 3}
    )
    csv_log.write_csv(tmp_path / "rewritten.csv", ["loss"], [{"loss": 2 / 3}, {"loss": 1e-9 / 3}])
    assert path.read_text().splitlines()[1] == "1,28,0.33333333"
    assert (tmp_path / "rewritten.csv").read_text().splitlines()[1:] == ["0.66666667", "3.3333333e-10"]
