"""The Optuna study of one sweep stage: what is done, what is left, and how each job ended.

A condition is identified by its swept values (`params_id`), kept as the trial user attribute
`params`, so a grid can gain values later without Optuna's "dynamic value space" error. The same
values are also recorded as Optuna trial params with their distributions (categorical for a grid)
wherever the study's value space holds them, for Optuna's tools (`optuna.importance`,
optuna-dashboard).

Outcomes (user attribute `outcome`):
- `finished`: COMPLETE with the best val_loss as value. Done.
- `diverged`: the run returned NaN (non-finite loss). FAIL, but done: rerunning would diverge again.
- `crashed`:  the job raised. FAIL, retried by the next invocation.
- `abandoned`: interrupted (Ctrl-C, killed process). FAIL, retried by the next invocation.
- `duplicate`: a sampler proposed a condition already done; FAIL, not trained.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.trial import FrozenTrial, Trial, TrialState

from fashion_sweeps.sweeps.space import params_id
from fashion_sweeps.sweeps.storage import open_storage

log = logging.getLogger(__name__)

OUTCOME = "outcome"
PARAMS = "params"
CONDITION = "condition"


def sqlite_ready(storage: str) -> str:
    """Create the folder of an SQLite storage (SQLite will not) and make its path absolute, so
    that jobs and later invocations from another folder address the same file."""
    if not storage.startswith("sqlite:///"):
        return storage
    path = Path(storage.removeprefix("sqlite:///")).expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def open_study(
    storage: str, name: str, direction: str, sampler: optuna.samplers.BaseSampler | None = None
) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own log says what happens
    return optuna.create_study(
        study_name=name,
        storage=open_storage(sqlite_ready(storage)),
        sampler=sampler,
        direction=direction,
        load_if_exists=True,
    )


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
        trial.state == TrialState.FAIL and trial.user_attrs.get(OUTCOME) == "diverged"
    )


def abandon_leftovers(
    study: optuna.Study, is_leftover: Callable[[FrozenTrial], bool] = lambda trial: True
) -> list[FrozenTrial]:
    """Mark open (RUNNING/WAITING) trials for which `is_leftover` holds as failed
    (`abandoned`), so that their conditions are trained again; return them. By default every
    open trial: it belongs to an invocation that died."""
    open_trials = study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING))
    leftovers = [t for t in open_trials if is_leftover(t)]
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


def done_ids(study: optuna.Study) -> set[str]:
    return {params_id(trial_params(t)) for t in study.get_trials(deepcopy=False) if is_done(t)}


def n_done(study: optuna.Study) -> int:
    return sum(is_done(t) for t in study.get_trials(deepcopy=False))


def start_trial(study: optuna.Study, params: dict[str, Any], condition: str) -> Trial:
    trial = study.ask()
    trial.set_user_attr(PARAMS, params)
    trial.set_user_attr(CONDITION, condition)
    return trial


def finish_trial(study: optuna.Study, trial: Trial, outcome: str, value: float | None) -> None:
    trial.set_user_attr(OUTCOME, outcome)
    if outcome == "finished":
        study.tell(trial, value)
    else:
        study.tell(trial, state=TrialState.FAIL)


def outcome_of(value: Any) -> tuple[str, float | None]:
    """A job's return value -> (outcome, objective). NaN or inf means the run diverged."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return "crashed", None
    return ("finished", number) if math.isfinite(number) else ("diverged", None)


def outcome_counts(trials: Sequence[FrozenTrial]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for trial in trials:
        outcome = trial.user_attrs.get(OUTCOME, trial.state.name.lower())
        counts[outcome] = counts.get(outcome, 0) + 1
    return counts
