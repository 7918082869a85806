"""The sweeps of a sweep recipe (one with `sweep.name`, run by `fashion-sweeps sweep`): each sweep
name whose condition runs are tagged `recipe=<name>`, newest first, with its champion as
`fashion-sweeps report` chooses it (sweeps/report.py: champion), how many conditions its screen
finished, how long it took and what its command line changed.

A condition run records the `fashion-sweeps train` command of its job (sweeps/jobs.py): the
sweep's own overrides, then `sweep.stage=`, the sweep's name and the condition. Those overrides
that change what the sweep finds (catalogue.py: same_sweep) set a sweep apart from the recipe as
written, as a train run's command does (runs.py: changed_settings). Runs made with an earlier
version of the recipe's file are not told apart: a sweep's params vary with its conditions.
"""

from __future__ import annotations

import logging
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from fashion_sweeps.recipes.catalogue import Recipe, same_sweep
from fashion_sweeps.recipes.runs import RunRecord
from fashion_sweeps.sweeps.commands import DEFAULT_SWEEP
from fashion_sweeps.sweeps.stored_sweep import ReportError, champion, stage_parents, stage_runs
from fashion_sweeps.tracking.store import search_every_experiment

log = logging.getLogger(__name__)

COMPLETE = "complete"


@dataclass(frozen=True)
class SweepRecord:
    """What the page shows of one sweep run of a recipe."""

    name: str  # the sweep's name (tag `sweep`), `<sweep.name>.<id>` when its settings changed
    started: datetime  # its first stage's start
    wall_time_s: float | None  # first stage's start -> its last condition run's end
    screened: tuple[int, int] | None  # (finished, all) conditions of its screen; None: no screen
    champion: RunRecord | None  # its best model's run (report.py: champion)
    condition: str  # the champion's condition, `efficientnet_lite2/fc/sgd/0.1` ('—' none)
    status: str  # COMPLETE, or `incomplete: why`
    changes: str | None  # its overrides that change what it finds ('' none; None: not recorded)
    commands: Sequence[str] = field(default_factory=tuple)  # its stages' command lines

    @property
    def complete(self) -> bool:
        return self.status == COMPLETE


def sweep_arguments(command: str | None) -> list[str] | None:
    """The sweep's own overrides in a condition run's command: the words between `fashion-sweeps
    train` and `sweep.stage=`, where jobs.py puts the stage, the name and the condition (None:
    no command, or not a sweep's)."""
    try:
        words = shlex.split(command or "")[2:]
    except ValueError:
        return None
    stage = next((i for i, w in enumerate(words) if w.startswith("sweep.stage=")), None)
    return None if stage is None else words[:stage]


def sweep_changes(arguments: Iterable[str], recipe: Recipe) -> str:
    """The overrides among a sweep's `arguments` that change what the recipe finds; the option
    the stages choose by default and the recipe's own single-valued sweep params are as written."""
    written = {f"sweep={DEFAULT_SWEEP}"} | {f"{k}={v}" for k, v in recipe.sweep_params.items()}
    return shlex.join(w for w in arguments if w not in written and not same_sweep(w))


def _commands(arguments: Mapping[str, list[str]]) -> list[str]:
    """`fashion-sweeps sweep ARGS` when both stages ran with the same arguments, else one line
    per stage; the default sweep option left out (the stages add it)."""
    shown = {s: [w for w in a if w != f"sweep={DEFAULT_SWEEP}"] for s, a in arguments.items()}
    if len(shown) == 2 and shown["screen"] == shown["full"]:
        shown = {"sweep": shown["screen"]}
    return [shlex.join(["fashion-sweeps", stage, *words]) for stage, words in shown.items()]


def _status(parents: Mapping[str, Run], best_stage: str, best: Run | None) -> str:
    """COMPLETE: both stages ended and a full run finished; else what is missing."""
    for stage in ("screen", "full"):
        if stage not in parents:
            return f"incomplete: no {stage} stage"
    for stage, parent in parents.items():
        if parent.info.status != "FINISHED":
            state = "unfinished" if parent.info.status == "RUNNING" else parent.info.status.lower()
            return f"incomplete: {stage} stage {state}"
    if best is None or best_stage != "full":
        return "incomplete: no full run finished"
    return COMPLETE


def _wall_time(started_ms: int, runs: Iterable[Run]) -> float | None:
    """Seconds from the first stage's start to the end of the last condition run. Not to the
    stage parents' end: a later invocation that finds nothing left to train ends them again."""
    ends = [r.info.end_time for r in runs if r.info.end_time]
    return (max(ends) - started_ms) / 1000 if ends else None


def read_sweep(client: MlflowClient, name: str, recipe: Recipe) -> SweepRecord | None:
    """The sweep named `name` from its stage parents and their runs (None: no parent left)."""
    try:
        parents = stage_parents(client, name)
    except ReportError:
        log.warning("Sweep %r has condition runs but no stage parent run: left out.", name)
        return None
    runs = {stage: stage_runs(client, parent) for stage, parent in parents.items()}
    best_stage, best = champion(runs)
    arguments = _stage_arguments(runs)
    words = list(dict.fromkeys(w for a in arguments.values() for w in a))
    screen = runs.get("screen")
    started_ms = min(p.info.start_time for p in parents.values())
    return SweepRecord(
        name=name,
        started=datetime.fromtimestamp(started_ms / 1000),
        wall_time_s=_wall_time(started_ms, (r for stage in runs.values() for r in stage)),
        screened=None
        if screen is None
        else (sum(r.data.tags.get("status") == "finished" for r in screen), len(screen)),
        champion=None if best is None else RunRecord.from_run(best),
        condition="—" if best is None else best.data.tags.get("condition", best.info.run_name),
        status=_status(parents, best_stage, best),
        changes=sweep_changes(words, recipe) if arguments else None,
        commands=tuple(_commands(arguments)),
    )


def _stage_arguments(runs: Mapping[str, Sequence[Run]]) -> dict[str, list[str]]:
    """Each stage's own overrides, from the first of its runs that recorded a command."""
    found = {}
    for stage, of_stage in runs.items():
        commands = (sweep_arguments(r.data.tags.get("command")) for r in of_stage)
        arguments = next((a for a in commands if a is not None), None)
        if arguments is not None:
            found[stage] = arguments
    return found


def recipe_sweeps(client: MlflowClient, recipe: Recipe) -> list[SweepRecord]:
    """Every sweep whose condition runs are tagged `recipe=<name>`, newest first."""
    runs = search_every_experiment(client, f"tags.recipe = '{recipe.name}'", [])
    names = {
        r.data.tags["sweep"]
        for r in runs
        if "sweep" in r.data.tags and "stage" in r.data.tags and "mlflow.parentRunId" in r.data.tags
    }
    sweeps = [s for name in names if (s := read_sweep(client, name, recipe)) is not None]
    return sorted(sweeps, key=lambda s: s.started, reverse=True)


def counted_sweep(sweeps: Iterable[SweepRecord]) -> SweepRecord | None:
    """The sweep whose champion stands for the recipe: the latest complete one as written."""
    return next((s for s in sweeps if s.complete and s.changes == ""), None)


def counted_champion(sweeps: Iterable[SweepRecord]) -> RunRecord | None:
    """The run that stands for a sweep recipe: the champion of its counted sweep."""
    counted = counted_sweep(sweeps)
    return counted.champion if counted else None
