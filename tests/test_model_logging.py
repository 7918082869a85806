"""The logged model: the pyfunc gives the LightningModule's predictions, as class names and
probabilities; the registry serves it back by alias."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from omegaconf import OmegaConf

from fashion_sweeps.data.decode import resize_like_files
from fashion_sweeps.inference import engines
from fashion_sweeps.models.classifier import build_classifier
from fashion_sweeps.models.module import ClassifierModule
from fashion_sweeps.tracking.model_logging import log_classifier
from fashion_sweeps.tracking.registry import register
from fashion_sweeps.tracking.runs import TrackedRun

CLASSES = ["Dress", "Pants", "Shoes"]


def tiny_module(channels: int = 3, size: int = 16) -> ClassifierModule:
    torch.manual_seed(0)
    backbone = OmegaConf.create(
        {"_target_": "fashion_sweeps.models.scratch_backbones.simple_cnn", "width": 4}
    )
    # BatchNorm + dropout in the head: a pyfunc that forgot eval mode would differ.
    head = OmegaConf.create({"_target_": "fashion_sweeps.models.heads.batchnorm"})
    model = build_classifier(
        backbone, head, CLASSES, channels, size, lambda: ([0.4] * channels, [0.2] * channels)
    )
    return ClassifierModule(model, optimizer=torch.optim.SGD)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """One store for the module: creating an MLflow SQLite database takes seconds."""
    folder = tmp_path_factory.mktemp("mlruns")
    return f"sqlite:///{folder / 'mlflow.db'}"


@pytest.fixture
def run(store: str) -> TrackedRun:
    return TrackedRun.start(OmegaConf.create({"uri": store}), "models")


def images(n: int, channels: int = 3, size: int = 16) -> np.ndarray:
    rng = np.random.default_rng(7)
    return rng.integers(0, 256, size=(n, channels, size, size), dtype=np.uint8)


def test_pyfunc_predicts_what_the_lightning_module_predicts(run: TrackedRun, monkeypatch) -> None:
    monkeypatch.setenv(engines.ENGINE_ENV, "torch")  # the module's own numbers, to 1e-5
    module = tiny_module()
    x = images(6)
    uri = log_classifier(run, module.model, x[:2])
    assert run.client.get_run(run.run_id).data.tags["model_uri"] == uri

    out = mlflow.pyfunc.load_model(uri).predict(x)

    module.eval()
    with torch.no_grad():
        expected = torch.softmax(module(torch.from_numpy(x)), dim=1).numpy()
    assert list(out.columns) == ["label", "probability", *CLASSES]
    np.testing.assert_allclose(out[CLASSES].to_numpy(), expected, rtol=1e-5, atol=1e-6)
    assert list(out["label"]) == [CLASSES[i] for i in expected.argmax(axis=1)]
    np.testing.assert_allclose(out["probability"], expected.max(axis=1), rtol=1e-5)


@pytest.mark.parametrize("precision", ["f32", "auto"])
def test_the_served_model_runs_on_the_engine_the_environment_chooses(
    run: TrackedRun, monkeypatch, precision: str
) -> None:
    module = tiny_module()
    x = images(40)
    uri = log_classifier(run, module.model, x[:2])
    monkeypatch.delenv(engines.ENGINE_ENV, raising=False)  # auto: OpenVINO on this CPU
    monkeypatch.setenv(engines.PRECISION_ENV, precision)
    model = mlflow.pyfunc.load_model(uri)
    out = model.predict(x)
    assert model.unwrap_python_model().engine == engines.choose("auto", precision)
    module.eval()
    with torch.no_grad():
        expected = torch.softmax(module(torch.from_numpy(x)), dim=1).numpy()
    tolerance = 1e-4 if precision == "f32" else 2e-2  # bf16 keeps about 3 significant digits
    np.testing.assert_allclose(out[CLASSES].to_numpy(), expected, atol=tolerance)


def test_images_at_other_sizes_are_resized_as_predict_does(run: TrackedRun) -> None:
    """A client (`make serve`) may send arrays at any size: the model resizes them to its own
    with the filter `predict` resizes decoded files with; its metadata says size and channels."""
    uri = log_classifier(run, tiny_module(channels=1, size=16).model, images(2, channels=1))
    model = mlflow.pyfunc.load_model(uri)
    assert model.metadata.get_input_schema() is None  # files (bytes, base64) and arrays alike
    assert model.metadata.metadata == {"image_size": 16, "channels": 1}

    large = images(2, channels=1, size=40)
    resized = resize_like_files(large.transpose(0, 2, 3, 1), 16).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(
        model.predict(large)[CLASSES].to_numpy(), model.predict(resized)[CLASSES].to_numpy()
    )


def test_register_and_load_by_alias(run: TrackedRun) -> None:
    module = tiny_module()
    log_classifier(run, module.model, images(2))
    uri = register(run.client, run.run_id, name="tiny-classifier")
    assert uri == "models:/tiny-classifier@champion"
    version = run.client.get_model_version_by_alias("tiny-classifier", "champion")
    assert version.run_id == run.run_id

    out = mlflow.pyfunc.load_model(uri).predict(images(3))
    assert set(out["label"]) <= set(CLASSES)

    # The same model again (a report run twice) keeps its version; another run's model moves
    # the alias to a new one.
    register(run.client, run.run_id, name="tiny-classifier")
    assert str(run.client.get_model_version_by_alias("tiny-classifier", "champion").version) == "1"
    other = TrackedRun.start(OmegaConf.create({"uri": run.uri}), "models")
    log_classifier(other, tiny_module().model, images(2))
    register(other.client, other.run_id, name="tiny-classifier")
    champion = run.client.get_model_version_by_alias("tiny-classifier", "champion")
    assert (str(champion.version), champion.run_id) == ("2", other.run_id)


def test_register_a_run_without_model_says_why(run: TrackedRun) -> None:
    with pytest.raises(mlflow.exceptions.MlflowException, match="no logged model"):
        register(run.client, run.run_id)


def test_logged_model_lives_in_the_runs_experiment_and_loads_by_every_uri(
    run: TrackedRun,
) -> None:
    """The experiment's Models tab lists it, and `runs:/<id>/model` (the README's and predict's
    advice), `models:/m-...` and the registry alias all load the same predictions."""
    uri = log_classifier(run, tiny_module().model, images(2))
    model_id = uri.removeprefix("models:/")
    assert run.client.get_logged_model(model_id).experiment_id == run.experiment_id
    listed = run.client.search_logged_models(experiment_ids=[run.experiment_id])
    assert model_id in {m.model_id for m in listed}

    x = images(3)
    expected = mlflow.pyfunc.load_model(uri).predict(x)
    alias = register(run.client, run.run_id, name="uri-classifier")
    for other in (f"runs:/{run.run_id}/model", alias):
        out = mlflow.pyfunc.load_model(other).predict(x)
        np.testing.assert_allclose(out[CLASSES].to_numpy(), expected[CLASSES].to_numpy())


def test_registered_version_is_linked_to_its_logged_model(run: TrackedRun) -> None:
    """The logged model's page says which version it is (MLflow's `mlflow.modelVersions` tag),
    and the version points back to the model and its run."""
    uri = log_classifier(run, tiny_module().model, images(2))
    model_id = uri.removeprefix("models:/")
    register(run.client, run.run_id, name="linked-classifier")
    version = run.client.get_model_version_by_alias("linked-classifier", "champion")
    # (SQLite stores keep no model_id on versions: the source names the model.)
    assert (version.source, version.run_id) == (uri, run.run_id)
    versions = json.loads(run.client.get_logged_model(model_id).tags["mlflow.modelVersions"])
    assert {"name": "linked-classifier", "version": str(version.version)} in [
        {k: str(v) for k, v in entry.items()} for entry in versions
    ]


def test_registration_lands_in_the_runs_store_whatever_the_global_registry(
    run: TrackedRun, tmp_path
) -> None:
    """`register` takes the run's client: a registry URI another store set earlier in the same
    process (the results page, predict, a second report) must not receive the version."""
    log_classifier(run, tiny_module().model, images(2))
    elsewhere = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    mlflow.set_registry_uri(elsewhere)
    mlflow.set_tracking_uri(elsewhere)
    try:
        register(run.client, run.run_id, name="own-store-classifier")
    finally:
        mlflow.set_registry_uri(None)
    own = MlflowClient(run.uri, registry_uri=run.uri)
    assert own.get_model_version_by_alias("own-store-classifier", "champion").run_id == run.run_id
    assert MlflowClient(elsewhere, registry_uri=elsewhere).search_registered_models() == []


def test_a_run_opened_after_another_store_registers_in_its_own(store: str, tmp_path) -> None:
    """A run opened while the process's tracking or registry URI points at another store
    (predict or the results page ran first in the same process) registers into its own."""
    elsewhere = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    mlflow.set_registry_uri(elsewhere)
    try:
        run = TrackedRun.start(OmegaConf.create({"uri": store}), "models")
        log_classifier(run, tiny_module().model, images(2))
        register(run.client, run.run_id, name="late-classifier")
    finally:
        mlflow.set_registry_uri(None)
    own = MlflowClient(store, registry_uri=store)
    assert own.get_model_version_by_alias("late-classifier", "champion").run_id == run.run_id
    assert MlflowClient(elsewhere, registry_uri=elsewhere).search_registered_models() == []


def test_the_docs_snippet_loads_the_champion_from_the_projects_store(tmp_path, monkeypatch) -> None:
    """docs/report_and_predict.md's Python snippet, run from a project folder: it failed with
    "Registered Model ... not found" and left a stray ./mlflow.db (MLflow's own default store)."""
    import os
    import re
    import subprocess
    import sys
    from pathlib import Path

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    run = TrackedRun.start(OmegaConf.create({"uri": None, "dir": "mlruns"}), "models")
    module = tiny_module()
    log_classifier(run, module.model, images(2))
    register(run.client, run.run_id)
    docs = Path(__file__).resolve().parents[1] / "docs" / "report_and_predict.md"
    snippet = re.search(r"```python\n(.*?)```", docs.read_text(), re.S).group(1)
    program = "import numpy as np\nimages_uint8_nchw = np.zeros((2, 3, 16, 16), np.uint8)\n"
    program += snippet + "print(len(classifier.classes), model.predict(images_uint8_nchw).shape)"
    # A fresh shell's environment: mlflow.set_tracking_uri (run by register) exports the URI.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    done = subprocess.run(
        [sys.executable, "-c", program],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[-3:] == ["3", "(2,", "5)"]
    assert not (tmp_path / "mlflow.db").exists()
