"""Bench 1 and 4: the frozen-backbone screen with and without the feature cache, as users run it
(`fashion-sweeps screen`, one multirun process each), and the per-trial overhead in it."""

from __future__ import annotations

import itertools
import logging
import math
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.entities import Run

from fashion_sweeps.tracking.runs import store_client

log = logging.getLogger(__name__)


@dataclass
class ScreenSettings:
    """What both screens share: data, grid and where they write."""

    root: Path
    work: Path
    image_size: int
    backbone: str
    epochs: int
    heads: str = "fc,batchnorm"
    optimizers: str = "adam,sgd"
    lrs: str = "0.1,0.01,0.001"

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{self.work / 'mlruns' / 'mlflow.db'}"

    def overrides(self, name: str, features: bool) -> list[str]:
        return [
            "dataset=clothing",
            f"dataset.root={self.root}",
            f"dataset.image_size={self.image_size}",
            # The grid, narrowed from the command line as users do (conf/sweep/grid.yaml).
            f"backbone={self.backbone}",
            f"head={self.heads}",
            f"optimizer={self.optimizers}",
            f"optimizer.lr={self.lrs}",
            "backbone.freeze=true",
            f"sweep.name={name}",
            f"sweep.screen.max_epochs={self.epochs}",
            f"hydra.sweeper.storage=sqlite:///{self.work / 'optuna.db'}",
            f"hydra.sweep.dir={self.work / 'multirun' / name}",
            f"tracking.dir={self.work / 'mlruns'}",
            "tracking.experiment=bench",
            f"cache.dir={self.work / 'cache'}",
            f"cache.features={'true' if features else 'false'}",
            "trainer.progress=lines",
        ]


def run_screen(settings: ScreenSettings, name: str, features: bool) -> float:
    """Run one screen in its own process; its wall time in seconds."""
    command = [
        sys.executable,
        "-m",
        "fashion_sweeps.cli",
        "screen",
        *settings.overrides(name, features),
    ]
    log_file = settings.work / "logs" / f"{name}.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    log.info("Screen %s (feature cache %s): log in %s", name, "on" if features else "off", log_file)
    start = time.perf_counter()
    with log_file.open("w") as out:
        done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        tail = "\n".join(log_file.read_text().splitlines()[-25:])
        raise RuntimeError(
            f"The screen {name} failed (exit {done.returncode}); end of {log_file}:\n{tail}"
        )
    return seconds


def screen_runs(settings: ScreenSettings, name: str) -> list[Run]:
    """The screen's condition runs, oldest first."""
    client = store_client(settings.tracking_uri)
    experiment = client.get_experiment_by_name("bench")
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.sweep = '{name}' and tags.stage = 'screen'",
        order_by=["attributes.start_time ASC"],
        max_results=1000,
    )
    return [r for r in runs if "run_kind" not in r.data.tags]  # not the stage's parent run


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def per_trial(runs: list[Run]) -> dict[str, Any]:
    """Medians over the screen's trials: run start -> first training step, last step -> run
    closed, the gap between one run closing and the next starting (the launcher's share), and
    each trial's wall time. Times of MLflow runs are in milliseconds."""

    def metric(name: str) -> list[float]:
        return [r.data.metrics[name] for r in runs if name in r.data.metrics]

    gaps = [
        (after.info.start_time - before.info.end_time) / 1000
        for before, after in itertools.pairwise(runs)
        if before.info.end_time
    ]
    walls = [(r.info.end_time - r.info.start_time) / 1000 for r in runs if r.info.end_time]
    return {
        "trials": len(runs),
        "startup_s": _median(metric("startup_s")),
        "teardown_s": _median(metric("teardown_s")),
        "between_trials_s": _median(gaps),
        "trial_wall_s": _median(walls),
        "trials_wall_total_s": sum(walls),
        "feature_cache": sorted({r.data.tags.get("feature_cache", "?") for r in runs}),
        "feature_cache_s_max": max(metric("feature_cache_s"), default=float("nan")),
    }


def ranking(runs: list[Run]) -> list[tuple[str, float]]:
    """(condition, best val_loss) best first; diverged conditions (no val_loss) last."""
    scored = [
        (
            r.data.tags.get("condition", r.info.run_name),
            r.data.metrics.get("best_val_loss", float("inf")),
        )
        for r in runs
    ]
    return sorted(scored, key=lambda item: (item[1], item[0]))


def screen_bench(settings: ScreenSettings) -> dict[str, Any]:
    """Both screens, side by side: wall times, ratio, rankings and per-trial figures."""
    uncached_s = run_screen(settings, "bench-uncached", features=False)
    cached_s = run_screen(settings, "bench-cached", features=True)
    uncached, cached = (
        screen_runs(settings, "bench-uncached"),
        screen_runs(settings, "bench-cached"),
    )
    rank_u, rank_c = ranking(uncached), ranking(cached)
    return {
        "conditions": len(cached),
        "uncached_s": uncached_s,
        "cached_s": cached_s,
        "ratio": uncached_s / cached_s,
        "same_ranking": [c for c, _ in rank_u] == [c for c, _ in rank_c],
        # Per condition (pairs sorted by name), over conditions with a val_loss on both sides.
        "max_val_loss_difference": max(
            (
                abs(a - b)
                for (_, a), (_, b) in zip(sorted(rank_u), sorted(rank_c), strict=True)
                if math.isfinite(a) and math.isfinite(b)
            ),
            default=0.0,
        ),
        "ranking_cached": rank_c,
        "ranking_uncached": rank_u,
        "trials_uncached": per_trial(uncached),
        "trials_cached": per_trial(cached),
    }
