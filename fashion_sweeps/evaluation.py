"""Per-class evaluation of the test split: predictions -> per-class table, overall metrics,
confusion matrices and the tail report (the classes a model fails on).

The test split's probabilities are collected once (`collect_predictions`) and every report,
plot or gallery is computed from that `Predictions` object.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class Predictions:
    """`probs` (N, C) softmax probabilities, `targets` (N,) true class indices, `classes` the
    class names in index order."""

    probs: np.ndarray
    targets: np.ndarray
    classes: list[str]

    @property
    def predicted(self) -> np.ndarray:
        return self.probs.argmax(axis=1)

    def __len__(self) -> int:
        return len(self.targets)


@torch.no_grad()
def collect_predictions(
    model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]
) -> Predictions:
    """Run `model` (a Classifier or the LightningModule around one) over (images, targets)
    batches in eval mode and keep the softmax probabilities and targets."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    probs, targets = [], []
    try:
        for x, y in batches:
            logits = model(x.to(device))
            probs.append(torch.softmax(logits.float(), dim=1).cpu())
            targets.append(y.cpu())
    finally:
        model.train(was_training)
    classes = list(getattr(model, "classes", None) or model.model.classes)
    if not probs:
        return Predictions(np.zeros((0, len(classes)), np.float32), np.zeros(0, np.int64), classes)
    return Predictions(
        probs=torch.cat(probs).numpy(),
        targets=torch.cat(targets).numpy().astype(np.int64),
        classes=classes,
    )


def top_k_hits(predictions: Predictions, k: int = 5) -> np.ndarray:
    """Per item, whether the true class is among the `k` most probable (k capped at C)."""
    k = min(k, predictions.probs.shape[1])
    top = np.argsort(-predictions.probs, axis=1, kind="stable")[:, :k]
    return (top == predictions.targets[:, None]).any(axis=1)


def overall_metrics(predictions: Predictions) -> dict[str, float]:
    """Accuracy, top-5 accuracy, weighted and macro F1, balanced accuracy over the test split.

    Macro averages run over the classes present in the targets or the predictions (as
    scikit-learn and torchmetrics do), so a class absent from the test split counts for nothing.
    """
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

    y, p = predictions.targets, predictions.predicted
    if len(y) == 0:
        return {}
    # scikit-learn warns when a predicted class has no test item; the score is still right.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        balanced = balanced_accuracy_score(y, p)
    return {
        "acc": float(accuracy_score(y, p)),
        "top5_acc": float(top_k_hits(predictions, 5).mean()),
        "f1_weighted": float(f1_score(y, p, average="weighted", zero_division=0)),
        "f1_macro": float(f1_score(y, p, average="macro", zero_division=0)),
        "balanced_acc": float(balanced),
    }
