"""MLflow runs: the store, the experiment, one run per training, params and data facts
(conf/tracking/).

We talk to MLflow through an explicit `MlflowClient` and run ids, never through the global
active run, so that many trials in one process (and parent/child runs) never mix.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from mlflow.entities import DatasetInput, Metric, Param, Run, RunStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from fashion_sweeps.errors import UserError, disk_full
from fashion_sweeps.output_folders import why_file_unwritable
from fashion_sweeps.redact import redact
from fashion_sweeps.settings import config_params
from fashion_sweeps.tracking.metric_names import time_metric
from fashion_sweeps.tracking.provenance import process_gone

log = logging.getLogger(__name__)

# MLflow retries an unreachable server for minutes by default; we check once, quickly, first.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")


def store_client(uri: str) -> MlflowClient:
    """A client whose runs and model registry are both in `uri`. Without an explicit registry
    MLflow takes the process's global one, which an earlier store may have set (predict or the
    results page before a registration), and the version would land there."""
    return MlflowClient(uri, registry_uri=uri)


class TrackingUnavailableError(UserError, RuntimeError):
    """The tracking store cannot be reached or opened."""


class TrackingLostError(TrackingUnavailableError):
    """The store stopped answering while a run was under way."""


def lost_store(uri: str, err: BaseException) -> str | None:
    """Why `err` happened, when it came from a tracking store that no longer answers (None
    when it did not: the store answers, or the error is another one)."""
    from mlflow.exceptions import MlflowException
    from requests import RequestException

    cause: BaseException | None = err
    while cause is not None and not isinstance(cause, MlflowException | RequestException):
        cause = cause.__cause__ or cause.__context__
    if cause is None or not uri:
        return None
    try:
        check_reachable(uri)
    except TrackingUnavailableError:
        first = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
        return f"{type(cause).__name__}: {first}"[:300]
    return None


def tracking_uri(cfg: DictConfig) -> str:
    """`tracking.uri`, else `$MLFLOW_TRACKING_URI`, else an SQLite store in `tracking.dir`."""
    uri = cfg.get("uri") or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        if redact(str(uri)) != str(uri):
            # MLflow prints "View run at <uri>" itself, credentials included (not through logging).
            os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
        return str(uri)
    folder = Path(cfg.dir).expanduser().resolve()
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
        except requests.ReadTimeout:
            # It took the connection: up but busy (many workers starting at once). MLflow's
            # client retries its own requests, so train rather than give up the condition.
            log.warning("The MLflow tracking server at %s is slow to answer: going on.", uri)
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
        store_client(uri).search_experiments(max_results=1)
    except Exception as err:  # sqlite/file stores fail with many error types
        full = disk_full(err)  # a new store's tables could not be written
        if full:
            raise full from None
        raise TrackingUnavailableError(
            redact(
                f"The MLflow store {uri} cannot be opened ({err}). Check the path and its "
                "permissions, or choose another with `tracking.uri=`."
            )
        ) from None  # the cause's message holds the URI's credentials


def check_writable(uri: str) -> None:
    """A local SQLite store that runs cannot be written to (a read-only mount or file, a folder
    that cannot be made) stops the command in one paragraph before anything is trained: MLflow
    would fail at the first run it opens, with a traceback."""
    if not uri.startswith("sqlite:///"):
        return  # a server says so itself, at once
    db = Path(uri.removeprefix("sqlite:///"))
    reason = why_file_unwritable(db)
    if reason:
        raise TrackingUnavailableError(
            f"The MLflow store {db} is read-only here ({reason}): runs cannot be recorded in it. "
            "Make it writable, or track elsewhere with `tracking.dir=<a folder you can write>` "
            "or `tracking.uri=`. Commands that only read it (results, predict) work as it is."
        )


def open_store(tracking: DictConfig, write: bool = True) -> MlflowClient:
    """The client of the store `tracking` names (`tracking_uri`; the client's `tracking_uri` is
    the resolved URI), once it is known to answer (`check_reachable`) and, to `write`, that
    runs can be written to it (`check_writable`)."""
    uri = tracking_uri(tracking)
    if write:
        check_writable(uri)
    check_reachable(uri)
    return store_client(uri)


def find_run(client: MlflowClient, run_id: str) -> Run | None:
    """The run `run_id` of the client's store; None when it is gone (deleted, or a store that
    never had it)."""
    try:
        run = client.get_run(run_id)
    except Exception:  # deleted for good, or a store that never had it
        return None
    return None if run.info.lifecycle_stage == "deleted" else run


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


def close_dead_runs(client: MlflowClient) -> int:
    """Close as KILLED the runs left RUNNING by processes of this host that are gone (kill -9, an
    out-of-memory kill, a crashed machine): nothing else ever would. Runs of other hosts cannot
    be judged from here and stay as they are. Returns how many were closed."""
    host = socket.gethostname()
    experiments = [e.experiment_id for e in client.search_experiments(max_results=50000)]
    if not experiments:
        return 0
    running = client.search_runs(
        experiments,
        filter_string=f"attributes.status = 'RUNNING' and tags.host = '{host}'",
        max_results=50000,
    )
    dead = [
        r
        for r in running
        if process_gone(host, r.data.tags.get("pid"), r.data.tags.get("pid_started"))
    ]
    for run in dead:
        pid = run.data.tags.get("pid")
        reason = (
            f"interrupted: its process (pid {pid} on {host}) ended without closing the run "
            "(killed with -9, out of memory, or the machine stopped)"
        )
        client.set_tag(run.info.run_id, "status", "interrupted")
        client.set_tag(run.info.run_id, "failure_reason", reason)
        client.set_terminated(run.info.run_id, status="KILLED")
    if dead:
        log.warning(
            "Closed %d MLflow run(s) as KILLED whose process on %s is gone: %s",
            len(dead),
            host,
            ", ".join(r.info.run_id for r in dead),
        )
    return len(dead)


def config_yaml(cfg: DictConfig) -> str:
    """The resolved config as the run's `config.yaml`, credentials in URIs masked."""
    return redact(OmegaConf.to_yaml(cfg, resolve=True))


def context_tags(tags: Mapping[str, str]) -> dict[str, str]:
    """`tags` plus what MLflow's fluent `start_run` adds (user, source name and type, git commit
    of the entry script), the commit and branch being those of the checkout this package runs
    from (the entry script may be a console script outside it). Given tags win."""
    from mlflow.tracking.context.registry import resolve_tags
    from mlflow.utils import git_utils
    from mlflow.utils.mlflow_tags import (
        MLFLOW_GIT_BRANCH,
        MLFLOW_GIT_COMMIT,
        MLFLOW_GIT_REPO_URL,
    )

    from fashion_sweeps.config import CHECKOUT_DIR

    code: dict[str, str] = {}
    if CHECKOUT_DIR is not None:
        found = {
            MLFLOW_GIT_COMMIT: git_utils.get_git_commit(str(CHECKOUT_DIR)),
            MLFLOW_GIT_BRANCH: git_utils.get_git_branch(str(CHECKOUT_DIR)),
            MLFLOW_GIT_REPO_URL: git_utils.get_git_repo_url(str(CHECKOUT_DIR)),
        }
        code = {k: v for k, v in found.items() if v}
    return resolve_tags({**code, **tags})


class TrackedRun:
    """One MLflow run, addressed by id. Create it with `TrackedRun.start`.

    Every param, tag and text artifact passes through `redact`: a URI's credentials never reach
    the store, whoever logs it."""

    def __init__(self, client: MlflowClient, run_id: str, experiment_id: str, uri: str) -> None:
        self.client = client
        self.run_id = run_id
        self.experiment_id = experiment_id
        self.uri = uri
        self._at_end: dict[str, float] = {}  # `log_at_end`

    @classmethod
    def start(
        cls,
        cfg: DictConfig,
        experiment: str,
        run_name: str | None = None,
        tags: Mapping[str, str] | None = None,
        parent_run_id: str | None = None,
    ) -> TrackedRun:
        client = open_store(cfg)
        uri = client.tracking_uri
        close_dead_runs(client)
        experiment_id = ensure_experiment(client, experiment, artifact_root(cfg, uri))
        all_tags = dict(tags or {})
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        all_tags = {k: redact(str(v)) for k, v in all_tags.items()}
        run = client.create_run(experiment_id, run_name=run_name, tags=context_tags(all_tags))
        log.info("MLflow run %s in experiment %r (%s)", run.info.run_id, experiment, uri)
        return cls(client, run.info.run_id, experiment_id, uri)

    @classmethod
    def reopen(cls, client: MlflowClient, run: Run) -> TrackedRun:
        """`run` (see `find_run`), RUNNING again: a stage or a job that a later invocation goes
        on with. A RUNNING run naming a dead process gets closed (`close_dead_runs`): tag this
        process first."""
        client.update_run(run.info.run_id, status="RUNNING")
        return cls(client, run.info.run_id, run.info.experiment_id, client.tracking_uri)

    def log_config(self, cfg: DictConfig) -> None:
        """Every resolved value as a param (flattened keys), and the whole config as YAML."""
        self.log_params(config_params(cfg))
        self.log_text(config_yaml(cfg), "config.yaml")

    def log_params(self, params: Mapping[str, Any]) -> None:
        batch = [Param(k, redact(str(v))) for k, v in params.items()]
        for i in range(0, len(batch), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=batch[i : i + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        if batch:
            self.client.log_batch(self.run_id, metrics=batch)

    def log_times(self, seconds: Mapping[str, float], step: int = 0, at_end: bool = False) -> None:
        """Timings and rates, under `time/` (`time_metric`); `at_end`: when the run ends."""
        named = {time_metric(k): v for k, v in seconds.items()}
        if at_end:
            self.log_at_end(named)
        else:
            self.log_metrics(named, step)

    def log_json(self, data: Any, artifact_file: str) -> None:
        self.client.log_dict(self.run_id, data, artifact_file)

    def log_file(self, path: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, redact(text), artifact_file)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, redact(str(value)))

    def log_inputs(self, datasets: list[DatasetInput], attempts: int = 3) -> None:
        """The run's data sets as MLflow inputs. Workers that log the same data set at once
        race on MLflow's unique (experiment, name, digest) row; the loser's retry finds the row
        the winner wrote and links it, instead of crashing its condition."""
        for attempt in range(1, attempts + 1):
            try:
                self.client.log_inputs(self.run_id, datasets=datasets)
                return
            except MlflowException as err:
                unique = "UNIQUE constraint" in str(err) or "duplicate key" in str(err)
                if not unique or attempt == attempts:
                    raise
                time.sleep(0.2 * attempt)

    @contextlib.contextmanager
    def system_metrics(self, every_s: float | None) -> Iterator[None]:
        """MLflow's system metrics monitor on this run while the block runs (`system/*`
        metrics, a sample every `every_s` seconds; None: off). A continued run goes on from
        its last step."""
        if not every_s:
            yield
            return
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(
            self.run_id, sampling_interval=every_s, resume_logging=True, tracking_uri=self.uri
        )
        monitor.start()
        try:
            yield
        finally:
            monitor.finish()
            _log_last_sample(monitor)

    def lightning_logger(self):
        """Lightning's MLflow logger, writing per-epoch metrics into this run."""
        from pytorch_lightning.loggers import MLFlowLogger

        experiment = self.client.get_experiment(self.experiment_id).name
        return MLFlowLogger(experiment_name=experiment, tracking_uri=self.uri, run_id=self.run_id)

    def log_at_end(self, metrics: Mapping[str, float]) -> None:
        """Bookkeeping known early (cache timings, skipped items), logged when the run ends:
        MLflow's compare view and a run's charts open on the first metric a run logged."""
        self._at_end.update(metrics)

    def end(self, status: str = "FINISHED") -> None:
        if self._at_end:
            self.log_metrics(self._at_end)
            self._at_end = {}
        self.client.set_terminated(
            self.run_id, status=RunStatus.to_string(getattr(RunStatus, status))
        )


def _log_last_sample(monitor: Any) -> None:
    """MLflow's monitor drops the samples taken since its last log when it stops, so a run
    shorter than one interval (the demo's take seconds) had no system metrics at all."""
    try:
        metrics = monitor.aggregate_metrics()
        if metrics:
            monitor.publish_metrics(metrics)
            monitor.mlflow_logger.flush()
    except Exception as err:  # a statistic of the machine is never worth a failed run
        log.warning("The last system-metrics sample was not logged: %s", err)


def metric_curve(client: MlflowClient, run_id: str, key: str) -> list[Metric]:
    """A metric's history, one value per step (per-epoch metrics step by epoch, from 1), in step
    order: where a resumed run trained an epoch again, that epoch's latest value."""
    latest: dict[int, Metric] = {}
    for metric in sorted(client.get_metric_history(run_id, key), key=lambda m: m.timestamp):
        latest[metric.step] = metric
    return [latest[step] for step in sorted(latest)]
