"""MLflow runs: the store, the experiment, one run per training, params and data facts
(conf/tracking/).

We talk to MLflow through an explicit `MlflowClient` and run ids, never through the global
active run, so that many trials in one process (and parent/child runs) never mix.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from mlflow.entities import Metric, Param, RunStatus
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from fashion_sweeps.redact import redact

log = logging.getLogger(__name__)

# MLflow retries an unreachable server for minutes by default; we check once, quickly, first.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")


class TrackingUnavailableError(RuntimeError):
    """The tracking store cannot be reached or opened."""


def tracking_uri(cfg: DictConfig) -> str:
    """`tracking.uri`, else `$MLFLOW_TRACKING_URI`, else an SQLite store in `tracking.dir`."""
    uri = cfg.get("uri") or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        if redact(str(uri)) != str(uri):
            # MLflow prints "View run at <uri>" itself, credentials included (not through logging).
            os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
        return str(uri)
    folder = Path(cfg.dir).expanduser().resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'mlflow.db'}"


def artifact_root(cfg: DictConfig, uri: str) -> str | None:
    """Where new experiments keep artifacts: beside a local SQLite store; the server decides
    for remote stores."""
    if not uri.startswith("sqlite:///"):
        return None
    # Not urlparse: "sqlite:////abs/db" parses to the path "//abs/db", whose "file:////abs" URI
    # MLflow reads as the host "abs", so artifacts landed in /<rest of the path>.
    return (Path(uri.removeprefix("sqlite:///")).resolve().parent / "artifacts").as_uri()


def check_reachable(uri: str) -> None:
    """Fail fast, before any data is read or model trained, when the store cannot be used."""
    scheme = urlparse(uri).scheme
    if scheme in ("http", "https"):
        import requests

        try:
            requests.get(uri.rstrip("/") + "/health", timeout=5).raise_for_status()
        except requests.RequestException as err:
            raise TrackingUnavailableError(
                redact(
                    f"The MLflow tracking server at {uri} does not answer ({err}). Start it "
                    "(`make server` starts one on 127.0.0.1:5000), fix `tracking.uri` / "
                    "$MLFLOW_TRACKING_URI, or track locally by leaving both unset."
                )
            ) from None  # the cause's message holds the URI's credentials
        return
    try:
        MlflowClient(uri).search_experiments(max_results=1)
    except Exception as err:  # sqlite/file stores fail with many error types
        raise TrackingUnavailableError(
            redact(
                f"The MLflow store {uri} cannot be opened ({err}). Check the path and its "
                "permissions, or choose another with `tracking.uri=`."
            )
        ) from None  # the cause's message holds the URI's credentials


def ensure_experiment(client: MlflowClient, name: str, artifact_location: str | None) -> str:
    """The id of the named experiment, created on first use."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except Exception:
        # Another process may have created it between our look-up and create.
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def flatten(config: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Nested config -> ("a.b.c", value) pairs; lists stay whole values."""
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from flatten(value, f"{name}.")
        else:
            yield name, value


def config_params(cfg: DictConfig) -> dict[str, str]:
    """The resolved config as a run's MLflow params: flattened keys, values as text (MLflow keeps
    at most 6,000 characters of one), credentials in URIs masked."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    return {k: redact(str(v))[:6000] for k, v in flatten(resolved)}


def config_yaml(cfg: DictConfig) -> str:
    """The resolved config as the run's `config.yaml`, credentials in URIs masked."""
    return redact(OmegaConf.to_yaml(cfg, resolve=True))


class TrackedRun:
    """One MLflow run, addressed by id. Create it with `TrackedRun.start`.

    Every param, tag and text artifact passes through `redact`: a URI's credentials never reach
    the store, whoever logs it."""

    def __init__(self, client: MlflowClient, run_id: str, experiment_id: str, uri: str) -> None:
        self.client = client
        self.run_id = run_id
        self.experiment_id = experiment_id
        self.uri = uri

    @classmethod
    def start(
        cls,
        cfg: DictConfig,
        experiment: str,
        run_name: str | None = None,
        tags: Mapping[str, str] | None = None,
        parent_run_id: str | None = None,
    ) -> TrackedRun:
        uri = tracking_uri(cfg)
        check_reachable(uri)
        client = MlflowClient(uri)
        experiment_id = ensure_experiment(client, experiment, artifact_root(cfg, uri))
        all_tags = dict(tags or {})
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        all_tags = {k: redact(str(v)) for k, v in all_tags.items()}
        run = client.create_run(experiment_id, run_name=run_name, tags=all_tags)
        log.info("MLflow run %s in experiment %r (%s)", run.info.run_id, experiment, uri)
        return cls(client, run.info.run_id, experiment_id, uri)

    def log_config(self, cfg: DictConfig) -> None:
        """Every resolved value as a param (flattened keys), and the whole config as YAML."""
        params = [Param(k, v) for k, v in config_params(cfg).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[i : i + 100])
        self.client.log_text(self.run_id, config_yaml(cfg), "config.yaml")

    def log_params(self, params: Mapping[str, Any]) -> None:
        self.client.log_batch(
            self.run_id, params=[Param(k, redact(str(v))) for k, v in params.items()]
        )

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        if batch:
            self.client.log_batch(self.run_id, metrics=batch)

    def log_json(self, data: Any, artifact_file: str) -> None:
        self.client.log_dict(self.run_id, data, artifact_file)

    def log_file(self, path: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, redact(text), artifact_file)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, redact(str(value)))

    def lightning_logger(self):
        """Lightning's MLflow logger, writing per-epoch metrics into this run."""
        from pytorch_lightning.loggers import MLFlowLogger

        experiment = self.client.get_experiment(self.experiment_id).name
        return MLFlowLogger(experiment_name=experiment, tracking_uri=self.uri, run_id=self.run_id)

    def end(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(
            self.run_id, status=RunStatus.to_string(getattr(RunStatus, status))
        )
