"""The MLflow parent run of one sweep stage (screen or full), and its child runs.

The parent is created (or, on a resumed sweep, found again) in the sweep's own process before
any job starts; each job gets its id as `tracking.parent_run_id`, so jobs never race to create
the store, the experiment or the parent, and all conditions of a stage stay under one parent
however many invocations it took.

Workers on one stage (study.py) share one parent: it is created once, by the worker that created
the stage's study, and found by the others through the study.
"""

from __future__ import annotations

import logging
import time

import optuna
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from omegaconf import DictConfig

from fashion_sweeps.settings import config_params
from fashion_sweeps.tracking.runs import (
    TrackedRun,
    artifact_root,
    close_dead_runs,
    ensure_experiment,
    find_run,
    open_store,
)

log = logging.getLogger(__name__)

STAGE_KIND = "stage"  # tag `run_kind` of a parent, so that it is never mistaken for a child
PARENT = "mlflow_parent_run_id"  # the study's user attribute naming its stage's parent
PARENT_WAIT_S = 120.0


def shared_stage_run(
    study: optuna.Study,
    created: bool,
    tracking: DictConfig,
    experiment: str,
    sweep: str,
    stage: str,
) -> TrackedRun:
    """The stage's parent run, the same for every worker: the one whose id the study holds; else
    `open_stage_run`'s, by the worker that created the study (others wait for it), and its id
    stored in the study."""
    deadline = time.monotonic() + PARENT_WAIT_S
    while True:
        run_id = study.user_attrs.get(PARENT)
        if run_id:
            client = open_store(tracking)
            found = find_run(client, run_id)
            if found is not None:
                return TrackedRun.reopen(client, found)
            # Deleted, or another tracking store than the study's first worker used.
            log.warning("The stage's MLflow parent run %s is gone: starting another.", run_id)
            break
        # A study made by another worker a moment ago gets its parent id in a moment.
        if created or study.trials or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    run = open_stage_run(tracking, experiment, sweep, stage)
    study.set_user_attr(PARENT, run.run_id)
    return run


def open_stage_run(tracking: DictConfig, experiment: str, sweep: str, stage: str) -> TrackedRun:
    """The stage's parent run, RUNNING: the one an earlier invocation of this stage created, else
    a new one named `<sweep>/<stage>`."""
    client = open_store(tracking)
    close_dead_runs(client)
    experiment_id = ensure_experiment(
        client, experiment, artifact_root(tracking, client.tracking_uri)
    )
    found = client.search_runs(
        [experiment_id],
        filter_string=(
            f"tags.sweep = '{sweep}' and tags.stage = '{stage}' and tags.run_kind = '{STAGE_KIND}'"
        ),
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not found:
        run = TrackedRun.start(
            tracking,
            experiment=experiment,
            run_name=f"{sweep}/{stage}",
            tags={"sweep": sweep, "stage": stage, "run_kind": STAGE_KIND},
        )
        log.info("Stage %s/%s: new MLflow parent run %s", sweep, stage, run.run_id)
        return run
    run = TrackedRun.reopen(client, found[0])
    _close_interrupted_children(run)
    log.info("Stage %s/%s: resuming MLflow parent run %s", sweep, stage, run.run_id)
    return run


def children(parent: TrackedRun) -> list[Run]:
    """Every child run of the parent, oldest first."""
    runs: list[Run] = []
    token = None
    while True:
        page = parent.client.search_runs(
            [parent.experiment_id],
            filter_string=f"tags.`mlflow.parentRunId` = '{parent.run_id}'",
            order_by=["attributes.start_time ASC"],
            max_results=1000,
            page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def latest_per_condition(runs: list[Run]) -> dict[str, Run]:
    """Run name (the condition) -> its latest run: a retried condition's last attempt counts."""
    latest: dict[str, Run] = {}
    for run in sorted(runs, key=lambda r: r.info.start_time):
        latest[run.info.run_name] = run
    return latest


def _close_interrupted_children(parent: TrackedRun) -> None:
    """Children left RUNNING by a killed invocation would look alive forever in the UI."""
    for run in children(parent):
        if run.info.status == "RUNNING":
            parent.client.set_tag(run.info.run_id, "status", "interrupted")
            parent.client.set_tag(
                run.info.run_id, "failure_reason", "the sweep process stopped during this run"
            )
            parent.client.set_terminated(run.info.run_id, status="KILLED")


def log_settings(parent: TrackedRun, settings: DictConfig, grid: dict[str, str]) -> None:
    """The sweep's settings as the parent's params: `sweep.*` and the swept values (`grid.*`).
    MLflow params never change: a parent keeps what its first invocation logged (a grid widened
    since shows in its child runs)."""
    values = {f"sweep.{k}": v for k, v in config_params(settings).items()}
    values.update({f"grid.{key.lstrip('+~')}": choices for key, choices in grid.items()})
    held = parent.client.get_run(parent.run_id).data.params
    try:
        parent.log_params({k: v for k, v in values.items() if k not in held})
    except MlflowException as err:  # another worker logged other values first: theirs stay
        log.warning("The stage parent keeps the settings first logged (%s)", err.message)
