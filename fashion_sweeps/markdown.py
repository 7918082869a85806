"""Markdown tables: the one writer of every table the project writes as Markdown (the results
page, the sweep stages' ranking and comparison and the sweep report, the sampler study, the
benchmark).

Pipe tables, one line per row: a `|` inside a cell is escaped and its whitespace (line breaks
included) collapsed to one space, so no cell breaks its table.
"""

from __future__ import annotations

import numbers
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # tables come as DataFrames; the CLI's help loads no pandas
    import pandas as pd


def cell(value: object) -> str:
    return " ".join(str(value).split()).replace("|", "\\|")


def row(cells: Sequence[object]) -> str:
    return _line([cell(c) for c in cells])


def _line(texts: Sequence[str]) -> str:
    return "| " + " | ".join(texts) + " |"


def table(
    header: Sequence[object],
    rows: Iterable[Sequence[object]],
    right: Collection[int] = (),
    pad: bool = False,
) -> list[str]:
    """The table's lines; the columns numbered in `right` are right-aligned (numbers). With
    `pad`, every column is as wide as its widest cell, to be read as text too (a console)."""
    texts = [[cell(c) for c in r] for r in (header, *rows)]
    widths = [max(3, *(len(t[i]) for t in texts)) if pad else 0 for i in range(len(header))]

    def justified(texts: Sequence[str]) -> list[str]:
        pairs = enumerate(zip(texts, widths, strict=True))
        return [t.rjust(w) if i in right else t.ljust(w) for i, (t, w) in pairs]

    lines = [_line(justified(r)) for r in texts]
    rule = "|" + "|".join(_rule(w, i in right) for i, w in enumerate(widths)) + "|"
    return [lines[0], rule, *lines[1:]]


def _rule(width: int, right: bool) -> str:
    """A column's part of the line under the header: `---` (`---:` right-aligned), as wide as
    the column's ` cell ` when padded (`width` > 0)."""
    if not width:
        return "---:" if right else "---"
    return "-" * (width + 1) + ":" if right else "-" * (width + 2)


def _missing(value: object) -> bool:
    return value is None or type(value).__name__ == "NAType"  # pandas' NA, without pandas


def _number(value: object) -> bool:
    return isinstance(value, numbers.Number) and not isinstance(value, bool)


def frame_table(
    frame: pd.DataFrame,
    floatfmt: str = ".4g",
    formats: Mapping[str, str] | None = None,
    missing: str = "",
) -> str:
    """A DataFrame as a table, without its index: floats written with `floatfmt` (or the
    column's own format in `formats`; NaN is `nan`), None and <NA> as `missing`, columns of
    numbers right-aligned, every column as wide as its widest cell."""
    formats = formats or {}
    columns = [str(c) for c in frame.columns]
    records = list(frame.itertuples(index=False, name=None))

    def text(value: object, column: str) -> str:
        if _missing(value):
            return missing
        if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
            return format(value, formats.get(column, floatfmt))
        return str(value)

    right = {
        i
        for i, values in enumerate(zip(*records, strict=True))
        if all(_number(v) for v in values if not _missing(v))
    }
    rows = [[text(v, c) for v, c in zip(record, columns, strict=True)] for record in records]
    return "\n".join(table(columns, rows, right, pad=True))
