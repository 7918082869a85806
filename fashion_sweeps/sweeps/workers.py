"""Many sweep processes ("workers") on one stage: every condition trained by exactly one of them.

Workers started on the same screen (SLURM jobs, several machines, several terminals) share its
Optuna study through a shared storage (storage.py). Before training a condition a worker claims
it: one storage operation creates a RUNNING trial that already names the condition, and the
storage numbers trials in the order it receives them. Of the live claims on a condition the
lowest-numbered wins; a worker whose claim lost marks it `duplicate` and moves on. So however the
workers interleave, a condition is never trained twice.

A worker keeps its claims alive with a heartbeat (a trial attribute refreshed every minute). Its
claims go back to the pool when it is gone: at once when the same worker comes back (a requeued
SLURM job) or its process is dead on this host, else once the heartbeat is 10 minutes old.

The stage's MLflow parent run is created once, by the worker that created the study, and found
by the others through the study.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import optuna
from omegaconf import DictConfig
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, Trial, TrialState

from fashion_sweeps.sweeps.space import params_id
from fashion_sweeps.sweeps.storage import open_storage
from fashion_sweeps.sweeps.study import (
    CONDITION,
    OUTCOME,
    PARAMS,
    is_done,
    recordable,
    sqlite_ready,
    trial_params,
)
from fashion_sweeps.sweeps.study import abandon_leftovers as study_abandon_leftovers
from fashion_sweeps.tracking.provenance import process_gone
from fashion_sweeps.tracking.runs import TrackedRun, find_run, open_store

log = logging.getLogger(__name__)

WORKER, HOST, PID, ALIVE = "worker", "host", "pid", "alive_at"
PARENT = "mlflow_parent_run_id"
BEAT_S = 60.0
STALE_S = 600.0  # a claim without heartbeat for this long belongs to a dead worker
PARENT_WAIT_S = 120.0
OPEN = (TrialState.RUNNING, TrialState.WAITING)


def worker_id() -> str:
    """Stable across a SLURM requeue (same job and task), else unique per process."""
    job = os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID")
    if job:
        task = os.environ.get("SLURM_ARRAY_TASK_ID")
        return (
            f"slurm-{job}" + (f"_{task}" if task else "") + f".{os.environ.get('SLURM_PROCID', 0)}"
        )
    return f"{socket.gethostname()}-{os.getpid()}"


def _identity() -> dict[str, Any]:
    return {WORKER: worker_id(), HOST: socket.gethostname(), PID: os.getpid(), ALIVE: time.time()}


def is_leftover(trial: FrozenTrial, now: float | None = None) -> bool:
    """An open (RUNNING/WAITING) trial that no live worker holds any more."""
    if trial.state not in OPEN:
        return False
    attrs = trial.user_attrs
    if WORKER not in attrs:
        return True  # a trial of a worker that kept no heartbeat
    if attrs[WORKER] == worker_id():
        return True  # this worker's earlier life: requeued, or started again
    if process_gone(attrs.get(HOST), attrs.get(PID)):
        return True
    return (now or time.time()) - float(attrs.get(ALIVE, 0)) > STALE_S


def abandon_leftovers(study: optuna.Study) -> list[FrozenTrial]:
    """Mark the claims of workers that are gone as failed (`abandoned`), to be trained again;
    return them. Claims of live workers (other processes on the same stage) are left alone."""
    return study_abandon_leftovers(study, is_leftover)


def _holds(trial: FrozenTrial, now: float) -> bool:
    """Whether a trial keeps its condition from being trained (again): done, or claimed live."""
    return is_done(trial) or (trial.state in OPEN and not is_leftover(trial, now))


def claim(
    study: optuna.Study,
    params: dict[str, Any],
    condition: str,
    distributions: dict[str, BaseDistribution] | None = None,
) -> Trial | None:
    """A RUNNING trial for the condition, or None when another worker has it or it is done. The
    swept values are also its Optuna params, under `distributions` (study.py, `recordable`)."""
    key, now = params_id(params), time.time()
    if any(
        params_id(trial_params(t)) == key and _holds(t, now)
        for t in study.get_trials(deepcopy=False)
    ):
        return None
    optuna_params, optuna_distributions = recordable(study, params, distributions or {})
    template = optuna.trial.create_trial(
        state=TrialState.RUNNING,
        params=optuna_params,
        distributions=optuna_distributions,
        user_attrs={PARAMS: params, CONDITION: condition, **_identity()},
    )
    # The storage, not `study.ask()`: the claim must name its condition in the same operation
    # that numbers it, or two workers could each see no earlier rival and both train it.
    trial_id = study._storage.create_new_trial(study._study_id, template_trial=template)
    mine = study._storage.get_trial(trial_id)
    rivals = [
        t
        for t in study.get_trials(deepcopy=False)
        if t.number < mine.number and params_id(trial_params(t)) == key and _holds(t, now)
    ]
    trial = Trial(study, trial_id)
    if rivals:
        trial.set_user_attr(OUTCOME, "duplicate")
        study.tell(trial, state=TrialState.FAIL)
        log.info("%s: claimed by another worker at the same moment: left to it", condition)
        return None
    _HEARTBEAT.hold(study, trial_id)
    return trial


def hold(study: optuna.Study, trial: Trial) -> None:
    """Mark a trial asked from the sampler as this worker's, and keep it alive."""
    for key, value in _identity().items():
        trial.set_user_attr(key, value)
    _HEARTBEAT.hold(study, trial._trial_id)


def others_active(study: optuna.Study) -> int:
    """How many conditions other live workers are training now."""
    me, now = worker_id(), time.time()
    return sum(
        t.user_attrs.get(WORKER) != me and not is_leftover(t, now)
        for t in study.get_trials(deepcopy=False, states=OPEN)
    )


class _Heartbeat:
    """One daemon thread per process refreshing `alive_at` of the trials this worker holds;
    a trial drops out once finished (the storage then refuses the update)."""

    def __init__(self) -> None:
        self.held: dict[int, optuna.storages.BaseStorage] = {}
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None

    def hold(self, study: optuna.Study, trial_id: int) -> None:
        with self.lock:
            self.held[trial_id] = study._storage
            if self.thread is None:
                self.thread = threading.Thread(
                    target=self._beat, name="sweep-heartbeat", daemon=True
                )
                self.thread.start()

    def _beat(self) -> None:
        while True:
            time.sleep(BEAT_S)
            with self.lock:
                held = list(self.held.items())
            for trial_id, storage in held:
                try:
                    storage.set_trial_user_attr(trial_id, ALIVE, time.time())
                except Exception:  # finished (or the storage went away): stop beating for it
                    with self.lock:
                        self.held.pop(trial_id, None)


_HEARTBEAT = _Heartbeat()


def create_study_if_missing(storage: str, name: str, direction: str) -> bool:
    """Create the study; False when it exists already (an earlier invocation, or another worker
    that got there first). The storage decides atomically, so exactly one worker gets True."""
    try:
        optuna.create_study(
            study_name=name, storage=open_storage(sqlite_ready(storage)), direction=direction
        )
    except optuna.exceptions.DuplicatedStudyError:
        return False
    return True


def shared_stage_run(
    study: optuna.Study,
    created: bool,
    tracking: DictConfig,
    open_new: Callable[[], TrackedRun],
) -> TrackedRun:
    """The stage's MLflow parent run, the same for every worker: the one whose id the study
    holds; else `open_new()`, by the worker that created the study (others wait for it), and its
    id stored in the study."""
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
    run = open_new()
    study.set_user_attr(PARENT, run.run_id)
    return run
