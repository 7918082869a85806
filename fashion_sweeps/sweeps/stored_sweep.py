"""A sweep as its MLflow runs: the stage parents, each stage's latest runs, the champion.

The report and the results page read sweeps through these, so that both show the same champion.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import urlparse, urlunparse

from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from fashion_sweeps.errors import UserError
from fashion_sweeps.sweeps.stage_run import STAGE_KIND, children, latest_per_condition
from fashion_sweeps.tracking.runs import TrackedRun
from fashion_sweeps.tracking.store import search_every_experiment


class ReportError(UserError, RuntimeError):
    """The report cannot be built: the message says why and what to do."""


def latest_sweep(client: MlflowClient) -> str:
    """The sweep of the most recently started stage run: what `make sweep` has just run."""
    runs = search_every_experiment(
        client, f"tags.run_kind = '{STAGE_KIND}'", ["attributes.start_time DESC"], max_results=1
    )
    if not runs or "sweep" not in runs[0].data.tags:
        raise ReportError(
            f"The MLflow store {client.tracking_uri} holds no sweep yet: run "
            "`fashion-sweeps sweep` (or `make sweep`) first, or give --tracking-uri."
        )
    return runs[0].data.tags["sweep"]


def stage_parents(client: MlflowClient, sweep: str) -> dict[str, Run]:
    """The sweep's stage parent runs by stage (the latest one where a stage has several)."""
    runs = search_every_experiment(
        client,
        f"tags.run_kind = '{STAGE_KIND}' and tags.sweep = '{sweep}'",
        ["attributes.start_time ASC"],
    )
    parents = {run.data.tags.get("stage"): run for run in runs}
    if not parents:
        stages = search_every_experiment(client, f"tags.run_kind = '{STAGE_KIND}'", [])
        known = sorted({r.data.tags["sweep"] for r in stages if "sweep" in r.data.tags})
        raise ReportError(
            f"No sweep named {sweep!r} in the MLflow store {client.tracking_uri}. "
            + (
                f"Sweeps there: {', '.join(known)}."
                if known
                else "It holds no sweep yet: run `fashion-sweeps sweep` (or `make sweep`) first."
            )
            + " Use --tracking-uri if the sweep was tracked elsewhere."
        )
    return parents


def stage_runs(client: MlflowClient, parent: Run) -> list[Run]:
    """The stage's child runs, the latest attempt of each condition."""
    tracked = TrackedRun(client, parent.info.run_id, parent.info.experiment_id, client.tracking_uri)
    return list(latest_per_condition(children(tracked)).values())


def best_run(runs: Sequence[Run]) -> Run | None:
    """The finished run with the lowest best val_loss (selected on validation, never on test)."""
    finished = [
        r
        for r in runs
        if r.data.tags.get("status") == "finished"
        and math.isfinite(r.data.metrics.get("best_val_loss", math.nan))
    ]
    return min(finished, key=lambda r: r.data.metrics["best_val_loss"], default=None)


def champion(runs: Mapping[str, Sequence[Run]]) -> tuple[str, Run | None]:
    """The sweep's best model and its stage, from its runs by stage: the best full run, else
    (no full run finished yet) the best screen run. The results page shows the same one."""
    stage = "full" if best_run(runs.get("full", [])) else "screen"
    return stage, best_run(runs.get(stage, []))


def artifact_bytes(client: MlflowClient, run_id: str, path: str) -> bytes | None:
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = client.download_artifacts(run_id, path, tmp)
        except Exception:  # absent artifacts raise store-specific errors
            return None
        return Path(local).read_bytes()


LOCAL_UI = "http://127.0.0.1:5000"  # `make ui` over a local store


def ui_url(tracking_uri: str) -> str:
    """The MLflow UI of a store: a tracking server serves its own (its address, credentials
    left out); a local store's is `make ui`'s."""
    parsed = urlparse(tracking_uri)
    if parsed.scheme not in ("http", "https"):
        return LOCAL_UI
    host = parsed.hostname or ""
    netloc = f"{host}:{parsed.port}" if parsed.port else host
    return urlunparse((parsed.scheme, netloc, parsed.path.rstrip("/"), "", "", ""))
