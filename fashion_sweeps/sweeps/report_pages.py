"""The sweep report's two pages from its sections: self-contained HTML (images embedded, opens
offline) and its Markdown twin with the images as files beside it.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from fashion_sweeps import markdown


@dataclass
class Section:
    title: str
    text: str = ""
    tables: list[pd.DataFrame] = field(default_factory=list)
    images: list[tuple[str, bytes]] = field(default_factory=list)  # (caption, PNG bytes)


@dataclass
class Report:
    sweep: str
    sections: list[Section]
    notes: list[str] = field(default_factory=list)
    ui: str = "http://127.0.0.1:5000"  # the MLflow UI each run_id links to (stored_sweep.ui_url)


def run_link(ui: str, run_id: str) -> str:
    """The run's page in the MLflow UI (its experiment-free route)."""
    return f"{ui.rstrip('/')}/#/runs/{run_id}"


def linked_runs(table: pd.DataFrame, ui: str, html_link: bool) -> pd.DataFrame:
    """`run_id` cells as links to the MLflow UI, showing the id's first 8 characters."""
    if "run_id" not in table.columns:
        return table
    short = table["run_id"].astype(str)
    if html_link:
        cells = [
            f'<a href="{html.escape(run_link(ui, r))}">{html.escape(r[:8])}</a>' for r in short
        ]
    else:
        cells = [f"[{r[:8]}]({run_link(ui, r)})" for r in short]
    return table.assign(run_id=cells)


STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto;
       max-width: 1200px; padding: 0 1rem; color: #1f2328; }
h1 { border-bottom: 2px solid #d0d7de; padding-bottom: .3rem; }
h2 { margin-top: 2.2rem; border-bottom: 1px solid #d0d7de; padding-bottom: .2rem; }
table { border-collapse: collapse; font-size: .8rem; margin: 1rem 0; }
th, td { border: 1px solid #d0d7de; padding: .2rem .35rem; text-align: right; }
th { background: #f6f8fa; vertical-align: bottom; }
td:nth-child(-n+4) { text-align: left; }
tbody tr:nth-child(even) { background: #fafbfc; }
figure { margin: 1rem 0; }
figure img { max-width: 100%; border: 1px solid #d0d7de; }
figcaption { color: #57606a; font-size: .9rem; }
.scroll { overflow-x: auto; }
.note { background: #fff8c5; border: 1px solid #d4a72c; padding: .5rem .8rem; }
"""


def table_html(table: pd.DataFrame, ui: str) -> str:
    # Cells escaped here (a class name may hold `<`), so that the links can stay HTML.
    escaped = table.apply(
        lambda col: col.map(lambda v: html.escape(v) if isinstance(v, str) else v)
    )
    linked = linked_runs(escaped, ui, html_link=True)
    # Long headers (test_f1_weighted) may break after an underscore, so that wide tables fit.
    header = {c: html.escape(str(c)).replace("_", "_<wbr>") for c in linked.columns}
    formats = {header[c]: f for c, f in column_formats(table).items()}
    inner = linked.rename(columns=header).to_html(
        index=False, border=0, na_rep="—", formatters=formats, escape=False
    )
    return f'<div class="scroll">{inner}</div>'


def column_formats(table: pd.DataFrame) -> dict[str, Callable[[object], str]]:
    """Fixed decimals per column, so that a column's figures line up: learning rates as written
    (0.001), whole numbers (epochs, counts) without decimals, other figures to 4 decimals."""
    formats: dict[str, Callable[[object], str]] = {}
    for name in table.columns:
        values = pd.to_numeric(table[name], errors="coerce")
        if table[name].dtype.kind != "f" or values.isna().all():
            continue
        finite = values[np.isfinite(values)]
        if name == "lr":
            formats[name] = "{:g}".format
        elif len(finite) and (finite == finite.round()).all():
            formats[name] = "{:.0f}".format
        else:
            formats[name] = "{:.4f}".format
    return formats


def render_html(report: Report, created: str) -> str:
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Sweep report: {html.escape(report.sweep)}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>Sweep report: {html.escape(report.sweep)}</h1>",
        f"<p>Generated {html.escape(created)} from the sweep's MLflow runs.</p>",
    ]
    parts += [f'<p class="note">{html.escape(note)}</p>' for note in report.notes]
    for section in report.sections:
        parts.append(f"<h2>{html.escape(section.title)}</h2>")
        if section.text:
            parts.append(f"<p>{html.escape(section.text)}</p>")
        parts += [table_html(table, report.ui) for table in section.tables]
        for caption, data in section.images:
            encoded = base64.b64encode(data).decode("ascii")
            parts.append(
                f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{encoded}">'
                f"<figcaption>{html.escape(caption)}</figcaption></figure>"
            )
    parts.append("</body></html>")
    return "\n".join(parts)


def image_name(section: Section, index: int) -> str:
    stem = "".join(c if c.isalnum() else "_" for c in section.title.lower())
    return f"{stem}_{index + 1}.png"


def render_markdown(report: Report, created: str, image_dir: str = "images") -> str:
    """The Markdown twin; its images are files in `image_dir` beside it (see `write_report`)."""
    lines = [f"# Sweep report: {report.sweep}", "", f"Generated {created} from MLflow.", ""]
    lines += [f"> **Note:** {note}\n" for note in report.notes]
    for section in report.sections:
        lines += [f"## {section.title}", ""]
        if section.text:
            lines += [section.text, ""]
        lines += [
            markdown.frame_table(linked_runs(table, report.ui, html_link=False)) + "\n"
            for table in section.tables
        ]
        lines += [
            f"![{caption}]({image_dir}/{image_name(section, i)})\n"
            for i, (caption, _) in enumerate(section.images)
        ]
    return "\n".join(lines)


def write_report(report: Report, folder: Path) -> list[Path]:
    """report.html (self-contained), report.md and the Markdown's images/; returns the paths."""
    created = datetime.now().strftime("%Y-%m-%d %H:%M")
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    paths = [folder / "report.html", folder / "report.md"]
    paths[0].write_text(render_html(report, created), encoding="utf-8")
    paths[1].write_text(render_markdown(report, created), encoding="utf-8")
    for section in report.sections:
        for i, (_, data) in enumerate(section.images):
            path = images / image_name(section, i)
            path.write_bytes(data)
            paths.append(path)
    return paths
