"""The MLflow parent run of one sweep stage (screen or full), and its child runs.

The parent is created (or, on a resumed sweep, found again) in the sweep's own process before
any job starts; each job gets its id as `tracking.parent_run_id`, so jobs never race to create
the store, the experiment or the parent, and all conditions of a stage stay under one parent
however many invocations it took.
"""

from __future__ import annotations

import logging

from mlflow.entities import Run
from omegaconf import DictConfig

from fashion_sweeps.tracking.runs import (
    TrackedRun,
    artifact_root,
    close_dead_runs,
    ensure_experiment,
    open_store,
)

log = logging.getLogger(__name__)

STAGE_KIND = "stage"  # tag `run_kind` of a parent, so that it is never mistaken for a child


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
