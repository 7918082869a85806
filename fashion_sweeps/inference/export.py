"""`fashion-sweeps export [MODEL] --format onnx|openvino|all`: a logged model as files that serve
without this package, checked against the PyTorch model they came from.

The exported graph takes uint8 images (batch, size, size, channels), as decoders hand them over,
and returns float32 probabilities (batch, classes): scaling, normalisation, channel matching and
the model's test-time views are inside it, so a server needs only onnxruntime or OpenVINO, NumPy
and an image decoder. Beside the model files, `labels.json` names the classes and the input;
`agreement.json` records how often the exported model's top-1 matches PyTorch's on the test split
of the run that logged the model (at least 99.5% or the command fails). The files are also logged
to that run under `export/<format>/`.

ONNX goes through `torch.export` (torch's dynamo exporter, with a symbolic batch); the IR is
converted as the inference engine converts models (inference/openvino_engine.py).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from fashion_sweeps.console_log import log_to_stderr
from fashion_sweeps.inference.engines import cpu_has_bf16
from fashion_sweeps.models.classifier import Classifier
from fashion_sweeps.redact import redact

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient
    from omegaconf import DictConfig

log = logging.getLogger(__name__)

DEFAULT_MODEL = "models:/fashion-classifier@champion"
FORMATS = ("onnx", "openvino")
FILES = {"onnx": ("model.onnx",), "openvino": ("model.xml", "model.bin")}
TITLES = {"onnx": "ONNX", "openvino": "OpenVINO IR"}
LABELS, AGREEMENT = "labels.json", "agreement.json"
INPUT_NAME, OUTPUT_NAME = "images", "probabilities"
MIN_AGREEMENT = 0.995
EXAMPLE_BATCH = 2  # batch 1 would let torch.export specialise the batch to 1
# The ONNX exporter's optimiser logs each of its passes at INFO.
QUIET_LOGGERS = ("onnxscript", "onnx_ir")

# One uint8 batch (N, H, W, C) -> probabilities (N, classes).
Runner = Callable[[np.ndarray], np.ndarray]


class ExportError(RuntimeError):
    """What the user can fix, said in one paragraph; `code` is the command's exit code."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


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
    """The image channels the model takes: its metadata, else its signature (older models)."""
    channels = (info.metadata or {}).get("channels")
    if channels is None and info.signature is not None and info.signature.inputs.is_tensor_spec():
        channels = info.signature.inputs.inputs[0].shape[1]
    if channels is None:
        raise ExportError(
            f"The model {info.model_uri!r} does not say what images it takes (no channels in its "
            "metadata or signature): export a model logged by `fashion-sweeps train`."
        )
    return int(channels)


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


# --- the check ------------------------------------------------------------------------------


def run_config(client: MlflowClient, run_id: str | None) -> DictConfig:
    """The resolved config (`config.yaml`) of the run that logged the model."""
    from omegaconf import OmegaConf

    try:
        if run_id is None:
            raise FileNotFoundError("the model names no run")
        with tempfile.TemporaryDirectory() as tmp:
            return OmegaConf.load(client.download_artifacts(run_id, "config.yaml", tmp))
    except Exception as err:  # MlflowException, OSError: no such artifact or run
        raise ExportError(
            f"Cannot read the config of the run that logged the model ({run_id}: {err}), so its "
            "test split is unknown. Pass --no-check to export without comparing the exported "
            "model with PyTorch."
        ) from err


def with_dataset_root(cfg: DictConfig, root: Path | None) -> DictConfig:
    """`cfg` with `dataset.root` (and the reader's resolved copy of it) moved to `root`."""
    if root is not None:
        cfg.dataset.root = str(root)
        if "reader" in cfg.dataset and "root" in cfg.dataset.reader:
            cfg.dataset.reader.root = str(root)
    return cfg


def read_test_split(
    client: MlflowClient, run_id: str | None, image_shape: tuple[int, int, int], root: Path | None
) -> np.ndarray:
    """The test split (N, H, W, C) uint8 of the run that logged the model, read as it read it
    (its data set, seed and image cache)."""
    from fashion_sweeps.data.datamodule import prepare_arrays
    from fashion_sweeps.data.sources import DataError
    from fashion_sweeps.train import image_cache_dir

    cfg = with_dataset_root(run_config(client, run_id), root)
    try:
        prepared = prepare_arrays(cfg.dataset, cfg.seed, image_cache_dir(cfg))
    except (DataError, OSError) as err:
        why = str(err).split(". ")[0].rstrip(".")  # not its advice on training runs
        raise ExportError(
            f"Cannot read the test split of run {run_id} from {cfg.dataset.root} ({why}). If the "
            "data moved, pass its folder with --dataset-root PATH; or pass --no-check to export "
            "without comparing the exported model with PyTorch."
        ) from err
    pixels = prepared.pixels[prepared.indices("test")]
    if pixels.shape[1:] != image_shape or not len(pixels):
        raise ExportError(
            f"The test split of run {run_id} holds {len(pixels)} images of shape "
            f"{pixels.shape[1:]}, where the model takes {image_shape}: the data is not what the "
            "model was tested on. Pass --dataset-root with the run's data, or --no-check."
        )
    return pixels


def run_batches(run: Runner, pixels: np.ndarray, batch_size: int, classes: int) -> np.ndarray:
    out = np.empty((len(pixels), classes), dtype=np.float32)
    for start in range(0, len(pixels), batch_size):
        out[start : start + batch_size] = run(
            np.ascontiguousarray(pixels[start : start + batch_size])
        )
    return out


def torch_probabilities(classifier: Classifier, pixels: np.ndarray, batch_size: int) -> np.ndarray:
    """The reference: the PyTorch model in eval mode, fp32, as the run tested it."""
    from fashion_sweeps.inference.engines import TORCH_F32, compile_images
    from fashion_sweeps.tracking.model_logging import probabilities_of

    compiled = compile_images(probabilities_of(classifier), TORCH_F32, pixels.shape[1:])
    out = np.empty((len(pixels), len(classifier.classes)), dtype=np.float32)
    return compiled.map(pixels, batch_size, out)


def agreement(reference: np.ndarray, probs: np.ndarray, runtime: str) -> dict[str, float | str]:
    return {
        "top1_agreement": float(np.mean(reference.argmax(axis=1) == probs.argmax(axis=1))),
        "max_abs_probability_diff": float(np.abs(reference - probs).max()),
        "runtime": runtime,
    }


def percent(fraction: float) -> str:
    """99.87%, rounded down: a model that disagrees once in 10,000 is not shown as 100%."""
    return f"{math.floor(fraction * 10000) / 100:.2f}%"


# --- the command ----------------------------------------------------------------------------


def log_to_run(client: MlflowClient, run_id: str | None, out: Path, formats: list[str]) -> str:
    """The formats' files (with labels.json and agreement.json) logged to the model's run under
    export/<format>/; says where, or why not."""
    if run_id is None:
        return "not logged to any run: the model names none"
    try:
        for fmt in formats:
            for name in (*FILES[fmt], LABELS, AGREEMENT):
                if (out / name).exists():
                    client.log_artifact(run_id, str(out / name), f"export/{fmt}")
    except Exception as err:  # MlflowException, OSError of the artifact store
        log.warning("Cannot log the exported files to run %s: %s", run_id, err)
        return f"not logged to run {run_id} ({type(err).__name__}: {err})"
    return f"logged to run {run_id} under {', '.join(f'export/{fmt}/' for fmt in formats)}"


def check(
    logged: LoggedModel,
    runs: dict[str, tuple[Runner, str]],
    pixels: np.ndarray,
    batch_size: int,
    out: Path,
) -> dict[str, dict[str, float | str]]:
    """Each format against PyTorch on `pixels`; the figures, also written to agreement.json."""
    classes = len(logged.classifier.classes)
    reference = torch_probabilities(logged.classifier, pixels, batch_size)
    results = {
        fmt: agreement(reference, run_batches(run, pixels, batch_size, classes), runtime)
        for fmt, (run, runtime) in runs.items()
    }
    if "openvino" in results and cpu_has_bf16():  # what a server gets by default: told, not judged
        run, _ = openvino_runner(out / FILES["openvino"][0], "bf16")
        bf16 = agreement(reference, run_batches(run, pixels, batch_size, classes), "")
        results["openvino"]["bf16_top1_agreement"] = bf16["top1_agreement"]
    record = {
        "model_uri": redact(logged.uri),
        "run_id": logged.run_id,
        "test_images": len(pixels),
        "reference": f"PyTorch {torch.__version__} eval fp32",
        "min_top1_agreement": MIN_AGREEMENT,
        "formats": results,
    }
    (out / AGREEMENT).write_text(json.dumps(record, indent=2) + "\n")
    return results


def disagreement(results: dict[str, dict[str, float | str]], images: int, out: Path) -> str:
    """The paragraph of a failed check ("" when every format agrees)."""
    low = {fmt: r for fmt, r in results.items() if r["top1_agreement"] < MIN_AGREEMENT}
    if not low:
        return ""
    said = "; ".join(
        f"{TITLES[fmt]} ({r['runtime']}) agrees with PyTorch on only "
        f"{percent(float(r['top1_agreement']))} of {images:,} test images"
        for fmt, r in low.items()
    )
    bf16 = any("bf16" in str(r["runtime"]) for r in low.values())
    hint = (
        " OpenVINO computes in bf16 by default on this CPU: the ONNX file, or the IR compiled "
        "with INFERENCE_PRECISION_HINT f32, keeps fp32's results."
        if bf16
        else ""
    )
    return (
        f"The exported model's top-1 differs from PyTorch's: {said}, where "
        f"{percent(MIN_AGREEMENT)} is needed. The files are kept in {out} ({AGREEMENT} has the "
        f"figures) and not logged to the run.{hint} Export the other format with --format, or "
        "keep serving the model with `fashion-sweeps predict` / `mlflow models serve`."
    )


def closing_line(fmt: str, out: Path, result: dict[str, float | str] | None, images: int) -> str:
    path = out / FILES[fmt][0]
    if result is None:
        return f"{fmt}: {path} (not checked against PyTorch: --no-check)"
    bf16 = result.get("bf16_top1_agreement")
    default = (
        f"; compiled in bf16, OpenVINO's default on this CPU: {percent(float(bf16))}"
        if bf16 is not None
        else ""
    )
    return (
        f"{fmt}: {path}, top-1 agrees with PyTorch on {percent(float(result['top1_agreement']))}"
        f" of {images:,} test images (max |dp| {float(result['max_abs_probability_diff']):.4f})"
        f"{default}"
    )


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="fashion-sweeps export",
        description="Write a logged model as ONNX and/or OpenVINO IR (uint8 images in, "
        "probabilities out, preprocessing inside) with labels.json, check on the test split of "
        "the run that logged it that its top-1 agrees with PyTorch's on at least "
        f"{percent(MIN_AGREEMENT)} of images, and log the files to that run under export/.",
    )
    parser.add_argument(
        "model", nargs="?", default=DEFAULT_MODEL, help=f"model URI (default {DEFAULT_MODEL})"
    )
    parser.add_argument(
        "--format", choices=(*FORMATS, "all"), default="all", help="what to write (default all)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="folder of the files (default exported/<model name or id>/, e.g. "
        "exported/fashion-classifier/)",
    )
    parser.add_argument(
        "--dataset-root",
        type=Path,
        default=None,
        metavar="PATH",
        help="where the run's data set is now, when it moved since training",
    )
    parser.add_argument(
        "--no-check", action="store_true", help="skip the agreement check on the test split"
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=64,
        metavar="N",
        help="images per forward pass (default 64)",
    )
    parser.add_argument(
        "--tracking-uri",
        default=None,
        metavar="URI",
        help="MLflow store holding the model (default: as training, $MLFLOW_TRACKING_URI or mlruns/)",
    )
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error("--batch-size must be 1 or more.")
    return args


def export(args: argparse.Namespace) -> int:
    """The command, its errors raised as ExportError."""
    from fashion_sweeps.tracking.runs import TrackingUnavailableError
    from fashion_sweeps.tracking.store import open_tool_store

    try:
        client = open_tool_store(args.tracking_uri)
    except TrackingUnavailableError as err:
        raise ExportError(str(err)) from err
    logged = load_logged(args.model)
    out = args.out or default_out(args.model)
    formats = list(FORMATS) if args.format == "all" else [args.format]
    pixels = None
    if not args.no_check:  # before the export: a wrong data root fails in seconds
        pixels = read_test_split(client, logged.run_id, logged.image_shape, args.dataset_root)
    try:
        out.mkdir(parents=True, exist_ok=True)
        write_labels(logged, out)
    except OSError as err:
        raise ExportError(
            f"Cannot write to {out} ({err}): give --out a folder you can write to.", 1
        ) from err
    if pixels is None:  # an earlier export's figures describe other files
        (out / AGREEMENT).unlink(missing_ok=True)
    runs = {fmt: export_format(fmt, logged, out) for fmt in formats}
    results: dict[str, dict[str, float | str]] = {}
    if pixels is not None:
        results = check(logged, runs, pixels, args.batch_size, out)
        failed = disagreement(results, len(pixels), out)
        if failed:
            raise ExportError(failed, code=1)
    where = log_to_run(client, logged.run_id, out, formats)
    images = 0 if pixels is None else len(pixels)
    for fmt in formats:
        print(closing_line(fmt, out, results.get(fmt), images))
    print(f"Classes and input in {out / LABELS}; {where}.")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    log_to_stderr()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per file
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return export(args)
    except ExportError as err:
        paragraph = " ".join(str(err).split())  # causes quoted inside may span lines
        print(f"fashion-sweeps export: {redact(paragraph)}", file=sys.stderr)
        return err.code


if __name__ == "__main__":
    sys.exit(main())
