"""What a finished run leaves for people to look at and use: learning curves, the prediction
gallery and the deployable model  (conf/tracking/: `plots`, `log_model`, `gallery_size`).

Each is logged on its own: one that fails is recorded as a `skipped_<name>` tag with the reason
and logged as a warning, and the run (already trained, tested and measured) still finishes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from fashion_sweeps.evaluation import Predictions
from fashion_sweeps.models.classifier import Classifier
from fashion_sweeps.tracking.model_logging import log_classifier
from fashion_sweeps.tracking.plots import log_gallery, log_learning_curves
from fashion_sweeps.tracking.runs import TrackedRun

log = logging.getLogger(__name__)


def _attempt(run: TrackedRun, name: str, step: Callable[[], object]) -> None:
    try:
        step()
    except Exception as err:  # an artifact must never cost the run its results
        reason = f"{type(err).__name__}: {err}"
        log.warning("Run %s: %s not logged (%s)", run.run_id, name, reason)
        run.set_tags({f"skipped_{name}": reason[:5000]})


def log_run_results(
    run: TrackedRun,
    model: Classifier,
    test_images: Callable[[], Any],
    predictions: Predictions,
    tracking: DictConfig,
    accuracy: str = "",
    chance: float | None = None,
    folder: Path | None = None,
) -> None:
    """Log the learning curves, a gallery of the `tracking.gallery_size` test images of highest
    loss (`test_images()`:
    (N, H, W, C) uint8, an array or an array-like that copies only the rows it is indexed by,
    in the order of `predictions`), and, when `tracking.log_model`, the
    model with two test images as input example. `accuracy`: the test accuracy beside its
    baselines, for the gallery's title; `chance`: the chance level drawn on the curves, also
    written to `folder` (the run folder's results.png). Without `tracking.plots`, neither figure."""
    if tracking.get("plots", True):
        _log_figures(run, test_images(), predictions, tracking, accuracy, chance, folder)
    if tracking.get("log_model", True):
        example = np.asarray(test_images()[:2]).transpose(0, 3, 1, 2)
        _attempt(run, "model", lambda: log_classifier(run, model, example))


def _log_figures(
    run: TrackedRun,
    test_images: np.ndarray,
    predictions: Predictions,
    tracking: DictConfig,
    accuracy: str,
    chance: float | None,
    folder: Path | None,
) -> None:
    _attempt(run, "learning_curves", lambda: log_learning_curves(run, chance, folder))
    _attempt(
        run,
        "gallery",
        lambda: log_gallery(
            run, test_images, predictions, tracking.get("gallery_size", 10), accuracy
        ),
    )
