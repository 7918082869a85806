"""The layout of one run's output folder (Hydra's job folder: `multirun/runs/<date>/<time>`, a
sweep condition's folder): every file a run writes there or reads back is named here.

    mlflow_run.json           the job's record: its MLflow run, status, best val_loss (tracking/job_run.py)
    checkpoints/
        best-epoch=N.ckpt     the weights of the best val_loss (Lightning's N counts epochs from 0)
        last.ckpt             the newest epoch's, which a relaunched job trains on from
        knn.ckpt              head=knn: the stored training features, nothing trained (models/knn.py)
        *.damaged-<time>      a checkpoint torch could not open, set aside
    results.csv               one row per epoch: its train and validation metrics (trainer/epoch_table.py)
    results.png               the learning curves, as logged (tracking/plots.py; runs that draw figures)
    evaluation/               the test split's evaluation files (also logged to MLflow)
    backbone.pth              `fashion-sweeps export-backbone`'s file (models/export.py)
    .data_ready.<launch>      rank 0's word to the other DDP ranks: the data is prepared
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

RECORD = "mlflow_run.json"
CHECKPOINTS = "checkpoints"
# Lightning's ModelCheckpoint `filename`s (it adds `.ckpt`); `{epoch}` becomes `epoch=N`.
BEST = "best-{epoch}"
LAST = "last"
KNN = "knn.ckpt"
EVALUATION = "evaluation"
RESULTS_TABLE, RESULTS_FIGURE = "results.csv", "results.png"
EXPORTED_BACKBONE = "backbone.pth"
# Where a checkpoint's state dict keeps the backbone's tensors: ClassifierModule.model.backbone.
BACKBONE_PREFIX = "model.backbone."
# Set in the checkpoints of runs on cached features, which leave the (frozen) backbone out.
WITHOUT_BACKBONE = "fashion_sweeps_without_backbone"


def record(folder: Path) -> Path:
    return folder / RECORD


def read_record(folder: Path) -> dict[str, Any] | None:
    """The folder's record (`mlflow_run.json`: run id, status, identity), None without one."""
    path = record(folder)
    return json.loads(path.read_text()) if path.exists() else None


def checkpoints(folder: Path) -> Path:
    return folder / CHECKPOINTS


def last_checkpoint(folder: Path) -> Path:
    return checkpoints(folder) / f"{LAST}.ckpt"


def knn_checkpoint(folder: Path) -> Path:
    return checkpoints(folder) / KNN


def best_checkpoints(folder: Path) -> list[Path]:
    """The best checkpoints in the folder, oldest first (a resumed run may leave several)."""
    found = checkpoints(folder).glob(BEST.split("{")[0] + "*.ckpt")
    return sorted(found, key=lambda p: p.stat().st_mtime)


def epoch_of(checkpoint: str | Path) -> int:
    """The epoch of a `best-epoch=N.ckpt` file, counted from 1 like `epochs_run` (Lightning's N
    counts from 0): `best_epoch` 3 of `epochs_run` 5 is the third epoch. 0: none (kNN)."""
    stem = Path(checkpoint).stem
    return int(stem.split("epoch=")[-1].split("-")[0]) + 1 if "epoch=" in stem else 0


def folder_of(path: str | Path) -> Path:
    """The run folder, given the folder or a checkpoint in its `checkpoints/`."""
    path = Path(path).expanduser()
    return path.parent.parent if path.suffix == ".ckpt" else path


def set_aside(checkpoint: Path) -> Path:
    """Where a damaged checkpoint is kept for a look (never loaded again)."""
    return checkpoint.with_name(f"{checkpoint.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")


def results_table(folder: Path) -> Path:
    return folder / RESULTS_TABLE


def results_figure(folder: Path) -> Path:
    return folder / RESULTS_FIGURE


def evaluation(folder: Path) -> Path:
    return folder / EVALUATION


def exported_backbone(folder: Path) -> Path:
    return folder / EXPORTED_BACKBONE


def data_ready_marker(folder: Path, launch: str) -> Path:
    """Touched by rank 0 of the launch `launch` once its data is prepared."""
    return folder / f".data_ready.{launch}"


def output_dir(cfg: DictConfig) -> Path:
    """Hydra's output folder of this job, or `cfg.output_dir` when composed without Hydra."""
    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path(cfg.get("output_dir") or "multirun/runs/latest")
