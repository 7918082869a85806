"""The Optuna study of one sweep stage: what is done, what is left, how each job ended, and which
worker trains what.

A condition is identified by its swept values (`params_id`), kept as the trial user attribute
`params`, so a grid can gain values later without Optuna's "dynamic value space" error. The same
values are also recorded as Optuna trial params with their distributions (categorical for a grid)
wherever the study's value space holds them, for Optuna's tools (`optuna.importance`,
optuna-dashboard).

Outcomes (user attribute `outcome`):
- `finished`: COMPLETE with the best val_loss as value. Done.
- `diverged`: the run returned NaN (non-finite loss). FAIL, but done: rerunning would diverge again.
- `refused`: the run refused its settings (a user error: one paragraph). FAIL, but done:
  the same settings would be refused again.
- `crashed`:  the job raised anything else. FAIL, retried by the next invocation.
- `abandoned`: interrupted (Ctrl-C, killed process). FAIL, retried by the next invocation.
- `duplicate`: a sampler proposed a condition already done; FAIL, not trained.

Many sweep processes ("workers") may work on one stage, every condition trained by exactly one of
them. Workers started on the same screen (SLURM jobs, several machines, several terminals) share
its study through a shared storage (storage.py). Before training a condition a worker claims it:
one storage operation creates a RUNNING trial that already names the condition, and the storage
numbers trials in the order it receives them. Of the live claims on a condition the
lowest-numbered wins; a worker whose claim lost marks it `duplicate` and moves on. So however the
workers interleave, a condition is never trained twice.

A worker keeps its claims alive with a heartbeat (a trial attribute refreshed every minute). Its
claims go back to the pool when it is gone: at once when the same worker comes back (a requeued
SLURM job) or its process is dead on this host, else once the heartbeat is 10 minutes old.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.trial import FrozenTrial, Trial, TrialState

from fashion_sweeps import run_folder
from fashion_sweeps.sweeps.space import params_id
from fashion_sweeps.sweeps.storage import open_storage
from fashion_sweeps.tracking.provenance import process_gone

log = logging.getLogger(__name__)

OUTCOME = "outcome"
OBJECTIVE = "val_loss"  # what every trial reports: its run's best validation loss
MLFLOW_RUN = "mlflow_run_id"
PARAMS = "params"
CONDITION = "condition"
WORKER, HOST, PID, ALIVE = "worker", "host", "pid", "alive_at"
BEAT_S = 60.0
STALE_S = 600.0  # a claim without heartbeat for this long belongs to a dead worker
OPEN = (TrialState.RUNNING, TrialState.WAITING)


def sqlite_ready(storage: str) -> str:
    """Create the folder of an SQLite storage (SQLite will not) and make its path absolute, so
    that jobs and later invocations from another folder address the same file."""
    if not storage.startswith("sqlite:///"):
        return storage
    path = Path(storage.removeprefix("sqlite:///")).expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def open_study(storage: str, name: str, direction: str) -> tuple[optuna.Study, bool]:
    """The study, created when missing, and whether this call created it: of several workers
    started together exactly one did (the storage decides atomically); False also when an
    earlier invocation did."""
    opened = open_storage(sqlite_ready(storage))
    try:
        study = optuna.create_study(study_name=name, storage=opened, direction=direction)
    except optuna.exceptions.DuplicatedStudyError:
        study, created = optuna.load_study(study_name=name, storage=opened), False
    else:
        created = True
    if study.metric_names is None:  # Optuna's dashboard says "Objective 0" without it
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([OBJECTIVE])
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own log says what happens
    return study, created


def load_study(storage: str, name: str) -> optuna.Study | None:
    """An existing study, or None when the storage has no study of that name."""
    try:
        return optuna.load_study(study_name=name, storage=open_storage(sqlite_ready(storage)))
    except KeyError:
        return None


def trial_params(trial: FrozenTrial) -> dict[str, Any]:
    """The swept values of a trial (ours keep them as a user attribute; the stock plugin's
    trials as Optuna params)."""
    return dict(trial.user_attrs.get(PARAMS) or trial.params)


def recordable(
    study: optuna.Study, params: dict[str, Any], distributions: dict[str, BaseDistribution]
) -> tuple[dict[str, Any], dict[str, BaseDistribution]]:
    """The swept values Optuna can hold as this study's trial params, with their distributions.

    A key keeps the distribution the study first recorded for it (Optuna refuses another
    categorical space for the same name); a value outside it (a grid widened since) stays in the
    `params` user attribute only, with a warning."""
    recorded: dict[str, BaseDistribution] = {}
    for trial in study.get_trials(deepcopy=False):
        for key, distribution in trial.distributions.items():
            recorded.setdefault(key, distribution)
    kept, used, outside = {}, {}, []
    for key, value in params.items():
        distribution = recorded.get(key, distributions.get(key))
        if distribution is None:
            continue
        if isinstance(distribution, CategoricalDistribution) and value not in distribution.choices:
            outside.append(f"{key}={value}")
            continue
        kept[key], used[key] = value, distribution
    if outside:
        log.warning(
            "Study %r was started with another value space: %s recorded as the condition only, "
            "not as Optuna params (importances and dashboard plots leave it out; a new "
            "`sweep.name` records it fully).",
            study.study_name,
            ", ".join(outside),
        )
    return kept, used


def is_done(trial: FrozenTrial) -> bool:
    return trial.state == TrialState.COMPLETE or (
        trial.state == TrialState.FAIL and trial.user_attrs.get(OUTCOME) in ("diverged", "refused")
    )


def done_ids(study: optuna.Study) -> set[str]:
    return {params_id(trial_params(t)) for t in study.get_trials(deepcopy=False) if is_done(t)}


def n_done(study: optuna.Study) -> int:
    return sum(is_done(t) for t in study.get_trials(deepcopy=False))


def finish_trial(study: optuna.Study, trial: Trial, outcome: str, value: float | None) -> None:
    trial.set_user_attr(OUTCOME, outcome)
    if outcome == "finished":
        study.tell(trial, value)
    else:
        study.tell(trial, state=TrialState.FAIL)


def link_run(trial: Trial, job_dir: str | None) -> None:
    """The trial's MLflow run id as its user attribute `mlflow_run_id`, read from the record the
    job left in its folder (none for a job that failed before opening its run)."""
    with contextlib.suppress(OSError, ValueError):
        record = run_folder.read_record(Path(job_dir)) if job_dir else None
        if record is not None:
            trial.set_user_attr(MLFLOW_RUN, record["run_id"])


def outcome_of(value: Any) -> tuple[str, float | None]:
    """A job's return value -> (outcome, objective). NaN or inf means the run diverged."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return "crashed", None
    return ("finished", number) if math.isfinite(number) else ("diverged", None)


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
    """Mark the claims of workers that are gone (`is_leftover`) as failed (`abandoned`), so that
    their conditions are trained again; return them. Claims of live workers (other processes on
    the same stage) are left alone."""
    leftovers = [t for t in study.get_trials(deepcopy=False, states=OPEN) if is_leftover(t)]
    for trial in leftovers:
        # Only the storage can change a trial that no live Trial object holds.
        study._storage.set_trial_user_attr(trial._trial_id, OUTCOME, "abandoned")
        study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    if leftovers:
        log.warning(
            "%d condition(s) of study %r were left running by a worker that is gone (%s): "
            "they are trained again.",
            len(leftovers),
            study.study_name,
            ", ".join(str(t.user_attrs.get(CONDITION, t.number)) for t in leftovers),
        )
    return leftovers


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
    swept values are also its Optuna params, under `distributions` (`recordable`)."""
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


def hold(study: optuna.Study, trial: Trial, params: dict[str, Any], condition: str) -> None:
    """Name the condition of a trial asked from the sampler, and mark it as this worker's, kept
    alive (`claim` does both for a condition chosen beforehand)."""
    for key, value in {PARAMS: params, CONDITION: condition, **_identity()}.items():
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
