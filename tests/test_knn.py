"""The kNN head (head=knn): the votes scikit-learn's KNeighborsClassifier gives, a real run that
stores the frozen features instead of training and is tracked like any other, and a clear error
where the features would not be fixed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from sklearn.neighbors import KNeighborsClassifier

from fashion_sweeps.data.sources import FMNIST_CLASSES
from fashion_sweeps.models import knn as knn_module
from fashion_sweeps.models.knn import KnnConfigError, KnnHead
from fashion_sweeps.tracking.model_logging import load_classifier
from fashion_sweeps.tracking.runs import tracking_uri
from fashion_sweeps.train import train

CLASSES = 4


def random_features(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 6)).astype(np.float32), np.arange(n) % CLASSES


@pytest.mark.parametrize("weights", ["uniform", "distance"])
@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("k", [1, 4, 7])
def test_votes_are_scikit_learns(monkeypatch, k: int, metric: str, weights: str) -> None:
    # Blocks smaller than the data: the running top-k across blocks is what is checked.
    monkeypatch.setattr(knn_module, "ROW_CHUNK", 16)
    monkeypatch.setattr(knn_module, "QUERY_CHUNK", 7)
    train_x, train_y = random_features(50, seed=0)
    query, _ = random_features(23, seed=1)
    head = KnnHead(6, CLASSES, k=k, metric=metric, weights=weights)
    head.fit(torch.from_numpy(train_x), torch.from_numpy(train_y))
    reference = KNeighborsClassifier(k, metric=metric, weights=weights, algorithm="brute")
    reference.fit(train_x.astype(np.float64), train_y)

    distances, _ = head.neighbours(torch.from_numpy(query))
    expected_distances, _ = reference.kneighbors(query.astype(np.float64))
    np.testing.assert_allclose(distances.numpy(), expected_distances, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        probs = torch.softmax(head(torch.from_numpy(query)), dim=1).numpy()
    s = head.smoothing
    expected = (1 - s) * reference.predict_proba(query.astype(np.float64)) + s / CLASSES
    np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-6)
    # Ties (k=4, uniform) go to the lowest class index, as in scikit-learn's predict.
    np.testing.assert_array_equal(probs.argmax(axis=1), reference.predict(query))


def test_stored_rows_travel_in_the_state_dict() -> None:
    train_x, train_y = random_features(30, seed=2)
    query = torch.from_numpy(random_features(5, seed=3)[0])
    fitted = KnnHead(6, CLASSES, k=3).fit(torch.from_numpy(train_x), torch.from_numpy(train_y))
    fresh = KnnHead(6, CLASSES, k=3)
    # Not fitted: no evidence, every class equally likely.
    torch.testing.assert_close(torch.softmax(fresh(query), 1), torch.full((5, CLASSES), 0.25))
    fresh.load_state_dict(fitted.state_dict())
    torch.testing.assert_close(fresh(query), fitted(query))


@pytest.mark.parametrize(
    "option,message",
    [("k", "head.k=0"), ("metric", "head.metric='manhattan'"), ("weights", "head.weights='x'")],
)
def test_bad_options_are_named(option: str, message: str) -> None:
    value = {"k": 0, "metric": "manhattan", "weights": "x"}[option]
    with pytest.raises(ValueError, match=message):
        KnnHead(6, CLASSES, **{option: value})


def runs_by_case(cfg) -> dict[str, object]:
    client = MlflowClient(tracking_uri(cfg.tracking))
    [experiment] = client.search_experiments(filter_string="name = 'fashion_mnist'")
    return {r.data.tags["case"]: r for r in client.search_runs([experiment.experiment_id])}


def knn_cfg(make_cfg, fmnist_root: Path, case: str, *overrides: str):
    cfg = make_cfg(
        "dataset=fashion_mnist",
        f"dataset.root={fmnist_root}",
        "head=knn",
        f"+tracking.tags.case={case}",
        *overrides,
    )
    cfg.output_dir = f"{cfg.output_dir}/{case}"  # a folder holds one run (job_run.py)
    return cfg


def test_knn_run_stores_features_and_is_tracked_like_any_run(make_cfg, fmnist_root) -> None:
    mlp = ["backbone=mlp", "backbone.hidden=16", "backbone.freeze=true", "tracking.log_model=false"]
    first = knn_cfg(make_cfg, fmnist_root, "first", *mlp, "head.k=3")
    best = train(first)
    # Another k on the same frozen backbone: the training features come from the feature cache.
    train(knn_cfg(make_cfg, fmnist_root, "again", *mlp, "head.k=1", "head.metric=cosine"))
    # kNN on pixels (the Fashion-MNIST benchmark's), with the deployable model logged.
    train(knn_cfg(make_cfg, fmnist_root, "pixels", "backbone=pixels"))

    runs = runs_by_case(first)
    for case, run in runs.items():
        assert run.info.status == "FINISHED" and run.data.tags["status"] == "finished", case
        assert run.data.tags["head"] == "knn"
        metrics = run.data.metrics
        for key in ("val_loss", "val_acc", "val_f1_weighted", "val_f1_macro", "test_loss"):
            assert np.isfinite(metrics[key]), (case, key)
        for key in ("test_acc", "test_f1_weighted", "test_f1_macro", "test_balanced_acc"):
            assert 0 <= metrics[key] <= 1, (case, key)
        assert metrics["best_val_loss"] == pytest.approx(metrics["val_loss"])
        assert "train_loss" not in metrics  # nothing was trained
    assert runs["first"].data.metrics["best_val_loss"] == pytest.approx(best)
    assert runs["first"].data.params["head.k"] == "3"
    assert runs["first"].data.tags["feature_cache"] == "miss"
    assert runs["again"].data.tags["feature_cache"] == "hit"
    assert Path(first.output_dir, "checkpoints", "knn.ckpt").is_file()

    # Bright bands whose row is the class: the pixels' nearest neighbours share the class.
    pixels = runs["pixels"]
    assert pixels.data.metrics["test_acc"] == 1.0
    # The logged Classifier holds the stored rows: raw uint8 images in, the same predictions.
    classifier = load_classifier(pixels.data.tags["model_uri"]).eval()
    images = torch.randint(0, 50, (10, 1, 28, 28), dtype=torch.uint8)
    for label in range(10):
        images[label, :, 2 * label : 2 * label + 3, :] = 250
    with torch.no_grad():
        predicted = [classifier.classes[i] for i in classifier(images).argmax(1)]
    assert predicted == FMNIST_CLASSES  # IDX label order; the model's indices are sorted names


@pytest.mark.parametrize(
    "overrides,problem",
    [
        (["backbone=mlp"], "backbone.freeze=False leaves backbone weights to train"),
        (["backbone=mlp", "backbone.freeze=2"], "backbone.freeze=2"),
        (["backbone=pixels", "+dataset.augment.flip=true"], "dataset.augment changes"),
    ],
)
def test_knn_needs_fixed_features(make_cfg, fmnist_root, overrides, problem) -> None:
    cfg = knn_cfg(make_cfg, fmnist_root, "bad", *overrides)
    with pytest.raises(KnnConfigError, match=problem) as err:
        train(cfg)
    assert "Set backbone.freeze=true" in str(err.value)
    assert not Path(cfg.tracking.dir).exists()  # refused before any run was opened
