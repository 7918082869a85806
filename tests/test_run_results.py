"""What a tiny real run leaves in MLflow for people: curves, gallery, label map and the model."""

from __future__ import annotations

import io
import json

import mlflow
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image

from fashion_sweeps.data.datamodule import prepare_arrays
from fashion_sweeps.evaluation import Predictions, losses, most_confused, top_losses
from fashion_sweeps.inference import engines
from fashion_sweeps.models.classifier import Classifier
from fashion_sweeps.tracking.model_logging import load_classifier
from fashion_sweeps.tracking.plots import epoch_histories, gallery_indices
from fashion_sweeps.tracking.runs import tracking_uri
from fashion_sweeps.train import train


def artifact(client: MlflowClient, run_id: str, path: str, tmp_path) -> bytes:
    return open(client.download_artifacts(run_id, path, str(tmp_path)), "rb").read()


def test_a_run_leaves_curves_gallery_label_map_and_a_servable_model(
    make_cfg, tiny_clothing, clothing_root, tmp_path, monkeypatch
) -> None:
    # The served model's numbers compared with PyTorch's to 1e-5: it runs on PyTorch here.
    monkeypatch.setenv(engines.ENGINE_ENV, "torch")
    cfg = make_cfg(*tiny_clothing, "trainer.max_epochs=2", f"dataset.root={clothing_root}")
    train(cfg)
    client = MlflowClient(tracking_uri(cfg.tracking))
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.data.tags["status"] == "finished"
    assert not [t for t in run.data.tags if t.startswith("skipped_")]

    for path, min_width in (("plots/learning_curves.png", 400), ("plots/gallery.png", 400)):
        image = Image.open(io.BytesIO(artifact(client, run.info.run_id, path, tmp_path)))
        image.verify()
        assert image.format == "PNG" and image.size[0] >= min_width

    # The curves are drawn from one point per epoch, read back from MLflow.
    histories = epoch_histories(client, run.info.run_id, ["train_loss", "val_loss", "val_acc"])
    assert {k: [e for e, _ in v] for k, v in histories.items()} == {
        "train_loss": [1, 2],
        "val_loss": [1, 2],
        "val_acc": [1, 2],
    }

    classes = json.loads(artifact(client, run.info.run_id, "label_map.json", tmp_path))
    assert classes == ["Dress", "Pants", "Shoes"]

    # The logged model tags the run's own test images with its class names.
    prepared = prepare_arrays(cfg.dataset, cfg.seed)
    test = prepared.pixels[prepared.indices("test")].transpose(0, 3, 1, 2)
    model = mlflow.pyfunc.load_model(run.data.tags["model_uri"])
    out = model.predict(np.ascontiguousarray(test))
    assert len(out) == len(test)
    assert set(out["label"]) <= set(classes)
    np.testing.assert_allclose(out[classes].sum(axis=1), 1.0, rtol=1e-5)

    # ... and the PyTorch model inside it is the Classifier, classes and size included.
    torch_model = load_classifier(run.data.tags["model_uri"])
    assert isinstance(torch_model, Classifier)
    assert (torch_model.classes, torch_model.image_size) == (classes, 16)
    with torch.no_grad():
        expected = torch.softmax(torch_model(torch.from_numpy(test)), dim=1).numpy()
    np.testing.assert_allclose(out[classes].to_numpy(), expected, rtol=1e-5, atol=1e-6)


def test_model_logging_can_be_switched_off(make_cfg, tiny_clothing, clothing_root) -> None:
    cfg = make_cfg(
        *tiny_clothing,
        "trainer.max_epochs=2",
        f"dataset.root={clothing_root}",
        "tracking.log_model=false",
    )
    train(cfg)
    client = MlflowClient(tracking_uri(cfg.tracking))
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert "model_uri" not in run.data.tags
    names = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert names == {"plots/learning_curves.png", "plots/gallery.png"}


def test_the_gallery_shows_the_top_losses_first() -> None:
    """A random gallery showed mostly right answers: fastai's top losses show what to look at."""
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.05, 0.95], [0.5, 0.5]])
    predictions = Predictions(probs, np.array([0, 0, 0, 0, 1]), ["a", "b"])
    assert list(gallery_indices(losses(predictions), 3)) == [3, 1, 4]
    top = top_losses(predictions)  # the wrong ones only, the most confident first
    assert list(top["test_index"]) == [3, 1, 4]
    assert list(top["predicted"]) == ["b", "b", "a"]
    assert list(top["probability"]) == [0.95, 0.8, 0.5]


def test_most_confused_pairs_come_most_first() -> None:
    counts = np.array([[5, 3, 0], [1, 4, 2], [0, 3, 6]])
    table = most_confused(counts, ["a", "b", "c"])
    assert table.values.tolist() == [["a", "b", 3], ["c", "b", 3], ["b", "c", 2], ["b", "a", 1]]


def test_figures_can_be_switched_off_and_the_tables_stay(
    make_cfg, tiny_clothing, clothing_root
) -> None:
    """A screen trial draws no figures (conf/sweep/grid.yaml): drawing them was most of its
    teardown. Its metrics and evaluation tables are logged all the same."""
    cfg = make_cfg(
        *tiny_clothing,
        "trainer.max_epochs=1",
        f"dataset.root={clothing_root}",
        "tracking.log_model=false",
        "tracking.plots=false",
    )
    train(cfg)
    client = MlflowClient(tracking_uri(cfg.tracking))
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.data.tags["status"] == "finished" and "test_acc" in run.data.metrics
    assert not client.list_artifacts(run.info.run_id, "plots")
    evaluation = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")}
    assert "evaluation/per_class.csv" in evaluation
    assert not [p for p in evaluation if p.endswith(".png")]


def test_the_learning_curves_draw_the_chance_level(make_cfg, clothing_root, monkeypatch) -> None:
    """Passed from the test's baselines (the curves read `chance_acc`, which no run logs)."""
    from fashion_sweeps.tracking import plots

    drawn = []
    original = plots.learning_curves_figure
    monkeypatch.setattr(
        plots, "learning_curves_figure", lambda h, chance=None: drawn.append(chance) or original(h)
    )
    cfg = make_cfg("dataset=clothing", f"dataset.root={clothing_root}", "backbone=mlp",
                   "dataset.image_size=16", "trainer.max_epochs=1", "tracking.log_model=false")  # fmt: skip
    train(cfg)
    client = MlflowClient(tracking_uri(cfg.tracking))
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert drawn == [pytest.approx(run.data.metrics["test_chance_acc"])]
    assert 0 < drawn[0] < 1
