"""A logged model as ONNX or OpenVINO IR (`fashion-sweeps export`, inference/export.py): the
model loaded from MLflow, the uint8-images-to-probabilities graph, each format's writer and a
runner of the written files.
"""

from __future__ import annotations

import json
import logging
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fashion_sweeps.inference.export import FILES, LABELS, TITLES, ExportError
from fashion_sweeps.models.classifier import Classifier
from fashion_sweeps.redact import redact

log = logging.getLogger(__name__)

INPUT_NAME, OUTPUT_NAME = "images", "probabilities"
EXAMPLE_BATCH = 2  # batch 1 would let torch.export specialise the batch to 1
# The ONNX exporter's optimiser logs each of its passes at INFO.
QUIET_LOGGERS = ("onnxscript", "onnx_ir")

# One uint8 batch (N, H, W, C) -> probabilities (N, classes).
Runner = Callable[[np.ndarray], np.ndarray]


@dataclass
class LoggedModel:
    """A logged model's PyTorch Classifier and what the export records of it."""

    uri: str
    model_id: str | None
    run_id: str | None
    classifier: Classifier
    channels: int

    @property
    def image_shape(self) -> tuple[int, int, int]:
        size = int(self.classifier.image_size)
        return size, size, self.channels


# --- the model ------------------------------------------------------------------------------


def _channels(info) -> int:
    """The image channels the model takes (`image_input`)."""
    from fashion_sweeps.tracking.model_logging import image_input

    inputs = info.signature.inputs if info.signature is not None else None
    channels = image_input(info.metadata, inputs).get("channels")
    if channels is None:
        raise ExportError(
            f"The model {info.model_uri!r} does not say what images it takes (no channels in its "
            "metadata or signature): export a model logged by `fashion-sweeps train`."
        )
    return channels


def load_logged(uri: str) -> LoggedModel:
    """The model at `uri` (`models:/<name>@<alias>`, `models:/m-...`, `runs:/<id>/model`) from
    the global tracking store (`open_tool_store`)."""
    import mlflow.models

    from fashion_sweeps.predict import cannot_load
    from fashion_sweeps.tracking.model_logging import load_classifier

    try:
        info = mlflow.models.get_model_info(uri)
        classifier = load_classifier(uri)
    except Exception as err:  # MlflowException, OSError for a missing local path, ...
        raise ExportError(cannot_load(uri, err)) from err
    if not isinstance(classifier, Classifier):
        raise ExportError(
            f"The model {uri!r} is a {type(classifier).__name__}, not this package's Classifier: "
            "export a model logged by `fashion-sweeps train`."
        )
    return LoggedModel(uri, info.model_id, info.run_id, classifier.cpu().eval(), _channels(info))


def default_out(uri: str) -> Path:
    """exported/<model name or id>/: `models:/fashion-classifier@champion` -> the name,
    `models:/m-...` -> the id, `runs:/<id>/model` -> the run id."""
    rest = re.sub(r"^(models|runs):/+", "", uri)
    name = re.split(r"[@/]", rest)[0] or "model"
    return Path("exported") / re.sub(r"[^A-Za-z0-9._-]", "_", name)


def images_to_probabilities(classifier: Classifier) -> nn.Module:
    """The exported graph: uint8 images (N, H, W, C) in, softmax probabilities out, its
    test-time views averaged per image."""
    from fashion_sweeps.inference.engines import ImagesIn
    from fashion_sweeps.tracking.model_logging import probabilities_of

    return ImagesIn(probabilities_of(classifier)).eval()


def _example(image_shape: tuple[int, int, int]) -> tuple[torch.Tensor]:
    return (torch.zeros((EXAMPLE_BATCH, *image_shape), dtype=torch.uint8),)


# --- the formats ----------------------------------------------------------------------------


def export_onnx(graph: nn.Module, image_shape: tuple[int, int, int], path: Path) -> None:
    """`graph` as one ONNX file (weights inside) with a dynamic batch, through the dynamo
    exporter (`torch.export` + onnxscript)."""
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # torch.export's notes on its own internals
        torch.onnx.export(
            graph,
            _example(image_shape),
            str(path),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: "batch"},),
            external_data=False,
            verbose=False,
        )


def export_openvino(graph: nn.Module, image_shape: tuple[int, int, int], xml: Path) -> None:
    """`graph` as OpenVINO IR (`model.xml` + `model.bin`, fp32 weights), converted as the
    inference engine converts it (dynamic batch, u8 (N, H, W, C) input), with named tensors."""
    import openvino as ov

    from fashion_sweeps.inference.openvino_engine import convert

    model = convert(graph, image_shape)
    model.input(0).get_tensor().set_names({INPUT_NAME})
    model.output(0).get_tensor().set_names({OUTPUT_NAME})
    ov.save_model(model, str(xml), compress_to_fp16=False)


def onnx_runner(path: Path) -> tuple[Runner, str]:
    """The ONNX file run by onnxruntime on the CPU, and what runs it."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return (
        lambda batch: session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0],
        f"onnxruntime {ort.__version__} CPUExecutionProvider f32",
    )


def openvino_runner(xml: Path, precision: str = "f32") -> tuple[Runner, str]:
    """The IR compiled by OpenVINO for the CPU in `precision` (f32: what the file holds, which the
    check compares with PyTorch; bf16 is OpenVINO's default on CPUs that compute it, a faster
    runtime choice that moves near-ties), and what runs it."""
    import openvino as ov

    hints = {"INFERENCE_PRECISION_HINT": precision}
    compiled = ov.Core().compile_model(str(xml), "CPU", hints)
    precision = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    version = ov.get_version().split("-")[0]
    return lambda batch: compiled(batch)[0], f"OpenVINO {version} CPU {precision}"


EXPORTERS = {"onnx": export_onnx, "openvino": export_openvino}
RUNNERS = {"onnx": onnx_runner, "openvino": openvino_runner}


def export_format(fmt: str, logged: LoggedModel, out: Path) -> tuple[Runner, str]:
    """Write `fmt`'s files into `out`, load them back and run a blank batch through them.
    Returns the loaded model and what runs it."""
    path = out / FILES[fmt][0]
    graph = images_to_probabilities(logged.classifier)
    try:
        EXPORTERS[fmt](graph, logged.image_shape, path)
        run, runtime = RUNNERS[fmt](path)
        probs = run(np.zeros((3, *logged.image_shape), dtype=np.uint8))
    except Exception as err:  # exporters and runtimes raise many types
        raise ExportError(
            f"Cannot export the model as {TITLES[fmt]} ({type(err).__name__}: "
            f"{str(err).strip().splitlines()[0][:300] if str(err).strip() else ''}). "
            "Export the other format with --format, or keep serving it with "
            "`fashion-sweeps predict` / `mlflow models serve`.",
            code=1,
        ) from err
    classes = len(logged.classifier.classes)
    if probs.shape != (3, classes) or not np.allclose(probs.sum(axis=1), 1.0, atol=1e-3):
        raise ExportError(
            f"The exported {TITLES[fmt]} model gives {probs.shape} outputs, not probabilities "
            f"(3, {classes}), for a blank batch of 3: the export is broken.",
            code=1,
        )
    log.info("Wrote %s (%s)", path, runtime)
    return run, runtime


def write_labels(logged: LoggedModel, out: Path) -> Path:
    """labels.json: the classes and what goes in and out of the exported model."""
    size, _, channels = logged.image_shape
    colours = "RGB" if channels == 3 else "greyscale" if channels == 1 else f"{channels} channels"
    labels = {
        "classes": list(logged.classifier.classes),
        "image_size": size,
        "channels": channels,
        "input": f"uint8 images (batch, {size}, {size}, {channels}) at image_size, {colours}; "
        "resize with bicubic",
        "output": "probabilities (batch, classes)",
        "model_uri": redact(logged.uri),
        "model_id": logged.model_id,
        "run_id": logged.run_id,
    }
    path = out / LABELS
    path.write_text(json.dumps(labels, indent=2) + "\n")
    return path
