"""Bench 1 and 4: the frozen-backbone screen with and without the feature cache, as users run it
(`fashion-sweeps screen`, one multirun process each), and the per-trial overhead in it.

The cached screen runs the whole grid, once per inference engine asked for (`inference.engine`:
the engine that computes the frozen features); the uncached one the whole grid or a sample of it
(`uncached_conditions` per backbone), whose wall time is then extrapolated to the grid
(screen_figures.py). Each screen starts from its own empty cache folder, so each decodes the
photos (and computes its features) once. The first engine's cached screen fills the single-screen
figures; `by_engine` holds every engine's side by side.
"""

from __future__ import annotations

import itertools
import logging
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mlflow.entities import Run

from benchmarks import screen_figures as figures
from fashion_sweeps.tracking.metric_names import time_metric
from fashion_sweeps.tracking.runs import store_client

log = logging.getLogger(__name__)


@dataclass
class ScreenSettings:
    """What both screens share: data, grid and where they write. `backbone` may be a comma
    list; `uncached_conditions`: per backbone, how many conditions the uncached screen runs
    (0: all); `engine`: the cached screen's `inference.engine` (None: the config's)."""

    root: Path
    work: Path
    image_size: int | str
    backbone: str
    epochs: int
    heads: str = "fc,batchnorm"
    optimizers: str = "adam,sgd"
    lrs: str = "0.1,0.01,0.001"
    uncached_conditions: int = 0
    engine: str | None = None

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{self.work / 'mlruns' / 'mlflow.db'}"

    def cache_dir(self, features: bool) -> Path:
        """Each side's own caches: neither finds the photos the other (or another bench)
        decoded; each engine's cached screen its own, so that each starts cold."""
        if not features:
            return self.work / "screen-cache-uncached"
        return self.work / (
            "screen-cache" if self.engine is None else f"screen-cache-{self.engine}"
        )

    def grid(self, features: bool) -> tuple[list[str], list[str], list[str]]:
        """Heads, optimizers and learning rates this side runs (per backbone)."""
        heads, optimizers, lrs = (v.split(",") for v in (self.heads, self.optimizers, self.lrs))
        if features:
            return heads, optimizers, lrs
        return figures.sample_grid(heads, optimizers, lrs, self.uncached_conditions)

    def overrides(self, name: str, features: bool) -> list[str]:
        heads, optimizers, lrs = self.grid(features)
        return [
            "dataset=clothing",
            f"dataset.root={self.root}",
            f"dataset.image_size={image_size_override(self.image_size)}",
            # The grid, narrowed from the command line as users do (conf/sweep/grid.yaml).
            f"backbone={self.backbone}",
            f"head={','.join(heads)}",
            f"optimizer={','.join(optimizers)}",
            f"optimizer.lr={','.join(lrs)}",
            "backbone.freeze=true",
            f"sweep.name={name}",
            f"sweep.screen.max_epochs={self.epochs}",
            f"hydra.sweeper.storage=sqlite:///{self.work / 'optuna.db'}",
            f"hydra.sweep.dir={self.work / 'multirun' / name}",
            f"tracking.dir={self.work / 'mlruns'}",
            "tracking.experiment=bench",
            f"cache.dir={self.cache_dir(features)}",
            f"cache.features={'true' if features else 'false'}",
            "trainer.progress=lines",
            # The engine of the frozen features (the uncached screen computes none).
            *([f"inference.engine={self.engine}"] if features and self.engine else []),
        ]


def image_size_override(size: int | str) -> str:
    """`dataset.image_size`'s value: pixels, or `native`: each backbone at its weights'
    resolution, as the clothing_screen recipe runs them (quoted: an interpolation)."""
    if size == "native":
        return "'${fashion_sweeps_native_resolution:${backbone._target_}}'"
    return str(size)


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
        return [r.data.metrics[key] for r in runs if (key := time_metric(name)) in r.data.metrics]

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


def trial_record(run: Run) -> figures.Trial:
    """What screen_figures.py reads of one trial's run."""
    metrics, tags = run.data.metrics, run.data.tags
    wall = (run.info.end_time - run.info.start_time) / 1000 if run.info.end_time else None
    return {
        "condition": tags.get("condition", run.info.run_name),
        "backbone": tags.get("backbone", "?"),
        "status": tags.get("status", "?"),
        "image_cache": tags.get("image_cache", "?"),
        "feature_cache": tags.get("feature_cache", "?"),
        "wall_s": wall,
        **{
            name: metrics.get(time_metric(name))
            for name in ("startup_s", "teardown_s", "image_cache_s", "feature_cache_s")
        },
    }


def cached_name(engine: str | None) -> str:
    """The sweep name of the cached screen of `engine` (None: the config's engine)."""
    return "bench-cached" if engine is None else f"bench-cached-{engine}"


def engines_ran(runs: list[Run]) -> list[str]:
    """The engines (and precisions) the trials recorded computing their features with."""
    return sorted(
        {
            f"{r.data.params.get('inference_engine', '?')} "
            f"{r.data.params.get('inference_precision', '?')}"
            for r in runs
        }
    )


def forward_s(records: list[figures.Trial]) -> dict[str, float]:
    """Per backbone, the features' forward pass (the trial that computed them)."""
    least = figures.floor(records)
    return {backbone: b["forward_s"] for backbone, b in least["per_backbone"].items()}


def engine_figures(
    cached_s: float,
    rank_u: list[tuple[str, float]],
    rank_c: list[tuple[str, float]],
    rank_first: list[tuple[str, float]],
    cached: list[Run],
    records: list[figures.Trial],
) -> dict[str, Any]:
    """One engine's cached screen beside the uncached one (rankings) and the first engine's."""
    versus_first = figures.compare_rankings(rank_first, rank_c)
    return {
        "cached_s": cached_s,
        "ran": engines_ran(cached),
        "forward_s": forward_s(records),
        "floor_s": figures.floor(records)["total_s"],
        "trials": len(records),
        **figures.compare_rankings(rank_u, rank_c),
        "same_ranking_as_first": versus_first["same_ranking"],
        "max_val_loss_difference_to_first": versus_first["max_val_loss_difference"],
        "ranking": rank_c,
    }


def screen_bench(
    settings: ScreenSettings, engines: Sequence[str | None] | None = None
) -> dict[str, Any]:
    """The uncached screen and the cached one per engine of `engines` (default: the settings'
    own), side by side: wall times (the uncached one extrapolated to the whole grid when it ran
    a sample), ratio, rankings, the first engine's cached screen against its floor, per-trial
    figures, and `by_engine`: each engine's cached screen."""
    engines = list(engines or [settings.engine])
    uncached_s = run_screen(settings, "bench-uncached", features=False)
    uncached = screen_runs(settings, "bench-uncached")
    rank_u = ranking(uncached)
    by_engine: dict[str, dict[str, Any]] = {}
    first: dict[str, Any] = {}
    for engine in engines:
        side = replace(settings, engine=engine)
        before = [round(v, 2) for v in os.getloadavg()]
        try:
            cached_s = run_screen(side, cached_name(engine), features=True)
        except RuntimeError as err:
            if not first:  # the single-screen figures need the first one
                raise
            log.error("%s", err)  # the others' figures stand without it
            by_engine[str(engine)] = {"error": str(err).splitlines()[0]}
            continue
        after = [round(v, 2) for v in os.getloadavg()]
        cached = screen_runs(side, cached_name(engine))
        records = [trial_record(r) for r in cached]
        rank_c = ranking(cached)
        if not first:
            first = {"cached_s": cached_s, "runs": cached, "records": records, "ranking": rank_c}
        by_engine[str(engine or "config")] = {
            **engine_figures(cached_s, rank_u, rank_c, first["ranking"], cached, records),
            "x_first": first["cached_s"] / cached_s,
            "load_average_before": before,
            "load_average_after": after,
        }
    trials_u, trials_c = per_trial(uncached), per_trial(first["runs"])
    records_u, records_c = [trial_record(r) for r in uncached], first["records"]
    rank_c = first["ranking"]
    summary = figures.summary(
        uncached_s, first["cached_s"], records_u, records_c, trials_u["between_trials_s"]
    )
    for entry in by_engine.values():  # the whole grid's uncached time (extrapolated or not)
        if "cached_s" in entry:
            entry["ratio"] = summary["uncached_s"] / entry["cached_s"]
    return {
        **summary,
        **figures.compare_rankings(rank_u, rank_c),
        "engine": str(engines[0] or "config"),
        "by_engine": by_engine,
        "ranking_cached": rank_c,
        "ranking_uncached": rank_u,
        "trials_uncached": trials_u,
        "trials_cached": trials_c,
        "trial_records": {"uncached": records_u, "cached": records_c},
    }
