"""The sweep report's content from its MLflow runs: the screen ranking and learning-rate chart,
the full runs' comparison, the best model's figures and per-class table; the champion is
registered on the way (alias `champion`).
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import pandas as pd
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from fashion_sweeps.config import Condition
from fashion_sweeps.evaluation import baseline_text
from fashion_sweeps.sweeps.report_pages import Report, Section
from fashion_sweeps.sweeps.stored_sweep import (
    artifact_bytes,
    champion,
    stage_parents,
    stage_runs,
    ui_url,
)
from fashion_sweeps.sweeps.tables import comparison_table, ranking_table
from fashion_sweeps.tracking.plots import (
    CURVES_FILE,
    GALLERY_FILE,
    comparison_figure,
    lr_figure,
    png_bytes,
)
from fashion_sweeps.tracking.registry import CHAMPION, DEFAULT_REGISTERED_NAME, register

# The best model's artifacts shown in the report: (file in its run, caption).
BEST_MODEL_IMAGES = (
    (CURVES_FILE, "Learning curves"),
    ("evaluation/confusion_normalised.png", "Confusion matrix (row-normalised)"),
    ("evaluation/confusion_counts.png", "Confusion matrix (counts)"),
    (
        GALLERY_FILE,
        "Top losses: the test images of highest loss (least probability on the actual class) first",
    ),
)
# The best model's tables shown in the report: (file in its run, rows shown).
TABLE_FILES = (
    ("evaluation/per_class.csv", None),
    ("evaluation/most_confused.csv", 10),  # the class pairs most often confused
)


def lr_series(ranking: pd.DataFrame) -> dict[str, list[tuple[float, float]]]:
    """(learning rate, val_loss) per backbone × head × optimizer; NaN for diverged conditions."""
    series: dict[str, list[tuple[float, float]]] = {}
    for _, row in ranking.iterrows():
        value = row["best_val_loss"] if row["status"] == "finished" else math.nan
        series.setdefault(Condition.from_tags(row).group, []).append(
            (float(row["lr"]), float(value))
        )
    return series


def screen_sections(client: MlflowClient, runs: list[Run]) -> list[Section]:
    ranking = ranking_table(client, runs)
    counts = ranking["status"].value_counts().to_dict() if len(ranking) else {}
    summary = ", ".join(f"{n} {status}" for status, n in counts.items()) or "no conditions"
    return [
        Section(
            "Screen ranking",
            f"{len(ranking)} conditions ({summary}), ranked by best_val_loss. The best_ "
            "figures are those of each run's best epoch, as MLflow shows them.",
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
        names = [Condition.from_tags(row).key for _, row in shown.iterrows()]
        panels = [
            ["best_train_loss", "best_val_loss", "test_loss"],
            ["best_train_acc", "best_val_acc", "test_acc", "test_f1_weighted"],
        ]
        metrics = {c: shown[c].tolist() for panel in panels for c in panel}
        chance = runs[0].data.metrics.get("test_chance_acc") if runs else None  # one data set
        figure = comparison_figure(names, metrics, panels, chance)
        images.append(("Full runs (dotted: the chance level)", png_bytes(figure)))
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
    for path, rows in TABLE_FILES:
        data = artifact_bytes(client, run.info.run_id, path)
        if data is None:
            missing.append(path)
        else:
            table = pd.read_csv(io.BytesIO(data))
            section.tables.append(table if rows is None else table.head(rows))
    if missing:
        section.text += f" Not logged by this run: {', '.join(missing)}."
    return section


def build_report(
    client: MlflowClient, sweep: str, register_as: str | None = DEFAULT_REGISTERED_NAME
) -> tuple[Report, dict[str, Run]]:
    """The report's sections, and the stage parent runs it describes."""
    parents = stage_parents(client, sweep)
    runs = {stage: stage_runs(client, parent) for stage, parent in parents.items()}
    report = Report(sweep, [], ui=ui_url(client.tracking_uri))
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


def log_report(client: MlflowClient, parents: dict[str, Run], paths: list[Path]) -> None:
    """Every file under `report/` of each stage's parent run."""
    for parent in parents.values():
        for path in paths:
            folder = "report" if path.parent.name != "images" else "report/images"
            client.log_artifact(parent.info.run_id, str(path), folder)
