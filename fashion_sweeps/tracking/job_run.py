"""The MLflow run of one training job: a new run, the run a relaunched job continues, or no run
at all on DDP ranks > 0.

Each job keeps `mlflow_run.json` in its output folder, beside `checkpoints/last.ckpt`. Running
the same job again into the same folder (SLURM requeue through submitit, a killed command started
again, a sweep retrying an interrupted condition) continues that MLflow run and trains on from the
last checkpoint instead of starting over. A folder whose run already finished (or diverged) is
not trained again: its recorded result is returned.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from pytorch_lightning.loggers import MLFlowLogger

from fashion_sweeps import run_folder
from fashion_sweeps.atomic_files import atomic_write
from fashion_sweeps.redact import redact
from fashion_sweeps.run_folder import read_record
from fashion_sweeps.settings import CONTINUABLE_KEYS, differences, result_settings
from fashion_sweeps.tracking.provenance import recipe_tags, where_it_runs
from fashion_sweeps.tracking.runs import (
    TrackedRun,
    config_params,
    find_run,
    open_store,
    tracking_uri,
)
from fashion_sweeps.trainer.distributed import is_rank_zero

log = logging.getLogger(__name__)

DONE = ("finished", "diverged")
# The version of the identity rule a record was written under: a record of another version is
# compared on the keys it holds (`_check_same_experiment`).
POLICY = 2


def identity(cfg: DictConfig) -> dict[str, str]:
    """The flattened config values that define what a run trains (settings.py); a continued run
    may also train for more epochs than its first attempt planned."""
    return {
        k: v for k, v in result_settings(config_params(cfg)).items() if k not in CONTINUABLE_KEYS
    }


def write_record(output_dir: Path, record: Mapping[str, Any]) -> None:
    """Written whole and renamed into place: other ranks and later jobs never read half a file."""
    output_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(record, indent=2).encode()
    atomic_write(run_folder.record(output_dir), lambda f: f.write(text))


class RecordedRun(TrackedRun):
    """A TrackedRun that mirrors its status and best val_loss into the folder's record, and logs
    a metric at most once per step of this attempt (Lightning logs `epoch` with every batch of
    metrics). A continued run logs again the epochs it trains again: their latest values are
    what MLflow shows and what the tables and curves read (`runs.metric_curve`)."""

    record_dir: Path
    record: dict[str, Any]
    steps: dict[str, set[int]]  # metric -> the steps this attempt logged

    def _unlogged(self, metrics: Mapping[str, float], step: int) -> dict[str, float]:
        new = {k: v for k, v in metrics.items() if step not in self.steps.get(k, ())}
        for key in new:
            self.steps.setdefault(key, set()).add(step)
        return new

    def lightning_logger(self) -> MLFlowLogger:
        """Lightning's per-epoch metrics through the same once-per-step filter."""
        return _OncePerStepLogger(self)

    def save_record(self, **changes: Any) -> None:
        """The folder's record, updated; a folder that cannot be written (a full disk) is said
        and the run goes on: MLflow keeps its status, and what fails next closes it."""
        self.record.update(changes)
        try:
            write_record(self.record_dir, self.record)
        except OSError as err:
            log.warning("Cannot write %s (%s).", run_folder.record(self.record_dir), err)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        super().set_tags(tags)
        if "status" in tags:
            self.save_record(status=str(tags["status"]))

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        super().log_metrics(self._unlogged(metrics, step), step)
        if "best_val_loss" in metrics:
            self.save_record(best_val_loss=float(metrics["best_val_loss"]))

    def end(self, status: str = "FINISHED") -> None:
        super().end(status)
        if self.record.get("status") not in DONE:
            self.save_record(status=status.lower())


class _OncePerStepLogger(MLFlowLogger):
    """Lightning's metrics at the step of their epoch, counted from 1 (Lightning logs them at the
    global step, with a 0-based `epoch` beside them), once per step."""

    def __init__(self, run: RecordedRun) -> None:
        experiment = run.client.get_experiment(run.experiment_id).name
        super().__init__(experiment_name=experiment, tracking_uri=run.uri, run_id=run.run_id)
        self.run = run

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if "epoch" in metrics:
            step = int(metrics["epoch"]) + 1
            metrics = {**metrics, "epoch": step}
        new = self.run._unlogged(metrics, step or 0)
        if new:
            super().log_metrics(new, step)


class ContinuedRun(RecordedRun):
    """A run continued by a relaunched job. MLflow params cannot change, so only params not logged
    by an earlier attempt are logged; changed values (e.g. trainer.max_epochs) are reported.
    """

    logged: dict[str, str]

    def _new_params(self, params: Mapping[str, Any]) -> dict[str, str]:
        values = {k: str(v)[:6000] for k, v in params.items()}
        changed = sorted(k for k, v in values.items() if self.logged.get(k, v) != v)
        if changed:
            log.warning(
                "Continued run %s keeps the first attempt's params for %s (now %s); the current "
                "config is in its config.yaml.",
                self.run_id,
                ", ".join(changed),
                ", ".join(values[k] for k in changed),
            )
        return {k: v for k, v in values.items() if k not in self.logged}

    def log_params(self, params: Mapping[str, Any]) -> None:
        new = self._new_params(params)
        super().log_params(new)
        self.logged.update(new)


class SilentRun(TrackedRun):
    """What ranks > 0 of a multi-process run write to MLflow: nothing (rank 0 writes the run)."""

    def __init__(self) -> None:
        super().__init__(client=None, run_id="", experiment_id="", uri="")  # type: ignore[arg-type]

    def log_config(self, cfg: DictConfig) -> None:
        pass

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        pass

    def log_json(self, data: Any, artifact_file: str) -> None:
        pass

    def log_file(self, path: Path, artifact_path: str | None = None) -> None:
        pass

    def log_text(self, text: str, artifact_file: str) -> None:
        pass

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        pass

    def log_inputs(self, datasets: list) -> None:
        pass

    @contextlib.contextmanager
    def system_metrics(self, every_s: float | None) -> Iterator[None]:
        yield

    def log_at_end(self, metrics: Mapping[str, float]) -> None:
        pass

    def lightning_logger(self) -> bool:
        return False

    def end(self, status: str = "FINISHED") -> None:
        pass


def checkpoint_epoch(path: Path) -> int | None:
    """The epochs done (counted from 1) of the checkpoint at `path`; None when there is none or
    torch cannot open it as data. A damaged one (a job killed while
    it was copied, a full disk) would crash every rerun, and one holding other pickled objects
    could run code when loaded: rank 0 renames it `*.damaged-<time>` (kept for a look, never
    loaded again) and the run starts over."""
    if not path.exists():
        return None
    try:
        # Memory-mapped: the archive's index is checked without reading the weights;
        # weights_only: tensors, containers and numbers only, never arbitrary objects.
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)["epoch"] + 1
    except Exception as err:  # torch raises RuntimeError, EOFError, pickle errors ...
        if is_rank_zero():
            aside = run_folder.set_aside(path)
            path.replace(aside)
            log.warning(
                "%s is damaged (%s): set aside as %s, starting over from epoch 0.",
                path,
                str(err).splitlines()[0][:200],
                aside.name,
            )
        return None


@dataclass
class JobRun:
    """What `train()` works with: the run to write to, the checkpoint to continue from (None: start
    at epoch 0) and, for a folder whose run is already done, its result (None: train)."""

    run: TrackedRun | None
    resume_from: Path | None = None
    result: float | None = None


def _check_same_experiment(output_dir: Path, record: Mapping[str, Any], cfg: DictConfig) -> None:
    before, now = record.get("identity", {}), identity(cfg)
    if record.get("policy") != POLICY:  # an earlier version's record: the keys it holds
        before = result_settings(before)
        now = {k: v for k, v in now.items() if k in before}
    shown = differences(before, now)
    if shown:
        raise ValueError(
            f"{output_dir} holds the run {record.get('run_id')} of another configuration "
            f"({shown}). A relaunched job continues the run of its output folder only with the "
            "same settings: choose another folder (hydra.run.dir=...) or delete this one to "
            "start over."
        )


def discard_later_epochs(last: Path, done: int) -> None:
    """Remove the best checkpoints of epochs after `done`, `last`'s: a killed attempt saved them
    after its last checkpoint, and the continued run trains those epochs again (a stale one
    would be tested as the best)."""
    for path in run_folder.best_checkpoints(last.parent.parent):
        if run_folder.epoch_of(path) > done:
            log.info("Removing %s: its epoch is trained again from %s", path.name, last.name)
            path.unlink(missing_ok=True)


def _result(record: Mapping[str, Any]) -> float:
    value = record.get("best_val_loss")
    return math.nan if record.get("status") == "diverged" or value is None else float(value)


def _continue(
    cfg: DictConfig, record: dict[str, Any], output_dir: Path, tags: Mapping[str, str]
) -> ContinuedRun | None:
    """Reopen the recorded MLflow run; None when it is gone (deleted, or another store)."""
    uri = tracking_uri(cfg.tracking)
    # The record keeps the URI redacted: compared as such.
    if redact(str(record.get("tracking_uri"))) != redact(uri):
        log.warning(
            "%s was tracked in %s, now %s: starting a new MLflow run for the continued training.",
            output_dir,
            record.get("tracking_uri"),
            redact(uri),
        )
        return None
    client = open_store(cfg.tracking)
    previous = find_run(client, record["run_id"])
    if previous is None:
        log.warning(
            "MLflow run %s of %s is gone: starting a new one.", record["run_id"], output_dir
        )
        return None
    run_id = previous.info.run_id
    if "failure_reason" in previous.data.tags:
        client.delete_tag(run_id, "failure_reason")
    attempt = int(previous.data.tags.get("attempt", "1")) + 1
    for key, value in {
        **recipe_tags(cfg),
        **tags,
        **where_it_runs(),
        "status": "running",
        "attempt": str(attempt),
    }.items():
        client.set_tag(run_id, key, redact(str(value)))
    # RUNNING after the new pid is tagged: a RUNNING run naming a dead pid gets closed (runs.py).
    # Tagged through the client: `set_tags` would save a record the run does not have yet.
    run = ContinuedRun.reopen(client, previous)
    run.logged = dict(previous.data.params)
    run.steps = {}
    return run


def open_job_run(
    cfg: DictConfig,
    output_dir: Path,
    experiment: str,
    run_name: str,
    tags: Mapping[str, str],
    parent_run_id: str | None = None,
) -> JobRun:
    """The run of the job whose output folder is `output_dir` (see the module docstring)."""
    record = read_record(output_dir)
    if record is not None:
        _check_same_experiment(output_dir, record, cfg)
    last = run_folder.last_checkpoint(output_dir)
    done = checkpoint_epoch(last) if record is not None else None
    resume_from = last if done is not None else None
    if resume_from is not None and is_rank_zero():
        discard_later_epochs(resume_from, done)
    if not is_rank_zero():
        # The same decisions as rank 0, from the same files, so all ranks train the same epochs.
        if record is not None and record.get("status") in DONE:
            return JobRun(None, None, _result(record))
        return JobRun(SilentRun(), resume_from)

    if record is not None and record.get("status") in DONE:
        log.info(
            "%s already holds the %s MLflow run %s: nothing to train (choose another "
            "hydra.run.dir to train again).",
            output_dir,
            record["status"],
            record.get("run_id"),
        )
        return JobRun(None, None, _result(record))

    run: RecordedRun | None = None
    if record is not None:
        run = _continue(cfg, record, output_dir, tags)
    if run is None:  # training still continues from the checkpoint: nothing computed is lost
        run = RecordedRun.start(
            cfg.tracking,
            experiment=experiment,
            run_name=run_name,
            tags={**recipe_tags(cfg), **tags, **where_it_runs(), "attempt": "1"},
            parent_run_id=parent_run_id,
        )
        run.steps = {}
        record = {"run_id": run.run_id, "identity": identity(cfg), "policy": POLICY}
    run.record_dir = output_dir
    run.record = {
        **record,
        "run_id": run.run_id,
        "tracking_uri": redact(run.uri),
        "status": "running",
        "best_val_loss": None,
    }
    run.save_record()
    if resume_from is not None:
        log.info("Continuing MLflow run %s from %s", run.run_id, resume_from)
        run.set_tags({"resumed_from": str(resume_from)})
    return JobRun(run, resume_from)
