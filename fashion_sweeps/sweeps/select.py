"""The winners of a screen: its top-k conditions by val_loss, the conditions the full stage trains."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import TrialState

from fashion_sweeps.sweeps.space import params_id
from fashion_sweeps.sweeps.study import CONDITION, trial_params

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Winner:
    params: dict[str, Any]
    condition: str
    val_loss: float


def top_k(screen: optuna.Study, k: int) -> list[Winner]:
    """The k finished conditions with the lowest val_loss (the earlier trial first on a tie).
    A condition recorded more than once counts once, with its best value; diverged and crashed
    conditions never qualify."""
    if k < 1:
        raise ValueError(f"sweep.full.top_k={k}: choose at least 1 condition.")
    finished = screen.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    best: dict[str, Winner] = {}
    for trial in sorted(finished, key=lambda t: (t.value, t.number)):
        params = trial_params(trial)
        key = params_id(params)
        if key not in best:
            condition = trial.user_attrs.get(CONDITION, key)
            best[key] = Winner(params, condition, float(trial.value))
    winners = list(best.values())[:k]
    if len(winners) < k:
        log.warning(
            "The screen %r has only %d finished condition(s); the full stage trains those "
            "instead of the %d asked for.",
            screen.study_name,
            len(winners),
            k,
        )
    return winners
