"""The files of a run's test evaluation, written to its output folder and logged to MLflow
under `evaluation/`: per-class table (CSV, JSON), overall metrics, confusion matrix counts and
row-normalised (CSV, PNG with class names) and the tail report.

JSON files hold `null` where a value is undefined (NaN in the tables).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from fashion_sweeps.evaluation import Evaluation, row_normalised
from fashion_sweeps.tracking.runs import TrackedRun

ARTIFACT_DIR = "evaluation"


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _records(table: pd.DataFrame) -> list[dict[str, Any]]:
    return [
        {k: _finite_or_none(v) for k, v in row.items()}
        for row in table.reset_index().to_dict(orient="records")
    ]


def confusion_figure(matrix: np.ndarray, classes: Sequence[str], normalised: bool) -> Figure:
    """A heat map of a confusion matrix, true classes down, predicted across, values in cells."""
    n = len(classes)
    side = max(4.0, 0.45 * n + 2)
    fig = Figure(figsize=(side + 1, side))
    ax = fig.add_subplot()
    shown = np.nan_to_num(matrix.astype(float), nan=0.0)
    image = ax.imshow(shown, cmap="Blues", vmin=0, vmax=1 if normalised else max(shown.max(), 1))
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(n), classes, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(n), classes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Confusion matrix (row-normalised)" if normalised else "Confusion matrix (counts)")
    if n <= 30:  # beyond that the numbers are unreadable; the CSV has them
        threshold = (1 if normalised else shown.max()) / 2
        for i in range(n):
            for j in range(n):
                value = matrix[i, j]
                label = "" if np.isnan(value) else f"{value:.2f}" if normalised else str(int(value))
                if label in ("", "0", "0.00"):  # empty cells keep the matrix readable
                    continue
                ax.text(
                    j,
                    i,
                    label,
                    ha="center",
                    va="center",
                    fontsize=6,
                    color="white" if shown[i, j] > threshold else "black",
                )
    return fig


def _write_json(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def _write_png(path: Path, figure: Figure) -> Path:
    figure.savefig(path, dpi=100, bbox_inches="tight")
    return path


def write_evaluation(evaluation: Evaluation, folder: Path, figures: bool = True) -> list[Path]:
    """Write the evaluation files into `folder`, the confusion-matrix images if `figures`;
    returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    classes = evaluation.classes
    counts = pd.DataFrame(evaluation.confusion, index=classes, columns=classes)
    normalised = pd.DataFrame(row_normalised(evaluation.confusion), index=classes, columns=classes)
    counts.index.name = normalised.index.name = "true \\ predicted"
    evaluation.per_class.to_csv(folder / "per_class.csv", float_format="%.4f")
    counts.to_csv(folder / "confusion_counts.csv")
    normalised.to_csv(folder / "confusion_normalised.csv", float_format="%.4f")
    tail = {
        "recall_below": evaluation.recall_below,
        "classes": _records(evaluation.tail),
        "not_in_test": evaluation.not_in_test,
    }
    overall = {k: _finite_or_none(v) for k, v in evaluation.overall.items()}
    evaluation.top_losses.to_csv(folder / "top_losses.csv", index=False, float_format="%.4f")
    evaluation.most_confused.to_csv(folder / "most_confused.csv", index=False)
    tables = [
        folder / "per_class.csv",
        folder / "top_losses.csv",
        folder / "most_confused.csv",
        _write_json(folder / "per_class.json", _records(evaluation.per_class)),
        _write_json(folder / "overall.json", overall),
        _write_json(folder / "tail.json", tail),
        folder / "confusion_counts.csv",
        folder / "confusion_normalised.csv",
    ]
    if not figures:
        return tables
    return [
        *tables,
        _write_png(
            folder / "confusion_counts.png",
            confusion_figure(evaluation.confusion, classes, normalised=False),
        ),
        _write_png(
            folder / "confusion_normalised.png",
            confusion_figure(normalised.to_numpy(), classes, normalised=True),
        ),
    ]


def log_evaluation(
    run: TrackedRun, evaluation: Evaluation, folder: Path, figures: bool = True
) -> list[Path]:
    """Write the evaluation files into `folder` and log them to the run under `evaluation/`."""
    paths = write_evaluation(evaluation, folder, figures)
    for path in paths:
        run.log_file(path, ARTIFACT_DIR)
    return paths
