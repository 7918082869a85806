"""The exported files checked against PyTorch (`fashion-sweeps export`, inference/export.py):
the test split of the run that logged the model, each format's top-1 agreement with the PyTorch
model on it (agreement.json), and the files logged to that run.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from fashion_sweeps.inference.engines import cpu_has_bf16
from fashion_sweeps.inference.export import AGREEMENT, FILES, LABELS, MIN_AGREEMENT, ExportError
from fashion_sweeps.inference.export_formats import LoggedModel, Runner, openvino_runner
from fashion_sweeps.models.classifier import Classifier
from fashion_sweeps.redact import redact

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient
    from omegaconf import DictConfig

log = logging.getLogger(__name__)


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
    from fashion_sweeps.config import image_cache_dir
    from fashion_sweeps.data.datamodule import prepare_arrays
    from fashion_sweeps.data.sources import DataError

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
