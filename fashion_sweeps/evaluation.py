"""Per-class evaluation of the test split: predictions -> per-class table, overall metrics,
confusion matrices and the tail report (the classes a model fails on).

The test split's probabilities are collected once (`collect_predictions`) and every report,
plot or gallery is computed from that `Predictions` object.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
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
    # Buffers too: a kNN head on the pixels backbone (models/knn.py) has no parameters.
    device = next(itertools.chain(model.parameters(), model.buffers())).device
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


def baselines(
    train_targets: np.ndarray, test_targets: np.ndarray, classes: int
) -> dict[str, float]:
    """What a useless model scores on the test split, to read the real figures against: the
    chance level (a uniform guess, 1 / classes) and the majority-class accuracy (always the
    class most frequent in training)."""
    if len(test_targets) == 0 or len(train_targets) == 0:
        return {"chance_acc": 1.0 / max(classes, 1)}
    majority = np.bincount(train_targets, minlength=classes).argmax()
    return {
        "chance_acc": 1.0 / classes,
        "majority_acc": float((np.asarray(test_targets) == majority).mean()),
    }


def baseline_text(acc: float, metrics: dict[str, float]) -> str:
    """`72.9% (chance 12.5%, majority class 16.7%)`: a model's accuracy beside its baselines
    (`metrics`: `baselines`' keys, bare or with the run's `test_` prefix)."""
    metrics = {k.removeprefix("test_"): v for k, v in metrics.items()}
    text = f"{acc:.1%}"
    parts = [f"chance {metrics['chance_acc']:.1%}"] if "chance_acc" in metrics else []
    if "majority_acc" in metrics:
        parts.append(f"majority class {metrics['majority_acc']:.1%}")
    return f"{text} ({', '.join(parts)})" if parts else text


# --- Per class ----------------------------------------------------------------------------------

PER_CLASS_COLUMNS = ["precision", "recall", "f1", "support", "top1", "top5"]


def per_class_table(predictions: Predictions) -> pd.DataFrame:
    """One row per class (index: class name): precision, recall, F1, support, top-1 and top-5
    accuracy among the class's test images. Undefined values (a class with no test image, or
    never predicted) are NaN, not 0, so they are not mistaken for failures."""
    from sklearn.metrics import precision_recall_fscore_support

    labels = np.arange(len(predictions.classes))
    y, p = predictions.targets, predictions.predicted
    precision, recall, f1, support = precision_recall_fscore_support(
        y, p, labels=labels, average=None, zero_division=np.nan
    )
    hits1 = y == p
    hits5 = top_k_hits(predictions, 5)
    with np.errstate(invalid="ignore", divide="ignore"):
        top1 = np.bincount(y, weights=hits1, minlength=len(labels)) / support
        top5 = np.bincount(y, weights=hits5, minlength=len(labels)) / support
    table = pd.DataFrame(
        {
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "support": support.astype(int),
            "top1": top1,
            "top5": top5,
        },
        index=pd.Index(predictions.classes, name="class"),
    )
    return table[PER_CLASS_COLUMNS]


def confusion_counts(predictions: Predictions) -> np.ndarray:
    """(C, C) counts: row = true class, column = predicted class."""
    from sklearn.metrics import confusion_matrix

    labels = np.arange(len(predictions.classes))
    return confusion_matrix(predictions.targets, predictions.predicted, labels=labels)


def row_normalised(counts: np.ndarray) -> np.ndarray:
    """Each row divided by its total: the share of a true class predicted as each class
    (the diagonal is the recall). Rows of classes without test images are NaN."""
    totals = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, counts / np.maximum(totals, 1), np.nan)


def tail_report(table: pd.DataFrame, recall_below: float) -> pd.DataFrame:
    """The classes the model fails on: test recall below `recall_below`, worst first."""
    evaluated = table[table["support"] > 0]
    tail = evaluated[evaluated["recall"] < recall_below]
    return tail.sort_values(["recall", "support"], ascending=[True, False])


TOP_LOSSES = 20  # rows of top_losses.csv; the gallery shows the first tracking.gallery_size


def losses(predictions: Predictions) -> np.ndarray:
    """Each test image's cross-entropy: -log of the probability given to its true class."""
    true = predictions.probs[np.arange(len(predictions)), predictions.targets]
    return -np.log(np.clip(true, 1e-12, 1.0))


def top_losses(predictions: Predictions, k: int = TOP_LOSSES) -> pd.DataFrame:
    """The `k` test images the model got most confidently wrong (fastai's top losses): their
    index in the test split, true and predicted class, the predicted class's probability and
    the loss, highest loss first."""
    loss = losses(predictions)
    wrong = np.flatnonzero(predictions.predicted != predictions.targets)
    order = wrong[np.argsort(-loss[wrong], kind="stable")][:k]
    classes = np.asarray(predictions.classes, dtype=object)
    return pd.DataFrame(
        {
            "test_index": order,
            "actual": classes[predictions.targets[order]],
            "predicted": classes[predictions.predicted[order]],
            "probability": predictions.probs[order].max(axis=1),
            "loss": loss[order],
        }
    )


def most_confused(counts: np.ndarray, classes: Sequence[str], min_count: int = 1) -> pd.DataFrame:
    """The (actual, predicted) class pairs most often confused (fastai's most_confused), from the
    confusion counts: off the diagonal, at least `min_count` times, most first."""
    actual, predicted = np.nonzero(counts * (1 - np.eye(len(counts), dtype=counts.dtype)))
    rows = [
        (classes[a], classes[p], int(counts[a, p]))
        for a, p in zip(actual, predicted, strict=True)
        if counts[a, p] >= min_count
    ]
    table = pd.DataFrame(rows, columns=["actual", "predicted", "count"])
    return table.sort_values(["count", "actual", "predicted"], ascending=[False, True, True])


@dataclass(frozen=True)
class Evaluation:
    """Everything measured on the test split of one run."""

    classes: list[str]
    per_class: pd.DataFrame
    overall: dict[str, float]
    confusion: np.ndarray
    tail: pd.DataFrame
    recall_below: float
    top_losses: pd.DataFrame
    most_confused: pd.DataFrame

    @property
    def not_in_test(self) -> list[str]:
        """Classes with no test image (too small to split): reported, never scored."""
        return self.per_class.index[self.per_class["support"] == 0].tolist()


def evaluate(predictions: Predictions, recall_below: float = 0.5) -> Evaluation:
    """Per-class table, overall metrics (plus the worst class's recall), confusion counts and
    the tail report of one run's test predictions."""
    table = per_class_table(predictions)
    overall = overall_metrics(predictions)
    recalls = table.loc[table["support"] > 0, "recall"]
    if len(recalls):
        overall["worst_class_recall"] = float(recalls.min())
    confusion = confusion_counts(predictions)
    return Evaluation(
        classes=list(predictions.classes),
        per_class=table,
        overall=overall,
        confusion=confusion,
        tail=tail_report(table, recall_below),
        recall_below=recall_below,
        top_losses=top_losses(predictions),
        most_confused=most_confused(confusion, predictions.classes),
    )


def tail_summary(evaluation: Evaluation) -> str:
    """One paragraph for the log: which classes fall below the recall threshold."""
    parts = [
        f"{name} {row.recall:.2f} ({int(row.support)} images)"
        for name, row in evaluation.tail.iterrows()
    ]
    text = (
        f"Classes with test recall below {evaluation.recall_below:g}: " + ", ".join(parts)
        if parts
        else f"Every tested class reaches recall {evaluation.recall_below:g}."
    )
    if evaluation.not_in_test:
        text += f" Not in the test split (too few images): {', '.join(evaluation.not_in_test)}."
    return text
