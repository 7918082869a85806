"""The results page (docs/results.md) and the console table, written from the recipes
(catalogue.py) and their runs (runs.py): per recipe the study's figures, ours per seed and their
mean, the target, the commands; a sweep recipe's sweeps with their champions (sweep_runs.py,
sweep_page.py); recipes without runs in the store keep the figures of the earlier page
(earlier_page.py)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from urllib.parse import urlparse

from mlflow.tracking import MlflowClient

from fashion_sweeps import markdown
from fashion_sweeps.recipes.catalogue import METRICS, PROG, Recipe, load_recipes
from fashion_sweeps.recipes.earlier_page import Earlier, earlier_recipes
from fashion_sweeps.recipes.figures import (
    changes_cell,
    comparison_lines,
    fmt,
    fmt_duration,
    fmt_figures,
    verdict,
)
from fashion_sweeps.recipes.runs import Group, RunRecord, code_line, group_runs, recipe_runs
from fashion_sweeps.recipes.sweep_page import sweep_lines, sweep_summary
from fashion_sweeps.recipes.sweep_runs import SweepRecord, counted_champion, recipe_sweeps
from fashion_sweeps.tracking.metric_names import time_metric

WALL = time_metric("wall_time_s")

# Runs with changed settings (tuning, smoke tests) are listed in one table, newest first, capped.
MAX_CHANGED_ROWS = 20
OURS = "ours (mean over seeds; a sweep: its champion)"  # the summary's column


def target_verdict(recipe: Recipe, group: Group | None) -> str:
    """'yes' / 'no' (the mean over seeds against every target figure), '—' without a target or
    runs."""
    if group is None or not group.counted:
        return "—"
    return verdict(recipe.target, {k: group.mean(k) for k in recipe.target})


def _status(record: RunRecord) -> str:
    return f"{record.status}: {record.reason}" if record.reason else record.status


def _group_lines(recipe: Recipe, group: Group) -> list[str]:
    header = ["seed", *METRICS.values(), "wall time", "machine", "date", "commit", "status"]
    rows = [
        [
            r.seed,
            *(fmt(k, r.metrics.get(k)) for k in METRICS),
            fmt_duration(r.metrics.get(WALL)),
            r.machine or "—",
            r.started.strftime("%Y-%m-%d %H:%M"),
            f"`{r.commit[:8]}`" if r.commit else "—",
            _status(r),
        ]
        for r in group.rows
    ]
    n = len(group.counted)
    if n:
        spread = group.std("test_acc")
        mean_acc = fmt("test_acc", group.mean("test_acc"))
        if math.isfinite(spread):
            mean_acc += f" ± {spread * 100:.2f} pt"
        rows.append(
            [
                f"**mean of {n} seed{'s' if n > 1 else ''}**",
                mean_acc,
                *(fmt(k, group.mean(k)) for k in list(METRICS)[1:]),
                fmt_duration(group.mean(WALL)),
                "",
                "",
                "",
                f"{n} counted",
            ]
        )
    lines = markdown.table(header, rows)
    if n:
        lines += ["", code_line(group.counted)]
    if group.superseded:
        lines += [
            "",
            f"{group.superseded} earlier finished run(s) of the same seeds are not shown: per "
            "seed the latest finished run counts.",
        ]
    if n and group.changes == "":
        ours = {k: group.mean(k) for k in METRICS}
        lines += comparison_lines(recipe, ours, "mean", "mean over seeds")
    commands = list(dict.fromkeys(r.command for r in group.rows if r.command))
    if commands:
        lines += ["", "Commands, as run:", "", "```bash", *commands, "```"]
    return lines


def _as_written(groups: Sequence[Group]) -> Group | None:
    return next((g for g in groups if g.changes == "" and g.counted), None)


def summary_cells(
    recipe: Recipe, groups: Sequence[Group], sweeps: Sequence[SweepRecord] = ()
) -> list[str]:
    """recipe, study reports, target, ours (mean, or a sweep recipe's champion), target met."""
    group = _as_written(groups)
    met = target_verdict(recipe, group)
    if recipe.sweep:
        ours, met = sweep_summary(recipe, sweeps)
    elif group is not None:
        n = len(group.counted)
        ours = fmt_figures({k: group.mean(k) for k in METRICS if k != "test_f1_macro"})
        ours += f" ({n} seed{'s' if n > 1 else ''})"
    else:
        written = next((g for g in groups if g.changes == ""), None)
        ours = "not run here"
        if written is not None:
            ours = f"no finished run here ({len(written.rows)} failed or unfinished)"
        other = sum(len(g.rows) for g in groups if g.changes != "")
        if other:
            ours += f" as written ({other} run{'s' if other > 1 else ''} with changed settings)"
        ours += f"; needs {recipe.needs}" if recipe.needs else ""
    return [
        f"[{recipe.name}](#{recipe.name})",
        fmt_figures(recipe.reported),
        fmt_figures(recipe.target, "≥ "),
        ours,
        met,
    ]


def _facts_lines(recipe: Recipe) -> list[str]:
    lines = ["", f"## {recipe.name}", ""]
    if recipe.problem:
        lines += [f"**{recipe.problem}**", ""]
    study = recipe.study or "none"
    facts = [
        f"Recipe: [`conf/experiment/{recipe.name}.yaml`](../conf/experiment/{recipe.name}.yaml).",
        f"Study: {study}"
        + (f"; reported {fmt_figures(recipe.reported)}." if recipe.reported else "."),
        f"Target: {fmt_figures(recipe.target, '≥ ') if recipe.target else 'none'}.",
    ]
    if recipe.needs:
        facts.append(f"Needs: {recipe.needs}.")
    return [*lines, " ".join(facts)]


def _recipe_lines(
    recipe: Recipe, groups: Sequence[Group], sweeps: Sequence[SweepRecord] = ()
) -> list[str]:
    lines = _facts_lines(recipe)
    why = f": it needs {recipe.needs}" if recipe.needs else ""
    if recipe.sweep:
        lines += sweep_lines(recipe, sweeps, why)
        if groups:  # `fashion-sweeps train experiment=NAME` trains one condition of the sweep
            lines += [
                "",
                "### Single runs of one condition (not the sweep, not compared)",
                "",
                *_changed_lines(recipe, groups),
            ]
        return lines
    if _as_written(groups) is None:
        how = f"To run it: `{PROG} --run {recipe.name} --seeds 42 --root {recipe.dataset}=PATH`."
        tried = any(g.changes == "" for g in groups)
        lines += [
            "",
            f"**{'No finished run here' if tried else 'Not run here'}** as the recipe is "
            f"written{why}; no figure is given for it. {how}",
        ]
    for group in groups:
        if group.changes == "":
            lines += ["", "### As written", "", *_group_lines(recipe, group)]
    changed = [g for g in groups if g.changes != ""]
    if changed:
        lines += [
            "",
            "### Runs with changed settings (not compared with the study or the target)",
            "",
            *_changed_lines(recipe, changed),
        ]
    return lines


def _changed_lines(recipe: Recipe, groups: Sequence[Group]) -> list[str]:
    """One row per run (per group and seed the latest finished, and those that did not finish),
    newest first, at most MAX_CHANGED_ROWS."""
    runs = sorted(
        ((g.changes, r) for g in groups for r in g.rows), key=lambda cr: cr[1].started, reverse=True
    )
    header = ["changes", "seed", *METRICS.values(), "wall time", "machine", "date", "status"]
    rows = [
        [
            changes_cell(changes),
            r.seed,
            *(fmt(k, r.metrics.get(k)) for k in METRICS),
            fmt_duration(r.metrics.get(WALL)),
            r.machine or "—",
            r.started.strftime("%Y-%m-%d %H:%M"),
            _status(r),
        ]
        for changes, r in runs[:MAX_CHANGED_ROWS]
    ]
    lines = markdown.table(header, rows)
    if len(runs) > MAX_CHANGED_ROWS:
        lines += [
            "",
            f"{len(runs) - MAX_CHANGED_ROWS} older ones are in MLflow (tag `recipe` = "
            f"`{recipe.name}`).",
        ]
    return lines


def display_store(uri: str) -> str:
    """The store as the page shows it: a local SQLite file relative to the working folder; a
    server without credentials."""
    parsed = urlparse(uri)
    if parsed.scheme == "sqlite":
        path = Path(uri.removeprefix("sqlite:///"))
        try:
            return str(path.resolve().relative_to(Path.cwd().resolve()))
        except ValueError:
            return str(path)
    if parsed.hostname and (parsed.username or parsed.password):
        netloc = parsed.hostname + (f":{parsed.port}" if parsed.port else "")
        return parsed._replace(netloc=netloc).geturl()
    return uri


def render_page(
    recipes: Mapping[str, Recipe],
    groups: Mapping[str, Sequence[Group]],
    store: str,
    when: datetime | None = None,
    earlier: Mapping[str, Earlier] | None = None,
    sweeps: Mapping[str, Sequence[SweepRecord]] | None = None,
) -> str:
    """The page; a recipe without runs (or `sweeps`) in this store keeps its figures from
    `earlier`."""
    when = when or datetime.now().astimezone()
    sweeps = sweeps or {}
    carried = {
        n: e
        for n, e in (earlier or {}).items()
        if n in recipes and not groups.get(n) and not sweeps.get(n)
    }
    lines = [
        f"<!-- Generated by `{PROG}` (`make results`). Do not edit by hand: rerun it. -->",
        "# Results of the recipes",
        "",
        f"*Generated by `{PROG}` on {when:%Y-%m-%d %H:%M %Z} from the MLflow store "
        f"`{display_store(store)}`. Do not edit this page by hand: `make results` rewrites it "
        "from the runs ([docs/recipes.md](recipes.md)).*",
        "",
        "Each recipe is `conf/experiment/<name>.yaml`, run as `fashion-sweeps train "
        "experiment=<name> seed=<seed>`; MLflow tags every such run `recipe=<name>`, with the "
        "machine it ran on, its command and the git commit of the code (each row shows it; under "
        "each table, how many commits behind this checkout's HEAD the counted runs are: a "
        "target is met by the code of the day only at 0). The study's figures, the target and what a recipe "
        "needs come from the file's `recipe:` block. Per seed the latest finished run counts; "
        "failed, diverged, killed and unfinished runs are listed, never averaged. Runs whose "
        "command changes a training setting (anything but the seed, the data's location, "
        "tracking, outputs and devices) are shown apart and not compared with the study or the "
        "target. A sweep recipe, run as `fashion-sweeps sweep experiment=<name>`, lists its "
        "sweeps, each with its champion as `fashion-sweeps report` chooses it; the latest "
        "complete sweep as written counts. A recipe without runs says so, and why, instead of "
        "giving a figure.",
        "",
        "## Summary",
        "",
        *markdown.table(["recipe", "study reports", "target", OURS, "target met"], []),
        *(
            carried[name].row
            if name in carried
            else markdown.row(summary_cells(r, groups.get(name, []), sweeps.get(name, ())))
            for name, r in recipes.items()
        ),
    ]
    for name, recipe in recipes.items():
        if name in carried:
            lines += ["", f"## {name}", "", carried[name].note(), "", carried[name].section]
        else:
            lines += _recipe_lines(recipe, groups.get(name, []), sweeps.get(name, ()))
    return "\n".join(lines) + "\n"


def console_table(
    recipes: Mapping[str, Recipe],
    groups: Mapping[str, Sequence[Group]],
    sweeps: Mapping[str, Sequence[SweepRecord]] | None = None,
) -> str:
    rows = [("recipe", "runs", "test acc (mean)", "target", "met")]
    for name, recipe in recipes.items():
        group = _as_written(groups.get(name, []))
        n = len(group.counted) if group else 0
        acc = fmt("test_acc", group.mean("test_acc")) if group else "not run here"
        met = target_verdict(recipe, group)
        if recipe.sweep:  # its sweep runs; the champion of the one that counts
            n = len((sweeps or {}).get(name, ()))
            best = counted_champion((sweeps or {}).get(name, ()))
            acc = fmt("test_acc", best.metrics.get("test_acc")) if best else "not run here"
            met = verdict(recipe.target, best.metrics) if best else "—"
        target = fmt_figures(recipe.target, "≥ ") if recipe.target else "—"
        rows.append((name, str(n), acc, target, met))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def write_page(
    client: MlflowClient, out: Path, recipes: Mapping[str, Recipe] | None = None
) -> tuple[str, str]:
    """(Re)write the page at `out` from the store; return (page, console table)."""
    recipes = recipes or load_recipes()
    groups = {
        name: group_runs(recipe_runs(client, name), recipe.settings, recipe.defaults)
        for name, recipe in recipes.items()
    }
    sweeps = {name: recipe_sweeps(client, r) for name, r in recipes.items() if r.sweep}
    earlier = earlier_recipes(out)
    page = render_page(recipes, groups, client.tracking_uri, earlier=earlier, sweeps=sweeps)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page)
    return page, console_table(recipes, groups, sweeps)
