"""The screen bench's arithmetic, on per-trial records (plain dicts, see `screen.trial_record`):
the uncached conditions to sample, the uncached screen's wall time extrapolated from them, the
cached screen's floor, the teardown figures and the rankings' comparison.

A trial record holds `condition`, `backbone`, `status`, `wall_s` (its MLflow run, start to end)
and the metrics the run logged (`startup_s`, `teardown_s`, `image_cache_s`, `feature_cache_s`),
absent ones as None. Pure functions: tests/test_bench.py checks them on hand-built records.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Sequence
from typing import Any

Trial = dict[str, Any]
# Per-trial teardown of a screen trial (which logs no model) should stay under this.
TEARDOWN_LIMIT_S = 0.5


def sample_grid(
    heads: Sequence[str], optimizers: Sequence[str], lrs: Sequence[str], per_backbone: int
) -> tuple[list[str], list[str], list[str]]:
    """The sub-grid of `per_backbone` conditions made of the first values of each list (the
    learning rates vary first, then the optimizers, then the heads), so that one screen process
    runs the sample; 0 or the whole grid's size: the whole grid."""
    if per_backbone == 0:
        return list(heads), list(optimizers), list(lrs)
    # (heads, optimizers, lrs) taken, fewest heads first, then fewest optimizers.
    shapes = itertools.product(*(range(1, len(v) + 1) for v in (heads, optimizers, lrs)))
    sizes = {}
    for h, o, n in shapes:
        sizes.setdefault(h * o * n, (h, o, n))
    if per_backbone not in sizes:
        raise ValueError(
            f"--uncached-conditions {per_backbone}: the sample is a sub-grid of the first heads, "
            f"optimizers and learning rates; per backbone it can hold {sorted(sizes)} conditions"
        )
    h, o, n = sizes[per_backbone]
    return list(heads[:h]), list(optimizers[:o]), list(lrs[:n])


def by_backbone(trials: Sequence[Trial]) -> dict[str, list[Trial]]:
    """The trials grouped by backbone, in order of first appearance."""
    groups: dict[str, list[Trial]] = {}
    for trial in trials:
        groups.setdefault(trial["backbone"], []).append(trial)
    return groups


def _value(trial: Trial, name: str) -> float:
    value = trial.get(name)
    return 0.0 if value is None or not math.isfinite(value) else float(value)


def condition_s(trial: Trial) -> float:
    """What one more condition like this trial costs: its wall time without the photos' decode
    (`image_cache_s`), which the screen pays once, in its first trial."""
    return max(_value(trial, "wall_s") - _value(trial, "image_cache_s"), 0.0)


def extrapolate(
    measured_s: float, sampled: Sequence[Trial], conditions: dict[str, int], gap_s: float
) -> dict[str, Any]:
    """The uncached screen's wall time on the whole grid from a run of a sample of it: the
    measured wall plus, per backbone, each condition not run at its sampled conditions' mean
    time (`condition_s`) and the launcher's gap between trials (`gap_s`, NaN counts 0).
    `conditions`: the grid's conditions per backbone. Equal to `measured_s` when nothing is
    missing."""
    gap = gap_s if math.isfinite(gap_s) else 0.0
    groups = by_backbone(sampled)
    per_backbone = {}
    total = measured_s
    for backbone, grid in conditions.items():
        runs = groups.get(backbone, [])
        if not runs:
            raise ValueError(f"no sampled uncached trial of backbone {backbone}")
        per_condition = statistics.mean(condition_s(t) for t in runs)
        missing = max(grid - len(runs), 0)
        total += missing * (per_condition + gap)
        per_backbone[backbone] = {
            "measured": len(runs),
            "conditions": grid,
            "per_condition_s": per_condition,
            # A diverged (or failed) condition stops early: a time per condition too short.
            "unfinished": [t["condition"] for t in runs if t.get("status") != "finished"],
        }
    return {
        "measured_conditions": len(sampled),
        "conditions": sum(conditions.values()),
        "extrapolated": len(sampled) < sum(conditions.values()),
        "measured_s": measured_s,
        "total_s": total,
        "gap_s": gap,
        "per_backbone": per_backbone,
    }


def train_s(trial: Trial) -> float:
    """A trial's first -> last training step: its wall time minus `startup_s` and `teardown_s`.
    A diverged trial logs neither: its caches' time stands in for the start-up."""
    startup = trial.get("startup_s")
    if startup is None:
        startup = _value(trial, "image_cache_s") + _value(trial, "feature_cache_s")
    return max(_value(trial, "wall_s") - startup - _value(trial, "teardown_s"), 0.0)


def floor(cached: Sequence[Trial]) -> dict[str, Any]:
    """The least the cached screen can take: the photos decoded once (`image_cache_s` of the
    trials that decoded them, tag `image_cache` miss), per backbone one forward pass over them
    (its largest `feature_cache_s`: the trial that computed the features) and its conditions'
    head trainings (sum of `train_s`)."""
    per_backbone = {
        backbone: {
            "forward_s": max(_value(t, "feature_cache_s") for t in trials),
            "heads_s": sum(train_s(t) for t in trials),
            "trials": len(trials),
        }
        for backbone, trials in by_backbone(cached).items()
    }
    decode = sum(_value(t, "image_cache_s") for t in cached if t.get("image_cache") == "miss")
    total = decode + sum(b["forward_s"] + b["heads_s"] for b in per_backbone.values())
    return {"decode_s": decode, "per_backbone": per_backbone, "total_s": total}


def against_floor(cached_s: float, floor_s: float, trials: int) -> dict[str, float]:
    """The cached screen's wall time over its floor, and the rest spread over its trials."""
    return {
        "ratio": cached_s / floor_s if floor_s > 0 else math.nan,
        "overhead_s": cached_s - floor_s,
        "overhead_per_trial_s": (cached_s - floor_s) / trials if trials else math.nan,
    }


def teardown(trials: Sequence[Trial], limit: float = TEARDOWN_LIMIT_S) -> dict[str, Any]:
    """Median and max `teardown_s` (last training step -> run closed) over the trials that
    logged one, and whether every one of them stayed under `limit`."""
    values = [t["teardown_s"] for t in trials if t.get("teardown_s") is not None]
    if not values:
        return {"median_s": math.nan, "max_s": math.nan, "limit_s": limit, "under_limit": None}
    return {
        "median_s": statistics.median(values),
        "max_s": max(values),
        "limit_s": limit,
        "under_limit": max(values) < limit,
        "trials": len(values),
    }


def compare_rankings(
    uncached: Sequence[tuple[str, float]], cached: Sequence[tuple[str, float]]
) -> dict[str, Any]:
    """Both screens' rankings over the conditions both ran (all of them, or the uncached
    sample): the same order?, and the largest val_loss difference of a condition finite on
    both sides."""
    loss_u, loss_c = dict(uncached), dict(cached)
    common = set(loss_u) & set(loss_c)
    differences = [
        abs(loss_u[c] - loss_c[c])
        for c in common
        if math.isfinite(loss_u[c]) and math.isfinite(loss_c[c])
    ]
    return {
        "compared_conditions": len(common),
        "same_ranking": [c for c, _ in uncached if c in common]
        == [c for c, _ in cached if c in common],
        "max_val_loss_difference": max(differences, default=0.0),
    }


def summary(
    uncached_s: float,
    cached_s: float,
    uncached: Sequence[Trial],
    cached: Sequence[Trial],
    gap_s: float,
) -> dict[str, Any]:
    """The screen bench's figures from both processes' wall times and trial records (the cached
    screen ran the whole grid, the uncached one all of it or a sample; `gap_s`: the uncached
    launcher's gap between trials)."""
    grid = {backbone: len(trials) for backbone, trials in by_backbone(cached).items()}
    full = extrapolate(uncached_s, uncached, grid, gap_s)
    least = floor(cached)
    return {
        "conditions": len(cached),
        "conditions_uncached": len(uncached),
        # The whole grid's: measured, or extrapolated from the sample (then the ratio too).
        "uncached_s": full["total_s"],
        "uncached_measured_s": uncached_s,
        "extrapolated": full["extrapolated"],
        "uncached_extrapolation": full,
        "cached_s": cached_s,
        "ratio": full["total_s"] / cached_s,
        "floor": least,
        "cached_vs_floor": against_floor(cached_s, least["total_s"], len(cached)),
        "teardown_cached": teardown(cached),
    }
