"""Per-class evaluation: equal to scikit-learn on fixed predictions, the tail report, the
artifacts of a real run, and a class with a single image reported rather than crashing."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    classification_report,
    f1_score,
    top_k_accuracy_score,
)

from fashion_sweeps.evaluation import (
    Predictions,
    baseline_text,
    baselines,
    collect_predictions,
    evaluate,
    row_normalised,
    tail_summary,
)
from fashion_sweeps.tracking.evaluation_artifacts import write_evaluation
from fashion_sweeps.tracking.runs import tracking_uri
from fashion_sweeps.train import train

CLASSES = [f"c{i}" for i in range(7)]


def fixed_predictions() -> Predictions:
    """120 seeded predictions over 7 classes: c5 never predicted, c6 never in the targets."""
    rng = np.random.default_rng(7)
    targets = rng.choice(6, size=120, p=[0.4, 0.25, 0.15, 0.1, 0.07, 0.03])
    logits = rng.normal(size=(120, 7))
    logits[np.arange(120), targets] += rng.choice([0.0, 3.0], size=120, p=[0.4, 0.6])
    logits[:, 5] -= 10  # c5 is never the top prediction
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return Predictions(probs=probs, targets=targets, classes=CLASSES)


def test_per_class_table_equals_scikit_learns_classification_report() -> None:
    predictions = fixed_predictions()
    table = evaluate(predictions).per_class
    report = classification_report(
        predictions.targets,
        predictions.predicted,
        labels=range(7),
        target_names=CLASSES,
        output_dict=True,
        zero_division=np.nan,
    )
    for name in CLASSES:
        row = table.loc[name]
        expected = report[name]
        assert row["support"] == expected["support"]
        for ours, theirs in (("precision", "precision"), ("recall", "recall"), ("f1", "f1-score")):
            assert row[ours] == pytest.approx(expected[theirs], nan_ok=True), (name, ours)
    assert math.isnan(table.loc["c5", "precision"])  # never predicted: undefined, not 0
    assert table.loc["c6", "support"] == 0 and math.isnan(table.loc["c6", "recall"])


def test_per_class_top1_and_top5_equal_scikit_learns_top_k_accuracy() -> None:
    predictions = fixed_predictions()
    table = evaluate(predictions).per_class
    for i, name in enumerate(CLASSES[:6]):
        mine = predictions.targets == i
        for k, column in ((1, "top1"), (5, "top5")):
            expected = top_k_accuracy_score(
                predictions.targets[mine], predictions.probs[mine], k=k, labels=range(7)
            )
            assert table.loc[name, column] == pytest.approx(expected), (name, column)
    assert (table["top5"].dropna() >= table["top1"].dropna()).all()


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_overall_metrics_equal_scikit_learn() -> None:
    predictions = fixed_predictions()
    y, p = predictions.targets, predictions.predicted
    overall = evaluate(predictions).overall
    assert overall["acc"] == pytest.approx(accuracy_score(y, p))
    assert overall["top5_acc"] == pytest.approx(
        top_k_accuracy_score(y, predictions.probs, k=5, labels=range(7))
    )
    assert overall["f1_weighted"] == pytest.approx(f1_score(y, p, average="weighted"))
    assert overall["f1_macro"] == pytest.approx(f1_score(y, p, average="macro", zero_division=0))
    assert overall["balanced_acc"] == pytest.approx(balanced_accuracy_score(y, p))
    table = evaluate(predictions).per_class
    assert overall["worst_class_recall"] == pytest.approx(table["recall"].min())


def test_confusion_matrix_rows_are_true_classes() -> None:
    predictions = fixed_predictions()
    evaluation = evaluate(predictions)
    counts = evaluation.confusion
    assert counts.sum() == 120
    assert counts.sum(axis=1).tolist() == evaluation.per_class["support"].tolist()
    normalised = row_normalised(counts)
    assert np.diag(normalised)[:6] == pytest.approx(evaluation.per_class["recall"][:6].to_numpy())
    assert np.isnan(normalised[6]).all()  # no test image of c6


def test_tail_report_lists_the_classes_below_the_recall_threshold_worst_first() -> None:
    evaluation = evaluate(fixed_predictions(), recall_below=0.7)
    recalls = evaluation.per_class["recall"]
    expected = recalls[recalls < 0.7].sort_values()
    assert evaluation.tail.index.tolist() == expected.index.tolist()
    assert "c5" in evaluation.tail.index  # never predicted: recall 0
    assert evaluation.not_in_test == ["c6"]
    text = tail_summary(evaluation)
    assert "below 0.7" in text and "c5 0.00" in text and "Not in the test split" in text
    assert evaluate(fixed_predictions(), recall_below=0.0).tail.empty


def test_a_single_test_image_class_is_reported() -> None:
    probs = np.array([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0], [0.6, 0.3, 0.1]])
    evaluation = evaluate(Predictions(probs, np.array([0, 1, 2]), ["a", "b", "c"]))
    assert evaluation.per_class.loc["c"].to_dict() == pytest.approx(
        {"precision": math.nan, "recall": 0.0, "f1": 0.0, "support": 1, "top1": 0.0, "top5": 1.0},
        nan_ok=True,
    )
    assert evaluation.tail.index.tolist() == ["c"]


def test_evaluation_files_are_written_with_class_names(tmp_path: Path) -> None:
    evaluation = evaluate(fixed_predictions())
    paths = write_evaluation(evaluation, tmp_path)
    assert {p.name for p in paths} == {
        "per_class.csv",
        "per_class.json",
        "top_losses.csv",
        "most_confused.csv",
        "overall.json",
        "tail.json",
        "confusion_counts.csv",
        "confusion_normalised.csv",
        "confusion_counts.png",
        "confusion_normalised.png",
    }
    table = pd.read_csv(tmp_path / "per_class.csv", index_col="class")
    assert table.index.tolist() == CLASSES
    assert table["support"].tolist() == evaluation.per_class["support"].tolist()
    records = json.loads((tmp_path / "per_class.json").read_text())  # strict JSON: null, no NaN
    assert records[5]["class"] == "c5" and records[5]["precision"] is None
    counts = pd.read_csv(tmp_path / "confusion_counts.csv", index_col=0)
    assert counts.columns.tolist() == CLASSES and counts.to_numpy().sum() == 120
    for png in ("confusion_counts.png", "confusion_normalised.png"):
        with Image.open(tmp_path / png) as image:
            assert image.format == "PNG" and min(image.size) > 200


def test_baselines_are_a_uniform_guess_and_the_training_majority_class() -> None:
    train_targets = np.array([0, 1, 1, 1, 2])
    test_targets = np.array([1, 0, 0, 2])
    floor = baselines(train_targets, test_targets, classes=4)
    assert floor == {"chance_acc": 0.25, "majority_acc": 0.25}  # class 1: 1 of 4 test items
    assert baseline_text(0.729, floor) == "72.9% (chance 25.0%, majority class 25.0%)"


def test_collect_predictions_runs_the_model_in_eval_mode_over_every_batch() -> None:
    class Doubler(torch.nn.Module):
        classes = ("a", "b")

        def __init__(self) -> None:
            super().__init__()
            self.drop = torch.nn.Dropout(0.9)
            self.w = torch.nn.Parameter(torch.tensor([[1.0, -1.0]]))

        def forward(self, x):
            return self.drop(x.float()[:, :1] * self.w)

    model = Doubler().train()
    batches = [
        (torch.tensor([[1.0], [2.0]]), torch.tensor([0, 0])),
        (torch.tensor([[-1.0]]), torch.tensor([1])),
    ]
    predictions = collect_predictions(model, batches)
    assert model.training  # restored
    assert predictions.targets.tolist() == [0, 0, 1]
    assert predictions.predicted.tolist() == [0, 0, 1]  # dropout off: deterministic
    assert predictions.probs.sum(axis=1) == pytest.approx([1, 1, 1])


def test_a_run_logs_per_class_artifacts_and_overall_metrics(make_cfg, clothing_root: Path) -> None:
    cfg = make_cfg(
        "dataset=clothing",
        f"dataset.root={clothing_root}",
        "dataset.exclude=[]",  # keeps 'Skip', one image: train only, reported as not tested
        "dataset.image_size=16",
        "dataset.decode_workers=1",
        "backbone=simple_cnn",
        "backbone.width=4",
        "trainer.max_epochs=1",
        "tail_recall=1.01",  # every tested class is in the tail
    )
    train(cfg)
    client = MlflowClient(tracking_uri(cfg.tracking))
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    metrics = run.data.metrics
    for key in ("test_acc", "test_top5_acc", "test_f1_weighted", "test_f1_macro"):
        assert 0 <= metrics[key] <= 1, key
    assert metrics["test_top5_acc"] == 1.0  # 4 classes: the top 5 hold every one
    assert 0 <= metrics["test_balanced_acc"] <= 1 and "test_worst_class_recall" in metrics
    listed = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")}
    assert "evaluation/per_class.csv" in listed and "evaluation/confusion_normalised.png" in listed
    folder = Path(client.download_artifacts(run.info.run_id, "evaluation", str(cfg.output_dir)))
    table = pd.read_csv(folder / "per_class.csv", index_col="class")
    assert table.loc["Skip", "support"] == 0
    assert table["support"].sum() == int(run.data.params["n_test"])
    # A useless model's figures beside the model's: 4 classes, and the test share of the class
    # most frequent in training (ties: the first class in the label map).
    assert metrics["test_chance_acc"] == 0.25
    train_counts = json.loads(run.data.params["train_counts_before"])
    majority = max(table.index, key=lambda c: (train_counts.get(c, 0), -list(table.index).index(c)))
    share = table.loc[majority, "support"] / table["support"].sum()
    assert metrics["test_majority_acc"] == pytest.approx(share)
    tail = json.loads((folder / "tail.json").read_text())
    assert tail["not_in_test"] == ["Skip"]
    assert {c["class"] for c in tail["classes"]} == {"Dress", "Pants", "Shoes"}
