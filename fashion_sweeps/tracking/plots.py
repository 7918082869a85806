"""Figures of runs and sweeps: learning curves, the prediction gallery, learning rate against
val_loss, and the full runs' comparison bars.

Figures are built with `matplotlib.figure.Figure` directly (no pyplot): no global state, no
display backend, safe in sweep workers.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from mlflow.tracking import MlflowClient

from fashion_sweeps import run_folder
from fashion_sweeps.evaluation import Predictions, losses
from fashion_sweeps.tracking.runs import TrackedRun, metric_curve

RIGHT, WRONG = "#1a7f37", "#cf222e"  # green / red titles in the gallery
CURVES = (("loss", "train_loss", "val_loss"), ("accuracy", "train_acc", "val_acc"))


def png_bytes(fig: Figure, dpi: int = 100) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return buffer.getvalue()


# --- Learning curves ----------------------------------------------------------------------------


def epoch_histories(
    client: MlflowClient, run_id: str, keys: Sequence[str]
) -> dict[str, list[tuple[int, float]]]:
    """Per metric, its (epoch, value) points: per-epoch metrics step by epoch, from 1."""
    return {
        key: [(m.step, float(m.value)) for m in metric_curve(client, run_id, key)] for key in keys
    }


def chance_line(ax: Any, chance: float | None) -> None:
    """The chance level (a uniform guess, 1 / classes) across an accuracy chart."""
    if chance is not None and math.isfinite(chance):
        ax.axhline(chance, color="grey", linestyle=":", linewidth=1, label=f"chance {chance:.3f}")


def learning_curves_figure(
    histories: Mapping[str, Sequence[tuple[int, float]]], chance: float | None = None
) -> Figure:
    """Loss and accuracy per epoch, train against validation, side by side; `chance` drawn
    across the accuracy chart."""
    fig = Figure(figsize=(10, 4))
    for ax, (title, train_key, val_key) in zip(fig.subplots(1, 2), CURVES, strict=True):
        for key, style in ((train_key, "o-"), (val_key, "s--")):
            points = histories.get(key) or []
            if points:
                epochs, values = zip(*points, strict=True)
                ax.plot(epochs, values, style, label=key)
        if title == "accuracy" and ax.has_data():
            chance_line(ax, chance)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if ax.has_data():
            ax.legend()
            ax.xaxis.get_major_locator().set_params(integer=True)
        else:
            ax.text(0.5, 0.5, "no epochs logged", ha="center", va="center", transform=ax.transAxes)
    return fig


# --- Prediction gallery -------------------------------------------------------------------------


def gallery_indices(losses: np.ndarray, count: int) -> np.ndarray:
    """The `count` test images of the highest loss, highest first (fastai's top losses: the
    images the model got most confidently wrong, then its least sure right answers)."""
    return np.argsort(-np.asarray(losses), kind="stable")[:count]


def gallery_figure(
    images: np.ndarray,
    targets: Sequence[int],
    probabilities: np.ndarray,
    classes: Sequence[str],
    columns: int = 5,
    accuracy: str = "",
) -> Figure:
    """Images (N, H, W, C) uint8 with their predicted and actual labels: green titles when right,
    red when wrong, with the predicted class's probability; `accuracy`, the model's test
    accuracy beside its baselines, in the title."""
    n = len(images)
    rows = max(1, math.ceil(n / columns))
    fig = Figure(figsize=(2.4 * columns, 2.7 * rows))
    axes = np.atleast_1d(fig.subplots(rows, columns)).ravel()
    predicted = probabilities.argmax(axis=1)
    for ax in axes:
        ax.axis("off")
    for ax, image, target, pred, probs in zip(
        axes, images, targets, predicted, probabilities, strict=False
    ):
        grey = image.shape[-1] == 1
        ax.imshow(image[..., 0] if grey else image, cmap="gray" if grey else None, vmin=0, vmax=255)
        ax.set_title(
            f"pred: {classes[pred]} ({probs[pred]:.2f})\ntrue: {classes[target]}",
            color=RIGHT if pred == target else WRONG,
            fontsize=9,
        )
    fig.suptitle(
        "Top losses (test set): predicted vs actual, highest loss (least probability on the actual class) first"
        + (f"; test accuracy {accuracy}" if accuracy else "")
    )
    return fig


# --- Sweep report figures -----------------------------------------------------------------------


def lr_figure(series: Mapping[str, Sequence[tuple[float, float]]]) -> Figure:
    """val_loss against learning rate (log scale), one line per backbone × head × optimizer.
    Diverged conditions (NaN) are drawn as crosses on the top edge."""
    fig = Figure(figsize=(9, 5))
    ax = fig.subplots()
    finite = [v for points in series.values() for _, v in points if math.isfinite(v)]
    top = max(finite) * 1.05 if finite else 1.0
    for name, points in sorted(series.items()):
        points = sorted(points)
        ok = [(lr, v) for lr, v in points if math.isfinite(v)]
        failed = [lr for lr, v in points if not math.isfinite(v)]
        (line,) = ax.plot(*zip(*ok, strict=True), "o-", label=name) if ok else ax.plot([], [])
        if failed:
            ax.plot(failed, [top] * len(failed), "x", color=line.get_color(), markersize=10)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("best val_loss")
    ax.set_title("Learning rate against val_loss (x on the top edge: diverged)")
    ax.grid(alpha=0.3, which="both")
    if series:  # outside the axes: with many lines a legend inside hides some of them
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def comparison_figure(
    names: Sequence[str],
    metrics: Mapping[str, Sequence[float]],
    panels: Sequence[Sequence[str]],
    chance: float | None = None,
) -> Figure:
    """Grouped bars: one panel per group of metric names (e.g. losses, accuracies), one bar
    group per model; `chance` drawn across the panels of accuracies."""
    fig = Figure(figsize=(max(8, 1.6 * len(names) * len(panels)), 4.5))
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    x = np.arange(len(names))
    for ax, keys in zip(axes, panels, strict=True):
        keys = [k for k in keys if k in metrics]
        width = 0.8 / max(1, len(keys))
        for i, key in enumerate(keys):
            values = np.asarray(metrics[key], dtype=float)
            bars = ax.bar(x + (i - (len(keys) - 1) / 2) * width, values, width, label=key)
            ax.bar_label(bars, fmt="%.3f", fontsize=7, rotation=90, padding=2)
        if any("acc" in k for k in keys):
            chance_line(ax, chance)
        ax.set_xticks(x, names, rotation=20, ha="right", fontsize=8)
        ax.margins(y=0.2)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle("Full runs")
    return fig


# --- Per-run artifacts --------------------------------------------------------------------------

CURVES_FILE = "plots/learning_curves.png"
GALLERY_FILE = "plots/gallery.png"


def log_learning_curves(
    run: TrackedRun, chance: float | None = None, folder: Path | None = None
) -> None:
    """Read the run's per-epoch metrics back from MLflow and log their curves as a PNG, the
    `chance` level across the accuracy chart; the same file as `results.png` in `folder`."""
    keys = [key for _, *pair in CURVES for key in pair]
    figure = learning_curves_figure(epoch_histories(run.client, run.run_id, keys), chance)
    run.client.log_figure(run.run_id, figure, CURVES_FILE, save_kwargs={"bbox_inches": "tight"})
    if folder is not None:
        figure.savefig(run_folder.results_figure(folder), bbox_inches="tight")


def log_gallery(
    run: TrackedRun,
    images: np.ndarray,
    predictions: Predictions,
    count: int = 10,
    accuracy: str = "",
) -> None:
    """Log the `count` test images of the highest loss with predicted and actual labels."""
    if len(images) == 0:
        return
    pick = gallery_indices(losses(predictions), count)
    figure = gallery_figure(
        images[pick],
        predictions.targets[pick],
        predictions.probs[pick],
        predictions.classes,
        accuracy=accuracy,
    )
    run.client.log_figure(run.run_id, figure, GALLERY_FILE, save_kwargs={"bbox_inches": "tight"})
