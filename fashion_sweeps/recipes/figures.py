"""How the results page writes a recipe's figures (page.py, sweep_page.py), and how they compare
with the study's and the target: one judgement for the mean of a train recipe's seeds and for a
sweep's champion."""

from __future__ import annotations

import math
from collections.abc import Mapping

from fashion_sweeps.recipes.catalogue import METRICS, Recipe
from fashion_sweeps.recipes.runs import EARLIER


def fmt(metric: str, value: float | None) -> str:
    """Accuracy in percent, F1 as a fraction, as the studies give them."""
    if value is None or not math.isfinite(value):
        return "—"
    return f"{value:.2%}" if metric == "test_acc" else f"{value:.4f}"


def fmt_figures(figures: Mapping[str, float], prefix: str = "") -> str:
    return ", ".join(f"{METRICS[k]} {prefix}{fmt(k, v)}" for k, v in figures.items()) or "—"


def fmt_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "—"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def verdict(target: Mapping[str, float], ours: Mapping[str, float] | None) -> str:
    """'yes' when `ours` reaches every target figure, else 'no'; '—' without a target or
    figures (None: nothing counted)."""
    if not target or ours is None:
        return "—"
    return "yes" if all(ours.get(k, math.nan) >= v for k, v in target.items()) else "no"


def target_line(target: Mapping[str, float], ours: Mapping[str, float], basis: str) -> str:
    """`Target met: **yes** (<basis>; test acc ≥ 81.00%: met (81.48%)).`"""
    checks = [
        f"{METRICS[k]} ≥ {fmt(k, v)}: "
        f"{'met' if ours.get(k, math.nan) >= v else 'not met'} ({fmt(k, ours.get(k))})"
        for k, v in target.items()
    ]
    return f"Target met: **{verdict(target, ours)}** ({basis}; {'; '.join(checks)})."


def comparison_lines(
    recipe: Recipe, ours: Mapping[str, float], label: str, basis: str
) -> list[str]:
    """`ours` (runs as written; `label`: what they are, `basis`: what was judged) against the
    study's figures and the target."""
    lines = []
    diffs = []
    for k, v in recipe.reported.items():
        if math.isfinite(ours.get(k, math.nan)):
            unit, scale = (" pt", 100) if k == "test_acc" else ("", 1)
            diffs.append(f"{METRICS[k]} {(ours[k] - v) * scale:+.2f}{unit}")
    if diffs:
        lines += ["", f"Ours ({label}) minus the study's: {', '.join(diffs)}."]
    if recipe.target:
        lines += ["", target_line(recipe.target, ours, basis)]
    return lines


def changes_cell(changes: str | None) -> str:
    """A run's changed settings as its table shows them."""
    if changes is None:
        return "not recorded (no command tag)"
    if changes == "":
        return "as written"
    if changes.startswith(EARLIER):
        return f"{EARLIER}`{changes.removeprefix(EARLIER)}`"
    return f"`{changes}`"
