"""`fashion-sweeps report [SWEEP]`: one self-contained HTML page (images embedded, no external
links, opens offline) and its Markdown twin, built from the sweep's MLflow runs alone.

Contents: the screen ranking; val_loss against learning rate per backbone × head × optimizer;
the full runs' comparison (table and bars); the best model's learning curves, confusion matrix,
per-class table and prediction gallery. The best full run's model is registered (alias
`champion`). Both files are written under `multirun/sweeps/<sweep>/report/` and logged to every
stage's parent run under `report/`.
"""

from __future__ import annotations

import argparse
import base64
import html
import logging
import math
import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pandas as pd
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from fashion_sweeps import markdown
from fashion_sweeps.console_log import log_to_stderr
from fashion_sweeps.evaluation import baseline_text
from fashion_sweeps.paths import folder_name
from fashion_sweeps.redact import redact
from fashion_sweeps.sweeps.stage_run import STAGE_KIND, children, latest_per_condition
from fashion_sweeps.sweeps.tables import comparison_table, ranking_table
from fashion_sweeps.tracking.model_logging import CHAMPION, DEFAULT_REGISTERED_NAME, register
from fashion_sweeps.tracking.plots import (
    CURVES_FILE,
    GALLERY_FILE,
    comparison_figure,
    lr_figure,
    png_bytes,
)
from fashion_sweeps.tracking.runs import TrackedRun
from fashion_sweeps.tracking.store import search_every_experiment

log = logging.getLogger(__name__)

STAGES = ("screen", "full")
# The best model's artifacts shown in the report: (file in its run, caption).
BEST_MODEL_IMAGES = (
    (CURVES_FILE, "Learning curves"),
    ("evaluation/confusion_normalised.png", "Confusion matrix (row-normalised)"),
    ("evaluation/confusion_counts.png", "Confusion matrix (counts)"),
    (GALLERY_FILE, "Predicted vs actual: 10 random test images"),
)
PER_CLASS_FILE = "evaluation/per_class.csv"


class ReportError(RuntimeError):
    """The report cannot be built: the message says why and what to do."""


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


# --- Reading the sweep from MLflow --------------------------------------------------------------


def latest_sweep(client: MlflowClient) -> str:
    """The sweep of the most recently started stage run: what `make sweep` has just run."""
    runs = search_every_experiment(
        client, f"tags.run_kind = '{STAGE_KIND}'", ["attributes.start_time DESC"], max_results=1
    )
    if not runs or "sweep" not in runs[0].data.tags:
        raise ReportError(
            f"The MLflow store {client.tracking_uri} holds no sweep yet: run "
            "`fashion-sweeps sweep` (or `make sweep`) first, or give --tracking-uri."
        )
    return runs[0].data.tags["sweep"]


def stage_parents(client: MlflowClient, sweep: str) -> dict[str, Run]:
    """The sweep's stage parent runs by stage (the latest one where a stage has several)."""
    runs = search_every_experiment(
        client,
        f"tags.run_kind = '{STAGE_KIND}' and tags.sweep = '{sweep}'",
        ["attributes.start_time ASC"],
    )
    parents = {run.data.tags.get("stage"): run for run in runs}
    if not parents:
        stages = search_every_experiment(client, f"tags.run_kind = '{STAGE_KIND}'", [])
        known = sorted({r.data.tags["sweep"] for r in stages if "sweep" in r.data.tags})
        raise ReportError(
            f"No sweep named {sweep!r} in the MLflow store {client.tracking_uri}. "
            + (
                f"Sweeps there: {', '.join(known)}."
                if known
                else "It holds no sweep yet: run `fashion-sweeps sweep` (or `make sweep`) first."
            )
            + " Use --tracking-uri if the sweep was tracked elsewhere."
        )
    return parents


def stage_runs(client: MlflowClient, parent: Run) -> list[Run]:
    """The stage's child runs, the latest attempt of each condition."""
    tracked = TrackedRun(client, parent.info.run_id, parent.info.experiment_id, client.tracking_uri)
    return list(latest_per_condition(children(tracked)).values())


def best_run(runs: Sequence[Run]) -> Run | None:
    """The finished run with the lowest best val_loss (selected on validation, never on test)."""
    finished = [
        r
        for r in runs
        if r.data.tags.get("status") == "finished"
        and math.isfinite(r.data.metrics.get("best_val_loss", math.nan))
    ]
    return min(finished, key=lambda r: r.data.metrics["best_val_loss"], default=None)


def champion(runs: Mapping[str, Sequence[Run]]) -> tuple[str, Run | None]:
    """The sweep's best model and its stage, from its runs by stage: the best full run, else
    (no full run finished yet) the best screen run. The results page shows the same one."""
    stage = "full" if best_run(runs.get("full", [])) else "screen"
    return stage, best_run(runs.get(stage, []))


def artifact_bytes(client: MlflowClient, run_id: str, path: str) -> bytes | None:
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = client.download_artifacts(run_id, path, tmp)
        except Exception:  # absent artifacts raise store-specific errors
            return None
        return Path(local).read_bytes()


# --- Building the sections ----------------------------------------------------------------------


def _group(row: pd.Series) -> str:
    name = f"{row['backbone']} × {row['head']} × {row['optimizer']}"
    sampler = row.get("sampler")
    return name if not isinstance(sampler, str) or sampler == "none" else f"{name} × {sampler}"


def lr_series(ranking: pd.DataFrame) -> dict[str, list[tuple[float, float]]]:
    """(learning rate, val_loss) per backbone × head × optimizer; NaN for diverged conditions."""
    series: dict[str, list[tuple[float, float]]] = {}
    for _, row in ranking.iterrows():
        value = row["val_loss"] if row["status"] == "finished" else math.nan
        series.setdefault(_group(row), []).append((float(row["lr"]), float(value)))
    return series


def _label(row: pd.Series) -> str:
    return f"{row['backbone']}/{row['head']}/{row['optimizer']}/{row['lr']:g}"


def screen_sections(client: MlflowClient, runs: list[Run]) -> list[Section]:
    ranking = ranking_table(client, runs)
    counts = ranking["status"].value_counts().to_dict() if len(ranking) else {}
    summary = ", ".join(f"{n} {status}" for status, n in counts.items()) or "no conditions"
    return [
        Section(
            "Screen ranking",
            f"{len(ranking)} conditions ({summary}), ranked by val_loss. Train and validation "
            "figures are those of each run's best epoch.",
            tables=[ranking],
        ),
        Section(
            "Learning rate against val_loss",
            "One line per backbone × head × optimizer; crosses on the top edge mark diverged "
            "conditions.",
            images=[("val_loss against learning rate", png_bytes(lr_figure(lr_series(ranking))))],
        ),
    ]


def full_sections(client: MlflowClient, runs: list[Run]) -> list[Section]:
    table = comparison_table(client, runs)
    shown = table[table["status"] == "finished"]
    images = []
    if len(shown):
        names = [_label(row) for _, row in shown.iterrows()]
        metrics = {c: shown[c].tolist() for c in shown.columns if c.endswith(("loss", "accuracy"))}
        metrics["test_f1_weighted"] = shown["test_f1_weighted"].tolist()
        panels = [
            ["train_loss", "val_loss", "test_loss"],
            ["train_accuracy", "val_accuracy", "test_accuracy", "test_f1_weighted"],
        ]
        images.append(("Full runs", png_bytes(comparison_figure(names, metrics, panels))))
    return [
        Section(
            "Full runs",
            f"{len(table)} conditions trained longer with early stopping; the best checkpoint "
            "of each is tested.",
            tables=[table],
            images=images,
        )
    ]


def best_model_section(client: MlflowClient, run: Run, stage: str, registered: str) -> Section:
    tags, metrics = run.data.tags, run.data.metrics
    text = (
        f"{tags.get('condition', run.info.run_name)} (the {stage} run with the lowest "
        f"val_loss, {metrics['best_val_loss']:.4f}; test accuracy "
        f"{baseline_text(metrics.get('test_acc', math.nan), metrics)}, weighted F1 "
        f"{metrics.get('test_f1_weighted', math.nan):.4f}). MLflow run "
        f"{run.info.run_id}."
    )
    if registered:
        text += f" Registered as {registered}."
    section = Section("Best model", text)
    missing = []
    for path, caption in BEST_MODEL_IMAGES:
        data = artifact_bytes(client, run.info.run_id, path)
        if data is None:
            missing.append(path)
        else:
            section.images.append((caption, data))
    per_class = artifact_bytes(client, run.info.run_id, PER_CLASS_FILE)
    if per_class is None:
        missing.append(PER_CLASS_FILE)
    else:
        with tempfile.NamedTemporaryFile(suffix=".csv") as f:
            f.write(per_class)
            f.flush()
            section.tables.append(pd.read_csv(f.name))
    if missing:
        section.text += f" Not logged by this run: {', '.join(missing)}."
    return section


def build_report(
    client: MlflowClient, sweep: str, register_as: str | None = DEFAULT_REGISTERED_NAME
) -> tuple[Report, dict[str, Run]]:
    """The report's sections, and the stage parent runs it describes."""
    parents = stage_parents(client, sweep)
    runs = {stage: stage_runs(client, parent) for stage, parent in parents.items()}
    report = Report(sweep, [])
    if "screen" in runs:
        report.sections += screen_sections(client, runs["screen"])
    else:
        report.notes.append("No screen stage was found for this sweep.")
    if "full" in runs:
        report.sections += full_sections(client, runs["full"])
    else:
        report.notes.append("No full stage yet: run `fashion-sweeps full` for the comparison.")
    stage, best = champion(runs)
    registered = ""
    if best is None:
        report.notes.append("No run of this sweep finished: there is no best model to show.")
    else:
        if stage == "full" and register_as:
            try:
                registered = register(client, best.info.run_id, register_as, CHAMPION)
            except Exception as err:  # a run without model: say so in the report, go on
                report.notes.append(f"The best model was not registered: {err}")
        elif register_as:
            report.notes.append("Only full runs are registered: none finished yet.")
        report.sections.append(best_model_section(client, best, stage, registered))
    return report, parents


# --- Rendering ----------------------------------------------------------------------------------

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto;
       max-width: 1200px; padding: 0 1rem; color: #1f2328; }
h1 { border-bottom: 2px solid #d0d7de; padding-bottom: .3rem; }
h2 { margin-top: 2.2rem; border-bottom: 1px solid #d0d7de; padding-bottom: .2rem; }
table { border-collapse: collapse; font-size: .85rem; margin: 1rem 0; }
th, td { border: 1px solid #d0d7de; padding: .25rem .5rem; text-align: right; }
th { background: #f6f8fa; }
td:nth-child(-n+4) { text-align: left; }
tbody tr:nth-child(even) { background: #fafbfc; }
figure { margin: 1rem 0; }
figure img { max-width: 100%; border: 1px solid #d0d7de; }
figcaption { color: #57606a; font-size: .9rem; }
.scroll { overflow-x: auto; }
.note { background: #fff8c5; border: 1px solid #d4a72c; padding: .5rem .8rem; }
"""


def table_html(table: pd.DataFrame) -> str:
    inner = table.to_html(index=False, border=0, na_rep="—", float_format=lambda v: f"{v:.4g}")
    return f'<div class="scroll">{inner}</div>'


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
        parts += [table_html(table) for table in section.tables]
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
        lines += [markdown.frame_table(table) + "\n" for table in section.tables]
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


def log_report(client: MlflowClient, parents: dict[str, Run], paths: list[Path]) -> None:
    """Every file under `report/` of each stage's parent run."""
    for parent in parents.values():
        for path in paths:
            folder = "report" if path.parent.name != "images" else "report/images"
            client.log_artifact(parent.info.run_id, str(path), folder)


# --- Command line -------------------------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="fashion-sweeps report",
        description="Write a sweep's HTML report (self-contained) and its Markdown twin, log "
        "them to the stage parent runs, and register the best full run's model.",
    )
    parser.add_argument(
        "sweep",
        nargs="?",
        help="the sweep's name (`sweep.name`; by default the data set's); omitted: the sweep "
        "whose stage ran last",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="folder (default multirun/sweeps/SWEEP/report)"
    )
    parser.add_argument(
        "--register-as",
        default=DEFAULT_REGISTERED_NAME,
        help=f"registered model name for the best full run (default {DEFAULT_REGISTERED_NAME})",
    )
    parser.add_argument("--no-register", action="store_true", help="do not register a model")
    parser.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow store (default: as training, $MLFLOW_TRACKING_URI or mlruns/)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    log_to_stderr()
    args = parse_args(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a few small files
    from fashion_sweeps.tracking.runs import TrackingUnavailableError
    from fashion_sweeps.tracking.store import open_tool_store

    try:
        client = open_tool_store(args.tracking_uri)
        args.sweep = args.sweep or latest_sweep(client)
        report, parents = build_report(
            client, args.sweep, None if args.no_register else args.register_as
        )
    except (ReportError, TrackingUnavailableError) as err:
        print(f"fashion-sweeps report: {redact(str(err))}", file=sys.stderr)
        return 2
    folder = args.out or Path("multirun") / "sweeps" / folder_name(args.sweep) / "report"
    paths = write_report(report, folder)
    log_report(client, parents, paths)
    print(f"Report of sweep {args.sweep!r}: {paths[0]} (Markdown: {paths[1]})")
    for note in report.notes:
        print(f"  note: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
