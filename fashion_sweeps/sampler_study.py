"""The sampler study: one model trained once per sampler, compared side by side
(conf/sampler_study.yaml).

    fashion-sweeps samplers dataset=clothing dataset.root=../shared/data/clothing backbone=simple_cnn

Every sampler's config is composed (and so checked) before anything trains. The runs go one
after another in this process, so the decoded images are shared, and are MLflow children of one
parent run, which receives the table. A run that fails is recorded and the study goes on; the
table of an interrupted study keeps every run already finished.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf, open_dict

from fashion_sweeps import markdown
from fashion_sweeps.config import CONF_DIR, condition_key
from fashion_sweeps.console_log import STUDY_FORMAT, log_to_stderr
from fashion_sweeps.tracking.metric_names import time_metric
from fashion_sweeps.train import train

if TYPE_CHECKING:  # pandas and MLflow load with the study, not for `--help`
    import pandas as pd
    from mlflow.entities import Run

    from fashion_sweeps.tracking.runs import TrackedRun

log = logging.getLogger(__name__)

CONFIG_NAME = "sampler_study"
# Table column -> the child run's MLflow metric.
COLUMNS = {
    "test_acc": "test_acc",
    "f1_weighted": "test_f1_weighted",
    "f1_macro": "test_f1_macro",
    "worst_class_recall": "test_worst_class_recall",
    "balanced_acc": "test_balanced_acc",
    "images_seen": "train_images_seen",
    "epochs": "epochs_run",
    "wall_time_s": time_metric("wall_time_s"),
}


def compose_configs(overrides: Sequence[str]) -> tuple[DictConfig, dict[str, DictConfig]]:
    """The study's config and one run config per sampler (`sampler=<name>` added)."""
    with initialize_config_dir(str(CONF_DIR)):
        study = compose(CONFIG_NAME, overrides=list(overrides))
        runs = {}
        for name in study.study.samplers:
            cfg = compose(CONFIG_NAME, overrides=[*overrides, f"sampler={name}"])
            options = study.study.options.get(name) or {}
            chosen = {k: v for k, v in options.items() if v is not None}
            with open_dict(cfg):
                del cfg.study
            # Struct mode: an option the sampler does not have fails here, naming the key.
            cfg.sampler = OmegaConf.merge(cfg.sampler, chosen)
            runs[name] = cfg
    return study, runs


def study_table(runs: Sequence[Run], samplers: Sequence[str]) -> pd.DataFrame:
    """One row per sampler, in study order: the latest child run of each, its status and
    metrics (empty cells for a run that never reached the test)."""
    import pandas as pd

    latest: dict[str, Run] = {}
    for run in sorted(runs, key=lambda r: r.info.start_time):
        latest[run.data.tags.get("sampler", "")] = run
    rows = []
    for name in samplers:
        run = latest.get(name)
        row: dict[str, object] = {"sampler": name}
        if run is None:
            row["status"] = "not run"
        else:
            row["status"] = run.data.tags.get("status", run.info.status.lower())
            row.update({col: run.data.metrics.get(key) for col, key in COLUMNS.items()})
        rows.append(row)
    table = pd.DataFrame(rows, columns=["sampler", "status", *COLUMNS])
    for col in ("images_seen", "epochs"):
        table[col] = table[col].astype("Int64")
    return table


def format_table(table: pd.DataFrame) -> str:
    cells = table.astype(object).where(table.notna(), None)  # runs without a test: empty cells
    return markdown.frame_table(cells, ".4f", {"wall_time_s": ".1f"})


def _publish(parent: TrackedRun, table: pd.DataFrame, folder: Path, title: str) -> str:
    """Write the table (CSV, Markdown) to `folder` and the parent run; per-sampler metrics too."""
    import pandas as pd

    text = f"## {title}\n\n{format_table(table)}\n"
    folder.mkdir(parents=True, exist_ok=True)
    table.to_csv(folder / "sampler_study.csv", index=False)
    (folder / "sampler_study.md").write_text(text)
    parent.log_file(folder / "sampler_study.csv")
    parent.log_file(folder / "sampler_study.md")
    parent.log_metrics(
        {
            f"{row['sampler']}/{col}": row[col]
            for row in table.to_dict(orient="records")
            for col in COLUMNS
            if pd.notna(row.get(col))
        }
    )
    return text


def run_study(overrides: Sequence[str]) -> pd.DataFrame:
    """Train once per sampler as children of one parent MLflow run; return the table."""
    from fashion_sweeps.tracking.runs import TrackedRun

    study, configs = compose_configs(overrides)
    first = next(iter(configs.values()))
    experiment = first.tracking.experiment or first.dataset.name
    folder = Path(study.study.output_dir) / time.strftime("%Y-%m-%d_%H-%M-%S")
    title = f"Sampler study: {condition_key(first).rsplit('/', 1)[0]} on {first.dataset.name}"
    parent = TrackedRun.start(
        first.tracking, experiment, run_name="sampler_study", tags={"kind": "sampler_study"}
    )
    parent.log_params(
        {
            "samplers": ",".join(configs),
            "dataset": first.dataset.name,
            "image_size": first.dataset.image_size,
            "max_epochs": first.trainer.max_epochs,
            "condition": condition_key(first),
            "overrides": " ".join(overrides),
        }
    )
    parent.log_text(OmegaConf.to_yaml(study, resolve=True), "config.yaml")
    status = "FINISHED"
    try:
        for name, cfg in configs.items():
            with open_dict(cfg):
                cfg.tracking.parent_run_id = parent.run_id
                cfg.tracking.run_name = condition_key(cfg)
                cfg.output_dir = str(folder / name)
            log.info("Sampler study: training with sampler %s", name)
            try:
                train(cfg)
            except Exception as err:  # recorded FAILED by train(); the other samplers still run
                log.error(
                    "Sampler %s failed (%s: %s); the study goes on.", name, type(err).__name__, err
                )
    except BaseException:
        status = "KILLED"
        raise
    finally:
        children = parent.client.search_runs(
            [parent.experiment_id], f"tags.mlflow.parentRunId = '{parent.run_id}'"
        )
        table = study_table(children, list(configs))
        text = _publish(parent, table, folder, title)
        print(text, flush=True)  # the user-facing result
        log.info("Sampler study table written to %s and MLflow run %s", folder, parent.run_id)
        parent.end(status)
    return table


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    log_to_stderr(STUDY_FORMAT)
    try:
        run_study(args)
    except HydraException as err:
        message = str(err).split("\nConfig search path:")[0].strip()  # the path is noise here
        print(f"fashion-sweeps samplers: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
