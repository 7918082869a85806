"""The deployable model in MLflow: a pyfunc that turns images into class names and probabilities
(its registration under a name: `tracking/registry.py`).

The Classifier is saved in MLflow's PyTorch format (`mlflow.pytorch.save_model`) inside a small
pyfunc wrapper: the PyTorch flavor's own pyfunc returns bare tensors, while users of
`mlflow.pyfunc.load_model(uri).predict(images)` and of `mlflow models serve` want labels.
"""

from __future__ import annotations

import base64
import io
import logging
import os
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pyfunc
import mlflow.pytorch
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.types import ColSpec, Schema
from torch import nn

from fashion_sweeps.data.decode import load_image, resize_like_files
from fashion_sweeps.inference import engines
from fashion_sweeps.inference.engines import Compiled, Engine, Rechecked, compile_probabilities
from fashion_sweeps.models.classifier import Classifier
from fashion_sweeps.tracking.registry import MODEL_URI_TAG
from fashion_sweeps.tracking.runs import TrackedRun

log = logging.getLogger(__name__)

MODEL_NAME = "model"  # the logged model's name in its run
OUTPUT_COLUMNS = ("label", "probability")
BATCH = 256  # images per forward pass: bounds memory for large requests


class _OwnPickles(logging.Filter):
    """Drop MLflow's warning that pickled models can run code: these are our own models,
    loaded from our own store, and the warning would repeat in every run's log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "CloudPickle" not in record.getMessage()


for _name in ("mlflow.pytorch", "mlflow.pyfunc"):
    logging.getLogger(_name).addFilter(_OwnPickles())


class ClassifierPyfunc(mlflow.pyfunc.PythonModel):
    """Images in: JPEG/PNG files as bytes or base64 text (a list, or a DataFrame's first column:
    decoded as `fashion-sweeps predict` decodes files, so the probabilities are the same), or
    uint8 arrays (N, C, H, W) at any size (resized with the same filter); per image a row with
    the predicted `label`, its `probability`, and one probability column per class name. The forward pass runs on the inference engine the
    environment chooses when the model loads (inference/engines.py: OpenVINO on a CPU unless
    FASHION_SWEEPS_INFERENCE_ENGINE says otherwise), compiled at the first batch of each shape; in
    bf16, images whose two best classes are close are computed again in f32."""

    def __init__(self, channels: int = 3) -> None:
        self.channels = channels  # of the images it was trained on: 1 decodes files as grey

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        self.model: Classifier = mlflow.pytorch.load_model(
            context.artifacts["classifier"], map_location="cpu"
        )
        self.model.eval()
        self.use_engine(engines.from_environment())

    def use_engine(self, engine: Engine) -> None:
        self.engine = engine
        self._compiled: dict[tuple[int, ...], Compiled | Rechecked] = {}

    def engine_summary(self) -> str:
        """The engine that ran, and how many images it computed again in f32."""
        rechecked = sum(getattr(c, "rechecked", 0) for c in self._compiled.values())
        return f"{self.engine}" + (f", {rechecked} close calls again in f32" if rechecked else "")

    def predict(
        self,
        context: mlflow.pyfunc.PythonModelContext,
        model_input: np.ndarray,
        params: dict[str, Any] | None = None,
    ) -> pd.DataFrame:
        # Models logged before `channels` was kept (colour ones: grey models predate it too).
        channels = getattr(self, "channels", 3)
        images = model_images(model_input, self.model.image_size, channels)
        compiled = self._compiled.get(images.shape[1:])
        if compiled is None:
            compiled = compile_probabilities(
                probabilities_of(self.model), self.engine, images.shape[1:]
            )
            self._compiled[images.shape[1:]] = compiled
            self.engine = compiled.engine  # PyTorch after a fallback
        out = np.empty((len(images), len(self.model.classes)), dtype=np.float32)
        return probability_frame(compiled.map(images, BATCH, out), self.model.classes)


class RequestError(MlflowException, ValueError):
    """A request item the model cannot read: the scoring server answers 400 with the message."""

    def __init__(self, message: str) -> None:
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)


def model_images(model_input: Any, size: int, channels: int) -> np.ndarray:
    """The pyfunc's input as (N, size, size, C) uint8 images (see ClassifierPyfunc)."""
    if isinstance(model_input, pd.DataFrame):
        model_input = model_input.iloc[:, 0].tolist()
    array = np.asarray(model_input)
    if array.dtype.kind in "SUO":  # files: bytes or base64 text
        mode = "L" if channels == 1 else "RGB"
        decoded = [decode_file(item, i, size, mode) for i, item in enumerate(array.ravel())]
        return np.stack(decoded) if decoded else np.zeros((0, size, size, channels), np.uint8)
    return resize_like_files(array.transpose(0, 2, 3, 1), size)


def decode_file(item: Any, index: int, size: int, mode: str) -> np.ndarray:
    """One JPEG/PNG file's bytes (or their base64 text) decoded as `predict` decodes files."""
    try:
        data = base64.b64decode(item, validate=True) if isinstance(item, str) else bytes(item)
        return load_image(io.BytesIO(data), size, mode)
    except Exception as err:  # binascii.Error, PIL's many types
        raise RequestError(
            f"Image {index} of the request is not a JPEG or PNG file ({type(err).__name__}: "
            f"{err}): send each photo's file bytes, base64-encoded in JSON, or uint8 arrays "
            "(N, C, H, W)."
        ) from err


def probabilities_of(model: Classifier) -> nn.Module:
    """`model` (eval mode: with its test-time views) followed by a softmax over classes."""
    return nn.Sequential(model, nn.Softmax(dim=1)).eval()


def probability_frame(probs: np.ndarray, classes: list[str]) -> pd.DataFrame:
    best = probs.argmax(axis=1) if len(probs) else np.zeros(0, dtype=int)
    frame = pd.DataFrame(probs.astype(np.float64), columns=classes)
    frame.insert(0, "probability", probs[np.arange(len(probs)), best].astype(np.float64))
    frame.insert(0, "label", np.asarray(classes, dtype=object)[best])
    return frame


def signature(model: Classifier) -> ModelSignature:
    clashes = sorted(set(model.classes) & set(OUTPUT_COLUMNS))
    if clashes:
        raise ValueError(
            f"Class name(s) {clashes} clash with the model's output columns {OUTPUT_COLUMNS}: "
            "rename those classes in the data set (e.g. with a label map) before training."
        )
    # No input schema: MLflow would refuse either files (bytes, base64 text) or uint8 arrays
    # (N, C, H, W) at any size; the pyfunc reads both, and its metadata has size and channels.
    outputs = Schema(
        [ColSpec("string", "label"), ColSpec("double", "probability")]
        + [ColSpec("double", name) for name in model.classes]
    )
    return ModelSignature(inputs=None, outputs=outputs)


def requirements() -> list[str]:
    """Pinned from this environment: inferring them would load the model once more in a
    subprocess. The model also imports `fashion_sweeps` (this package), which must be installed
    where it is served."""
    pins = []
    for package in ("torch", "torchvision", "mlflow", "numpy", "pandas", "cloudpickle", "openvino"):
        try:
            pins.append(f"{package}=={version(package)}")
        except PackageNotFoundError:
            pins.append(package)
    return pins


def log_classifier(run: TrackedRun, model: Classifier, example: np.ndarray) -> str:
    """Log the Classifier as this run's pyfunc model, with signature and input example
    (`example`: a few uint8 images (N, C, H, W)). Returns its `models:/<id>` URI, also set as
    the run's `model_uri` tag."""
    model = model.cpu().eval()
    pins = requirements()
    # mlflow's fluent logging reads the global tracking URI and experiment; our runs carry their
    # own. Without the experiment the logged model lands in the Default one (id 0): absent from
    # the run's Models tab, unreachable as `runs:/<id>/model`, its files beside experiment 0.
    mlflow.set_tracking_uri(run.uri)
    mlflow.set_experiment(experiment_id=run.experiment_id)
    # Logging validates the input example by loading the model: no download bars in run logs.
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    # MLflow checks the input example by loading the model: PyTorch answers it at once, where
    # OpenVINO would first convert the network.
    with tempfile.TemporaryDirectory() as tmp, engines.environment("torch", "f32"):
        torch_dir = Path(tmp) / "classifier"
        mlflow.pytorch.save_model(
            model, torch_dir, pip_requirements=pins, serialization_format="pickle"
        )
        info = Model.log(
            artifact_path=None,
            name=MODEL_NAME,
            flavor=mlflow.pyfunc,
            run_id=run.run_id,
            python_model=ClassifierPyfunc(int(example.shape[1])),
            artifacts={"classifier": str(torch_dir)},
            signature=signature(model),
            input_example=np.ascontiguousarray(example, dtype=np.uint8),
            pip_requirements=pins,
            metadata={"image_size": int(model.image_size), "channels": int(example.shape[1])},
        )
    run.set_tags({MODEL_URI_TAG: info.model_uri})
    log.info("Logged the model of run %s as %s", run.run_id, info.model_uri)
    return info.model_uri


def load_classifier(model_uri: str) -> Classifier:
    """The PyTorch Classifier inside a logged pyfunc model (`models:/...`, `runs:/.../model`)."""
    import mlflow.artifacts

    local = mlflow.artifacts.download_artifacts(artifact_uri=model_uri)
    return mlflow.pytorch.load_model(str(Path(local) / "artifacts" / "classifier"))


def image_input(metadata: dict[str, Any] | None, schema: Schema | None) -> dict[str, int]:
    """The `channels` and `image_size` a logged model takes (those it states): its metadata;
    models logged before their input schema was dropped carry the channels in that schema."""
    facts = {k: int(v) for k, v in (metadata or {}).items() if k in ("channels", "image_size")}
    if "channels" not in facts and schema is not None and schema.is_tensor_spec():
        shape = schema.inputs[0].shape
        if len(shape) == 4:
            facts["channels"] = int(shape[1])
    return facts
