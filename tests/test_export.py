"""`fashion-sweeps export`: a logged model as ONNX and OpenVINO IR that give PyTorch's top-1 without
this package, checked on the test split of the run that logged it, and logged back to that run."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import onnxruntime as ort
import openvino as ov
import pytest
import torch
from conftest import class_image, write_clothing
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf, open_dict
from test_model_logging import images, tiny_module

from fashion_sweeps.cli import COMMANDS
from fashion_sweeps.config import CONF_DIR
from fashion_sweeps.data import datamodule
from fashion_sweeps.data.datamodule import prepare_arrays
from fashion_sweeps.inference import export_formats
from fashion_sweeps.inference.engines import cpu_has_bf16
from fashion_sweeps.inference.export import main
from fashion_sweeps.inference.export_formats import default_out
from fashion_sweeps.tracking.model_logging import load_classifier, log_classifier
from fashion_sweeps.tracking.runs import TrackedRun, tracking_uri
from fashion_sweeps.train import train


@dataclass
class Trained:
    store: str
    run_id: str
    model_uri: str
    root: Path
    cfg: DictConfig


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_clothing) -> Trained:
    """A real tiny clothing run (60 photos, 2 epochs, 12 of them tested) with test-time flips
    (two views a photo, averaged inside the exported graph), and the model it logged."""
    tmp = tmp_path_factory.mktemp("trained")
    root = write_clothing(tmp / "clothing", per_class=20, seed=0)
    with initialize_config_dir(str(CONF_DIR)):
        cfg = compose(
            "config",
            overrides=[
                *tiny_clothing,
                f"dataset.root={root}",
                f"tracking.uri=sqlite:///{tmp / 'mlflow.db'}",
                f"cache.dir={tmp / 'cache'}",
                "trainer.max_epochs=2",
                "optimizer.lr=0.01",  # confident: bf16 cannot flip a near-tie on another CPU
                "trainer.progress=lines",
                "tracking.plots=false",
                "tracking.system_metrics_s=null",
                "test_time_flip=true",
            ],
        )
    with open_dict(cfg):
        cfg.output_dir = str(tmp / "out")
    train(cfg)
    client = MlflowClient(tracking_uri(cfg.tracking))
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return Trained(client.tracking_uri, run.info.run_id, run.data.tags["model_uri"], root, cfg)


@pytest.fixture(scope="module")
def exported(trained: Trained, tmp_path_factory) -> tuple[Path, str]:
    """`fashion-sweeps export MODEL` (every format, checked): the folder and what it printed."""
    out = tmp_path_factory.mktemp("exported") / "flips"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main([trained.model_uri, "--tracking-uri", trained.store, "--out", str(out)])
    assert code == 0
    return out, printed.getvalue()


def photos(channels: int = 3, n: int = 5) -> np.ndarray:
    """`n` photos of the fixture's classes (uint8 NHWC, 16 px), as a server decodes them."""
    rng = np.random.default_rng(3)
    mode = "RGB" if channels == 3 else "L"
    pixels = [np.asarray(class_image(i % 3, rng, size=16).convert(mode)) for i in range(n)]
    return np.stack(pixels).reshape(n, 16, 16, channels)


def pytorch_probabilities(store: str, model_uri: str, pixels: np.ndarray) -> np.ndarray:
    mlflow.set_tracking_uri(store)
    classifier = load_classifier(model_uri).eval()
    with torch.no_grad():
        logits = classifier(torch.from_numpy(pixels).permute(0, 3, 1, 2))
    return torch.softmax(logits, dim=1).numpy()


def assert_formats_match_pytorch(out: Path, pixels: np.ndarray, expected: np.ndarray) -> None:
    """The files run with onnxruntime and OpenVINO alone (f32, to compare the graph itself), one
    image and a batch, give PyTorch's probabilities and so its top-1."""
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    compiled = ov.Core().compile_model(
        str(out / "model.xml"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"}
    )
    for batch in (pixels[:1], pixels):
        onnx_probs = session.run(["probabilities"], {"images": batch})[0]
        ir_probs = compiled({"images": batch})["probabilities"]
        for probs in (onnx_probs, ir_probs):
            np.testing.assert_allclose(probs, expected[: len(batch)], atol=1e-4)
            assert list(probs.argmax(axis=1)) == list(expected[: len(batch)].argmax(axis=1))


def test_both_formats_run_alone_and_give_pytorchs_top1(trained: Trained, exported) -> None:
    out, _ = exported
    assert {p.name for p in out.iterdir()} == {
        "model.onnx",
        "model.xml",
        "model.bin",
        "labels.json",
        "agreement.json",
    }
    labels = json.loads((out / "labels.json").read_text())
    assert labels["classes"] == ["Dress", "Pants", "Shoes"]
    assert (labels["image_size"], labels["channels"]) == (16, 3)
    assert (labels["model_uri"], labels["run_id"]) == (trained.model_uri, trained.run_id)
    assert "bicubic" in labels["input"] and "(batch, 16, 16, 3)" in labels["input"]

    pixels = photos()
    expected = pytorch_probabilities(trained.store, trained.model_uri, pixels)
    assert_formats_match_pytorch(out, pixels, expected)


def test_the_check_runs_the_runs_own_test_split(trained: Trained, exported) -> None:
    out, printed = exported
    prepared = prepare_arrays(trained.cfg.dataset, trained.cfg.seed)
    n_test = len(prepared.indices("test"))
    record = json.loads((out / "agreement.json").read_text())
    assert (record["run_id"], record["test_images"]) == (trained.run_id, n_test)
    assert set(record["formats"]) == {"onnx", "openvino"}
    for figures in record["formats"].values():
        assert figures["top1_agreement"] >= 0.995
        assert 0 <= figures["max_abs_probability_diff"] < 0.05
    assert "onnxruntime" in record["formats"]["onnx"]["runtime"]
    # The IR is judged as the file it is (f32); OpenVINO's bf16 default is told, not judged.
    assert record["formats"]["openvino"]["runtime"].endswith(" f32")
    if cpu_has_bf16():
        assert 0 <= record["formats"]["openvino"]["bf16_top1_agreement"] <= 1
        assert "compiled in bf16, OpenVINO's default on this CPU: " in printed
    for fmt, name in (("onnx", "model.onnx"), ("openvino", "model.xml")):
        line = rf"{fmt}: {re.escape(str(out / name))}, top-1 agrees with PyTorch on 1\d\d\.\d\d% of {n_test} test images \(max \|dp\| 0\.\d{{4}}\)"
        assert re.search(line, printed), printed


def test_the_files_are_logged_to_the_models_run(trained: Trained, exported) -> None:
    client = MlflowClient(trained.store)
    logged = {
        fmt: {Path(a.path).name for a in client.list_artifacts(trained.run_id, f"export/{fmt}")}
        for fmt in ("onnx", "openvino")
    }
    assert logged == {
        "onnx": {"model.onnx", "labels.json", "agreement.json"},
        "openvino": {"model.xml", "model.bin", "labels.json", "agreement.json"},
    }
    assert f"logged to run {trained.run_id} under export/onnx/, export/openvino/" in exported[1]


def test_a_model_that_does_not_exist_is_one_paragraph(trained: Trained, tmp_path, capsys) -> None:
    out = tmp_path / "nothing"
    code = main(["models:/nope@champion", "--tracking-uri", trained.store, "--out", str(out)])
    assert code == 2
    err = capsys.readouterr().err
    (line,) = [x for x in err.splitlines() if x.startswith("fashion-sweeps export:")]
    assert "Cannot load the model 'models:/nope@champion'" in line and "--tracking-uri" in line
    assert "Traceback" not in err and not out.exists()


def test_moved_data_needs_dataset_root(trained: Trained, tmp_path, capsys, monkeypatch) -> None:
    """A data set moved since training: one paragraph naming --dataset-root and --no-check; with
    --dataset-root, the check reads the same test split from the new place."""
    monkeypatch.setattr(datamodule, "_PREPARED", {})  # this process read it from the old place
    moved = tmp_path / "moved"
    shutil.move(trained.root, moved)
    try:
        args = [trained.model_uri, "--tracking-uri", trained.store, "--format", "onnx"]
        assert main([*args, "--out", str(tmp_path / "a")]) == 2
        err = capsys.readouterr().err
        (line,) = [x for x in err.splitlines() if x.startswith("fashion-sweeps export:")]
        assert "--dataset-root" in line and "--no-check" in line and str(trained.root) in line
        assert not (tmp_path / "a").exists()  # the data is read before anything is written

        out = tmp_path / "b"
        assert main([*args, "--out", str(out), "--dataset-root", str(moved)]) == 0
    finally:
        shutil.move(moved, trained.root)
    record = json.loads((out / "agreement.json").read_text())
    prepared = prepare_arrays(trained.cfg.dataset, trained.cfg.seed)
    assert record["test_images"] == len(prepared.indices("test"))
    assert set(record["formats"]) == {"onnx"} and not (out / "model.xml").exists()


def test_a_format_that_disagrees_fails_and_keeps_its_files(
    trained: Trained, exported, tmp_path, capsys, monkeypatch
) -> None:
    def swapped(path: Path):  # an exporter bug: the first two classes change places
        run, runtime = export_formats.onnx_runner(path)
        return (lambda batch: run(batch)[:, [1, 0, 2]]), runtime

    monkeypatch.setitem(export_formats.RUNNERS, "onnx", swapped)
    out = tmp_path / "bad"
    args = [trained.model_uri, "--tracking-uri", trained.store, "--format", "onnx"]
    assert main([*args, "--out", str(out)]) == 1
    err = capsys.readouterr().err
    (line,) = [x for x in err.splitlines() if x.startswith("fashion-sweeps export:")]
    assert "ONNX" in line and "99.50% is needed" in line and "not logged" in line
    assert (
        json.loads((out / "agreement.json").read_text())["formats"]["onnx"]["top1_agreement"]
        < 0.995
    )
    assert (out / "model.onnx").exists()
    # The run keeps the export that agreed.
    logged = MlflowClient(trained.store).download_artifacts(
        trained.run_id, "export/onnx/agreement.json", str(tmp_path)
    )
    assert json.loads(Path(logged).read_text())["formats"]["onnx"]["top1_agreement"] >= 0.995


@pytest.fixture(scope="module")
def grey_model(trained: Trained) -> tuple[str, str]:
    """A tiny grey (1 channel) model with one view, logged by a run that trained nothing: no
    config.yaml, so no test split to check on. Its store, its URI."""
    run = TrackedRun.start(OmegaConf.create({"uri": trained.store}), "models")
    return trained.store, log_classifier(run, tiny_module(channels=1).model, images(2, channels=1))


def test_no_check_exports_without_the_runs_data(grey_model, tmp_path, capsys) -> None:
    store, model_uri = grey_model
    assert main([model_uri, "--tracking-uri", store, "--out", str(tmp_path / "a")]) == 2
    (line,) = [
        x for x in capsys.readouterr().err.splitlines() if x.startswith("fashion-sweeps export:")
    ]
    assert "config" in line and "--no-check" in line

    out = tmp_path / "b"
    assert main([model_uri, "--tracking-uri", store, "--out", str(out), "--no-check"]) == 0
    printed = capsys.readouterr().out
    assert f"onnx: {out / 'model.onnx'} (not checked against PyTorch: --no-check)" in printed
    assert f"openvino: {out / 'model.xml'} (not checked against PyTorch: --no-check)" in printed
    assert not (out / "agreement.json").exists()
    labels = json.loads((out / "labels.json").read_text())
    assert (labels["channels"], labels["image_size"]) == (1, 16)
    assert "greyscale" in labels["input"]

    pixels = photos(channels=1)
    assert_formats_match_pytorch(out, pixels, pytorch_probabilities(store, model_uri, pixels))


def test_the_command_is_listed_and_says_where_files_go(capsys) -> None:
    assert COMMANDS["export"][0] == "fashion_sweeps.inference.export:main"
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "exported/<model name or id>/" in " ".join(capsys.readouterr().out.split())
    assert default_out("models:/fashion-classifier@champion") == Path("exported/fashion-classifier")
    assert default_out("models:/m-0123abc") == Path("exported/m-0123abc")
    assert default_out("runs:/4f2e/model") == Path("exported/4f2e")
