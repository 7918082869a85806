"""The one Markdown-table writer (fashion_sweeps/markdown.py)."""

from __future__ import annotations

import math

import pandas as pd

from fashion_sweeps import markdown


def test_a_cell_never_breaks_its_table() -> None:
    assert markdown.row(["a | b", "two\nlines", 3]) == "| a \\| b | two lines | 3 |"


def test_table_lines_compact_or_padded() -> None:
    assert markdown.table(["seed", "acc"], [[1, "90%"]], right={1}) == [
        "| seed | acc |",
        "|---|---:|",
        "| 1 | 90% |",
    ]
    assert markdown.table(["seed", "acc"], [[1, "90.00%"]], right={1}, pad=True) == [
        "| seed |    acc |",
        "|------|-------:|",
        "| 1    | 90.00% |",
    ]


def test_frame_table_formats_floats_and_missing_cells_and_aligns_numbers() -> None:
    frame = pd.DataFrame(
        {
            "name": ["a", "b"],
            "loss": [0.123456, math.nan],
            "time": [12.34, 5.0],
            "n": pd.array([3, None], dtype="Int64"),
        }
    )
    assert markdown.frame_table(frame, formats={"time": ".1f"}, missing="-").splitlines() == [
        "| name |   loss | time |   n |",
        "|------|-------:|-----:|----:|",
        "| a    | 0.1235 | 12.3 |   3 |",
        "| b    |    nan |  5.0 |   - |",
    ]
