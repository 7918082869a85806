"""The MLflow store a command-line tool reads (report, predict): the same one training writes to.

Training composes `conf/tracking/` through Hydra; tools outside Hydra read the same file, so
`tracking.uri`, `$MLFLOW_TRACKING_URI` and `tracking.dir` mean the same everywhere.
"""

from __future__ import annotations

import mlflow
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from fashion_sweeps.config import CONF_DIR
from fashion_sweeps.tracking.runs import open_store


def open_tool_store(uri: str | None = None, write: bool = False) -> MlflowClient:
    """The client of the store at `uri` when given, else of what `conf/tracking/mlflow.yaml`
    resolves to (by default `$MLFLOW_TRACKING_URI`, else `mlruns/mlflow.db`); checked reachable
    (and writable, for a tool that will `write`: register, log files), and made MLflow's global tracking and registry URI for the fluent APIs
    (`mlflow.pyfunc.load_model`)."""
    cfg = OmegaConf.load(CONF_DIR / "tracking" / "mlflow.yaml")
    if uri:
        cfg.uri = uri
    client = open_store(cfg, write)
    mlflow.set_tracking_uri(client.tracking_uri)
    mlflow.set_registry_uri(client.tracking_uri)
    return client


def search_every_experiment(
    client: MlflowClient, filter_string: str, order_by: list[str], max_results: int = 50000
) -> list[Run]:
    """Runs matching `filter_string` in every experiment of the store: a recipe or a sweep may
    have been tracked under any experiment name."""
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(
        experiments, filter_string=filter_string, order_by=order_by, max_results=max_results
    )
