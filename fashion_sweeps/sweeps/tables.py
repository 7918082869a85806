"""The stage tables: the screen's ranking (the 2019 report's top-10 columns) and the full runs'
final comparison, built from the stage's child runs, saved as CSV and Markdown, logged to the
parent run and printed. A condition's columns are named as the config names them (backbone,
head, optimizer, lr, sampler), as are the runs' tags.

Train and validation figures are those of each run's best epoch (lowest val_loss, the checkpoint
the run keeps and tests), so a row describes one model.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

import pandas as pd
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from fashion_sweeps import markdown
from fashion_sweeps.config import Condition
from fashion_sweeps.sweeps.stage_run import children, latest_per_condition
from fashion_sweeps.sweeps.stored_sweep import best_run
from fashion_sweeps.tracking.metric_names import time_metric
from fashion_sweeps.tracking.runs import TrackedRun, metric_curve

CONDITION_COLUMNS = list(Condition.PARTS)
STATUS_ORDER = {"finished": 0, "diverged": 1, "failed": 2, "interrupted": 3}


def best_epoch_metrics(client: MlflowClient, run: Run, names: Iterable[str]) -> dict[str, float]:
    """Metric values logged at the step of the run's lowest val_loss (NaN where absent)."""
    finite = [
        m for m in metric_curve(client, run.info.run_id, "val_loss") if math.isfinite(m.value)
    ]
    if not finite:
        return {name: math.nan for name in names}
    best = min(finite, key=lambda m: (m.value, m.step))
    values = {"val_loss": best.value}
    for name in names:
        if name == "val_loss":
            continue
        at_step = [m for m in metric_curve(client, run.info.run_id, name) if m.step <= best.step]
        values[name] = max(at_step, key=lambda m: m.step).value if at_step else math.nan
    return values


def _ordered(rows: list[dict[str, object]], columns: list[str]) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    if frame.empty:
        return pd.DataFrame(columns=["rank", *columns])
    frame["_order"] = frame["status"].map(STATUS_ORDER).fillna(len(STATUS_ORDER))
    frame = frame.sort_values(["_order", "best_val_loss"], na_position="last", kind="stable")
    frame.insert(0, "rank", range(1, len(frame) + 1))
    if (frame["sampler"] == "none").all():
        columns = [c for c in columns if c != "sampler"]
    return frame[["rank", *columns]].reset_index(drop=True)


BEST_EPOCH = ("best_train_loss", "best_val_loss", "best_train_acc", "best_val_acc")
TESTED = ("test_loss", "test_acc", "test_f1_weighted")


def best_epoch_values(client: MlflowClient, run: Run) -> dict[str, float]:
    """The run's `BEST_EPOCH` metrics as it logged them; for runs logged before those metrics
    (and diverged ones), read off its curves at its lowest val_loss."""
    logged = run.data.metrics
    if all(name in logged for name in BEST_EPOCH):
        return {name: logged[name] for name in BEST_EPOCH}
    names = [name.removeprefix("best_") for name in BEST_EPOCH]
    values = best_epoch_metrics(client, run, names)
    return {f"best_{name}": values[name] for name in names}


def ranking_table(client: MlflowClient, runs: Iterable[Run]) -> pd.DataFrame:
    """The screen's ranking: finished conditions by best_val_loss, then diverged and failed ones;
    columns named as the runs' MLflow metrics."""
    rows = [
        {
            **Condition.from_tags(run.data.tags).cells(),
            **best_epoch_values(client, run),
            "status": run.data.tags.get("status", run.info.status.lower()),
            "run_id": run.info.run_id,
        }
        for run in runs
    ]
    columns = [*CONDITION_COLUMNS, "best_val_loss", "best_train_loss", "best_val_acc"]
    columns += ["best_train_acc", "status", "run_id"]
    return _ordered(rows, columns)


def comparison_table(client: MlflowClient, runs: Iterable[Run]) -> pd.DataFrame:
    """The full runs side by side: train/val (best epoch) and test loss and accuracy, test
    weighted F1; columns named as the runs' MLflow metrics."""
    rows = []
    for run in runs:
        logged = run.data.metrics
        rows.append(
            {
                **Condition.from_tags(run.data.tags).cells(),
                **best_epoch_values(client, run),
                **{k: logged.get(k, math.nan) for k in TESTED},
                "best_epoch": logged.get("best_epoch", math.nan),  # from 1, as logged
                "epochs_run": logged.get("epochs_run", math.nan),
                "status": run.data.tags.get("status", run.info.status.lower()),
                "run_id": run.info.run_id,
            }
        )
    columns = [*CONDITION_COLUMNS, "best_train_loss", "best_val_loss", "test_loss"]
    columns += ["best_train_acc", "best_val_acc", "test_acc", "test_f1_weighted"]
    columns += ["best_epoch", "epochs_run", "status", "run_id"]
    return _ordered(rows, columns)


def publish(table: pd.DataFrame, name: str, title: str, parent: TrackedRun, folder: Path) -> str:
    """Write `<name>.csv` and `<name>.md` into the stage's folder and the parent run; return the
    Markdown (title included) for the console."""
    text = f"## {title}\n\n{markdown.frame_table(table)}\n"
    folder.mkdir(parents=True, exist_ok=True)
    table.to_csv(folder / f"{name}.csv", index=False)
    (folder / f"{name}.md").write_text(text)
    parent.log_file(folder / f"{name}.csv")
    parent.log_file(folder / f"{name}.md")
    return text


def stage_result(counts: dict[str, int], best: Run | None) -> dict[str, float]:
    """A stage's result as its parent's metrics: conditions finished and failed (diverged or
    refused included), and the best condition's val_loss, test accuracy and weighted F1."""
    finished = counts.get("finished", 0)
    result = {"conditions_finished": finished, "conditions_failed": sum(counts.values()) - finished}
    if best is not None:
        metrics = best.data.metrics
        keys = ("best_val_loss", "test_acc", "test_f1_weighted")
        result.update({key: metrics[key] for key in keys if key in metrics})
    return result


def publish_stage(
    parent: TrackedRun, stage: str, name: str, winners: list[str], folder: Path, seconds: float
) -> None:
    """The stage's table from the latest run of each condition: the screen's ranking, or the
    comparison of the full runs of the `winners` (their conditions). Published (`publish`) and
    printed; its counts by status become the parent's tags."""
    runs = latest_per_condition(children(parent))
    if stage == "screen":
        table = ranking_table(parent.client, runs.values())
        title = f"Screen ranking: sweep {name} (best epoch of each condition)"
        text = publish(table, "ranking", title, parent, folder)
    else:
        wanted = set(winners)
        chosen = [run for key, run in runs.items() if key in wanted]
        table = comparison_table(parent.client, chosen)
        title = f"Full runs: sweep {name}, top {len(winners)} of the screen"
        text = publish(table, "comparison", title, parent, folder)
    counts = table["status"].value_counts().to_dict() if len(table) else {}
    parent.set_tags({"conditions": len(table), **{f"n_{k}": v for k, v in counts.items()}})
    shown = list(runs.values()) if stage == "screen" else chosen
    best = best_run(shown)
    if best is not None:
        parent.set_tags({"best_condition": best.data.tags.get("condition", "")})
    # One point per invocation (a resumed stage adds one), numbered from 1.
    step = len(parent.client.get_metric_history(parent.run_id, time_metric("last_invocation_s")))
    parent.log_metrics(stage_result(counts, best), step=step + 1)
    parent.log_times({"last_invocation_s": seconds}, step=step + 1)
    print(f"\n{text}\n(also in {folder} and the MLflow run {parent.run_id})\n", flush=True)
