"""The runs of a recipe: the MLflow runs tagged `recipe=<name>` (tracking/job_run.py tags every
run of a recipe so, with the `machine` it ran on and the `command` that runs it again), grouped
by what their command changed.

Children of a sweep stage or of a sampler study are trials, not runs of the recipe, and are left
out. Per seed the latest finished run counts; failed, diverged, killed and unfinished runs are
listed and never averaged. Runs whose command changes a training setting (anything but the seed,
where the data is, tracking, outputs and where the run executes) are grouped by those changes,
as are runs made with an earlier version of the recipe's file, and never compared with the
target.
"""

from __future__ import annotations

import math
import shlex
import statistics
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT

from fashion_sweeps.recipes.catalogue import same_recipe
from fashion_sweeps.tracking.metric_names import time_metric
from fashion_sweeps.tracking.store import search_every_experiment

# How a group of runs launched as written but made with an earlier version of the file is named.
EARLIER = "an earlier version of the recipe: "


@dataclass(frozen=True)
class RunRecord:
    """What the page shows of one MLflow run."""

    run_id: str
    seed: str
    status: str  # finished | diverged | failed | killed | running
    started: datetime
    metrics: Mapping[str, float]
    machine: str
    command: str | None
    reason: str = ""
    params: Mapping[str, str] = field(default_factory=dict)
    commit: str = ""  # the code's git commit when the run was made (MLflow's tag), or ""

    @property
    def finished(self) -> bool:
        return self.status == "finished"

    @classmethod
    def from_run(cls, run: Run) -> RunRecord:
        tags, info = run.data.tags, run.info
        tag = tags.get("status")
        if info.status == "FINISHED" and tag in (None, "finished"):
            status = "finished"
        elif tag == "diverged":
            status = "diverged"
        elif info.status in ("FAILED", "KILLED"):
            status = info.status.lower()
        else:  # RUNNING, SCHEDULED: in progress, or a process that died without closing it
            status = "running"
        reason = " ".join(tags.get("failure_reason", "").split())
        return cls(
            run_id=info.run_id,
            seed=run.data.params.get("seed", "?"),
            status=status,
            started=datetime.fromtimestamp(info.start_time / 1000),
            metrics=_with_time_prefix(run.data.metrics),
            machine=tags.get("machine") or (f"host {tags['host']}" if "host" in tags else ""),
            command=tags.get("command"),
            reason=reason[:160] + ("…" if len(reason) > 160 else ""),
            params=dict(run.data.params),
            commit=tags.get(MLFLOW_GIT_COMMIT, ""),
        )


def _with_time_prefix(metrics: Mapping[str, float]) -> dict[str, float]:
    """The run's metrics, timings under `time/` also for runs logged before that prefix."""
    earlier = {time_metric(k): v for k, v in metrics.items() if k in ("wall_time_s",)}
    return {**earlier, **metrics}


def recipe_runs(client: MlflowClient, name: str) -> list[RunRecord]:
    """The runs tagged `recipe=<name>` in every experiment of the store, but children of a sweep
    stage or a sampler study (tagged with a parent)."""
    runs = search_every_experiment(client, f"tags.recipe = '{name}'", ["attributes.start_time ASC"])
    return [
        RunRecord.from_run(r)
        for r in runs
        if "mlflow.parentRunId" not in r.data.tags and "stage" not in r.data.tags
    ]


def changed_settings(command: str | None) -> str | None:
    """The overrides of `fashion-sweeps train ...` that change what the recipe trains ('' none;
    None: the run recorded no command, so what it trained is not known from here)."""
    if not command:
        return None
    try:
        words = shlex.split(command)[2:]  # after `fashion-sweeps train`
    except ValueError:
        return None
    return shlex.join(w for w in words if not same_recipe(w))


@dataclass
class Group:
    """A recipe's runs with the same changed settings ('' as written, None not recorded)."""

    changes: str | None
    rows: list[RunRecord]  # the table: counted runs and runs that did not finish, by seed
    counted: list[RunRecord]  # the latest finished run of each seed
    superseded: int = 0  # earlier finished runs of a seed with a later one

    def mean(self, metric: str) -> float:
        values = [r.metrics.get(metric, math.nan) for r in self.counted]
        finite = [v for v in values if math.isfinite(v)]
        return statistics.fmean(finite) if finite else math.nan

    def std(self, metric: str) -> float:
        finite = [v for r in self.counted if math.isfinite(v := r.metrics.get(metric, math.nan))]
        return statistics.stdev(finite) if len(finite) > 1 else math.nan


def _seed_order(seed: str) -> tuple[int, float, str]:
    try:
        return (0, float(seed), seed)
    except ValueError:
        return (1, 0.0, seed)


def earlier_version(
    record: RunRecord, settings: Mapping[str, str], defaults: Mapping[str, str] | None = None
) -> str | None:
    """How a run launched as written differs from the recipe as it is now ('' it does not, None:
    no params to tell); the recipe file changed since. A key the run lacks counts only when the
    recipe sets it to other than its default (`defaults`; else null): options added later
    default to what runs did before them."""
    if not record.params or not settings:
        return None
    params, defaults = record.params, defaults or {}
    differing = [
        key
        for key, value in settings.items()
        if (params[key] != value if key in params else value != defaults.get(key, "None"))
    ]
    return " ".join(f"{key}={params.get(key, '(unset)')}" for key in differing)


def group_runs(
    records: Iterable[RunRecord],
    settings: Mapping[str, str] | None = None,
    defaults: Mapping[str, str] | None = None,
) -> list[Group]:
    """Runs grouped by changed settings (as written first, not recorded last); in each group the
    latest finished run of each seed counts, runs that did not finish are listed beside them.
    With the recipe's `settings` (and `defaults`, see earlier_version), runs of an earlier
    version of its file are a group apart."""
    by_changes: dict[str | None, list[RunRecord]] = {}
    for record in sorted(records, key=lambda r: r.started):
        changes = changed_settings(record.command)
        if changes == "" and (then := earlier_version(record, settings or {}, defaults)):
            changes = EARLIER + then
        by_changes.setdefault(changes, []).append(record)
    groups = []
    for changes, runs in by_changes.items():
        latest = {r.seed: r for r in runs if r.finished}  # runs are in start order
        counted = sorted(latest.values(), key=lambda r: _seed_order(r.seed))
        rows = [r for r in runs if not r.finished or latest[r.seed] is r]
        rows.sort(key=lambda r: (_seed_order(r.seed), r.started))
        superseded = sum(1 for r in runs if r.finished) - len(counted)
        groups.append(Group(changes, rows, counted, superseded))
    groups.sort(key=lambda g: (g.changes != "", g.changes is None))
    return groups


def commits_behind(commit: str) -> int | None:
    """How many commits this checkout's HEAD is ahead of `commit` (0: made by the code here);
    None when there is no checkout or it does not hold that commit."""
    from fashion_sweeps.config import CHECKOUT_DIR

    if not commit or CHECKOUT_DIR is None:
        return None
    try:
        done = subprocess.run(
            ["git", "-C", str(CHECKOUT_DIR), "rev-list", "--count", f"{commit}..HEAD"],
            capture_output=True, text=True, timeout=10, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    return int(done.stdout) if done.returncode == 0 and done.stdout.strip().isdigit() else None


def code_line(records: Iterable[RunRecord]) -> str:
    """Which code made `records`: each commit and how far behind this checkout's HEAD it is."""
    commits = list(dict.fromkeys(r.commit for r in records))
    if not commits:
        return ""
    parts = []
    for commit in commits:
        if not commit:
            parts.append("a run without a git commit")
            continue
        behind = commits_behind(commit)
        where = (
            "not in this checkout" if behind is None
            else "this checkout's HEAD" if behind == 0
            else f"{behind} commit{'s' if behind > 1 else ''} behind HEAD"
        )  # fmt: skip
        parts.append(f"`{commit[:8]}` ({where})")
    return "Code of the counted runs: " + ", ".join(parts) + "."
