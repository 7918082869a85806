"""A sweep recipe on the results page (page.py): one row per sweep run (sweep_runs.py), newest
first, with its champion; the latest complete sweep as written stands for the recipe in the
summary and against the target."""

from __future__ import annotations

from collections.abc import Sequence

from fashion_sweeps import markdown
from fashion_sweeps.recipes.catalogue import METRICS, Recipe
from fashion_sweeps.recipes.figures import (
    changes_cell,
    comparison_lines,
    fmt,
    fmt_duration,
    fmt_figures,
    verdict,
)
from fashion_sweeps.recipes.sweep_runs import SweepRecord, counted_sweep

HEADER = ["sweep", "conditions screened", "champion", *METRICS.values()]
HEADER += ["wall time", "machine", "date", "status"]


def _row(sweep: SweepRecord) -> list[str]:
    best = sweep.champion
    return [
        sweep.name,
        "—" if sweep.screened is None else "/".join(map(str, sweep.screened)),
        sweep.condition,
        *(fmt(k, best.metrics.get(k) if best else None) for k in METRICS),
        fmt_duration(sweep.wall_time_s),
        (best.machine if best else "") or "—",
        sweep.started.strftime("%Y-%m-%d %H:%M"),
        sweep.status,
    ]


def _how(recipe: Recipe) -> str:
    return f"A sweep recipe: `make sweep EXPERIMENT={recipe.name} ROOT=PATH`"


def _counted_lines(recipe: Recipe, counted: SweepRecord) -> list[str]:
    """Which sweep counts, and why; its champion against the study and the target."""
    assert counted.champion is not None  # a complete sweep has a full run that finished
    lines = [
        "",
        f"Counted: the champion of sweep `{counted.name}`, the latest complete sweep whose command "
        "line changes no setting. Sweeps are told apart by their command line only, not by the "
        "recipe file they ran with: one that ran an earlier version of the file counts as "
        "written too (a sweep whose settings differ from those its name started with is named "
        "`<sweep.name>.<id>`).",
    ]
    ours = {k: counted.champion.metrics.get(k, float("nan")) for k in METRICS}
    return lines + comparison_lines(
        recipe, ours, "champion", f"the champion of sweep {counted.name}"
    )


def sweep_lines(recipe: Recipe, sweeps: Sequence[SweepRecord], why: str) -> list[str]:
    """The section of a sweep recipe after its facts; `why`: what it needs, as the page says."""
    if not sweeps:
        return [
            "",
            f"**Not run here** as the recipe is written{why}; no figure is given for it. "
            f"{_how(recipe)}; its trials are not listed here, its ranking and best model are in "
            f"`fashion-sweeps report {recipe.sweep}`.",
        ]
    lines = [
        "",
        f"{_how(recipe)}. One row per sweep run, newest first. Its champion is the best model "
        "`fashion-sweeps report SWEEP` shows and registers: the full run with the lowest "
        "validation loss (the screen's while no full run finished). Conditions screened: those "
        "of its screen that finished, of those it ran. Wall time: from the sweep's start to the "
        "end of its last condition run. Complete: both stages ended and a full run finished. "
        "Its trials, ranking and best model: `fashion-sweeps report SWEEP`.",
    ]
    written = [s for s in sweeps if s.changes == ""]
    counted = counted_sweep(sweeps)
    if counted is None:
        what = "No complete sweep here" if written else "Not run here"
        lines += ["", f"**{what}** as the recipe is written{why}; no figure is given for it."]
    if written:
        lines += ["", "### As written", "", *markdown.table(HEADER, map(_row, written))]
        if counted is not None:
            lines += _counted_lines(recipe, counted)
        commands = list(dict.fromkeys(c for s in written for c in s.commands))
        if commands:
            lines += ["", "Commands, as run:", "", "```bash", *commands, "```"]
    changed = [s for s in sweeps if s.changes != ""]
    if changed:
        rows = ([changes_cell(s.changes), *_row(s)] for s in changed)
        lines += [
            "",
            "### Runs with changed settings (not compared with the study or the target)",
            "",
            *markdown.table(["changes", *HEADER], rows),
        ]
    return lines


def sweep_summary(recipe: Recipe, sweeps: Sequence[SweepRecord]) -> tuple[str, str]:
    """The summary's `ours` and `target met` cells of a sweep recipe."""
    counted = counted_sweep(sweeps)
    if counted is not None and counted.champion is not None:
        metrics = counted.champion.metrics
        ours = fmt_figures(
            {k: metrics.get(k, float("nan")) for k in METRICS if k != "test_f1_macro"}
        )
        return f"{ours} (champion of sweep {counted.name})", verdict(recipe.target, metrics)
    written = [s for s in sweeps if s.changes == ""]
    ours = f"no complete sweep here ({len(written)} incomplete)" if written else "not run here"
    other = len(sweeps) - len(written)
    if other:
        ours += f" as written ({other} sweep run{'s' if other > 1 else ''} with changed settings)"
    ours += f"; needs {recipe.needs}" if recipe.needs else ""
    return ours, "—"
