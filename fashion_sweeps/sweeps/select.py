"""The winners of a screen: its top-k conditions by val_loss, the conditions the full stage trains,
as screened or fine-tuned (`sweep.full` in conf/sweep/grid.yaml)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import optuna
from omegaconf import DictConfig
from optuna.trial import TrialState

from fashion_sweeps import interrupts
from fashion_sweeps.sweeps.jobs import Compose
from fashion_sweeps.sweeps.space import override_lines, params_id
from fashion_sweeps.sweeps.study import (
    CONDITION,
    load_study,
    others_active,
    sqlite_ready,
    trial_params,
)

log = logging.getLogger(__name__)
# How often a full stage looks whether the screen's last conditions have finished.
SCREEN_POLL_S = 3.0


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


def full_stage(
    storage: str, full: DictConfig, fixed: list[str], compose: Compose
) -> tuple[list[Winner], list[dict[str, Any]]]:
    """The winners of the screen `full.screen_study` (its `full.top_k`) and the overrides of
    each one's full run (`full_run_params`)."""
    screen = load_study(storage, full.screen_study)
    if screen is None or not screen.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        raise ValueError(
            f"No finished screen named {full.screen_study!r} in "
            f"{sqlite_ready(storage)}: run "
            "`fashion-sweeps screen` first, with the same `sweep=`, `sweep.name` and data "
            "set as this full stage."
        )
    wait_for_screen(screen)
    winners = top_k(screen, int(full.top_k))
    return winners, [full_run_params(w.params, fixed, full, compose) for w in winners]


def wait_for_screen(screen: optuna.Study) -> None:
    """Return once no live worker trains a condition of `screen`: its winners are those of the
    whole screen (a worker done with its share had trained the best of a partial one). A worker
    that died stops counting once its heartbeat is stale (study.py)."""
    busy = others_active(screen)
    if busy:
        log.info(
            "Waiting for %d screen condition(s) other workers are training: the full stage "
            "trains the winners of the whole screen.",
            busy,
        )
    while busy:
        interrupts.check()
        time.sleep(SCREEN_POLL_S)
        busy = others_active(screen)


def full_run_params(
    params: dict[str, Any], fixed: list[str], full: DictConfig, compose: Compose
) -> dict[str, Any]:
    """A winner's overrides for its full run: as screened, or fine-tuned when `full.freeze` is
    set (false: every block, N: all but the N leading blocks) with its learning rate times
    `full.lr_scale`."""
    params = dict(params)
    freeze = full.get("freeze")
    if freeze is not None:
        params["backbone.freeze"] = str(freeze).lower()
    scale = float(full.get("lr_scale") or 1.0)
    if scale != 1.0:
        cfg = compose([*fixed, *override_lines(params)])
        params["optimizer.lr"] = f"{float(cfg.optimizer.lr) * scale:.6g}"
    return params
