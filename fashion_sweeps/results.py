"""`fashion-sweeps results` (`make results`): docs/results.md, the recipes' figures measured on
our machines beside the studies' reported ones, regenerated from MLflow, never typed by hand.

- A recipe's facts (its study, the figures the study reports, our target, what it needs that a
  machine may lack) are the `recipe:` block of `conf/experiment/<name>.yaml`, read by composing
  `experiment=<name>`.
- Our figures are the MLflow runs tagged `recipe=<name>`; tracking/job_run.py tags every run of a
  recipe so, with the `machine` it ran on and the `command` that runs it again. Children of a
  sweep stage or of a sampler study are trials, not runs of the recipe, and are left out.
- Per seed the latest finished run counts; failed, diverged, killed and unfinished runs are
  listed and never averaged. Runs whose command changes a training setting (anything but the
  seed, where the data is, tracking, outputs and where the run executes) are grouped by those
  changes and never compared with the target.
- `--run NAME... --seeds 42 7 --root DATASET=PATH [-- OVERRIDES]` trains first, one
  `fashion-sweeps train experiment=NAME seed=S` process after the other, then writes the page.
"""

from __future__ import annotations

import argparse
import logging
import math
import shlex
import statistics
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from urllib.parse import urlparse

from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig

from fashion_sweeps.config import CONF_DIR, project_dir
from fashion_sweeps.earlier_page import Earlier, earlier_recipes
from fashion_sweeps.settings import changes_result
from fashion_sweeps.tracking.runs import config_params, store_client
from fashion_sweeps.tracking.store import search_every_experiment

log = logging.getLogger(__name__)

PROG = "fashion-sweeps results"
# The figures of a recipe: MLflow metric -> column title.
METRICS = {"test_acc": "test acc", "test_f1_weighted": "weighted F1", "test_f1_macro": "macro F1"}
# The page's own axes: one row per seed, one table per recipe. Any other override that changes a
# result (settings.py: not where the data is, tracking, outputs, devices) sets a run apart.
PAGE_AXES = frozenset({"experiment", "seed"})
# How a group of runs launched as written but made with an earlier version of the file is named.
EARLIER = "an earlier version of the recipe: "
# Runs with changed settings (tuning, smoke tests) are listed in one table, newest first, capped.
MAX_CHANGED_ROWS = 20


class ResultsError(RuntimeError):
    """The page cannot be written: the message says why and what to do."""


# --- The recipes -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recipe:
    """A `recipe:` block: figures are fractions keyed by MLflow metric (0.9258 = 92.58%)."""

    name: str
    dataset: str
    study: str | None = None
    reported: Mapping[str, float] = field(default_factory=dict)
    target: Mapping[str, float] = field(default_factory=dict)
    needs: str | None = None
    sweep: str | None = None  # a sweep recipe's `sweep.name`: its trials are in its sweep report
    problem: str | None = None  # what is wrong with the file's block, shown on the page
    # What the recipe trains as MLflow params (flattened config, same-recipe keys left out): a
    # run whose params differ was made with an earlier version of the file.
    settings: Mapping[str, str] = field(default_factory=dict)
    # The same keys as the chosen config groups' own files set them, without the recipe: what a
    # run made before an option existed did (its params lack the key).
    defaults: Mapping[str, str] = field(default_factory=dict)


def recipe_names() -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))


def _figures(block: Mapping | None, what: str, path: str) -> dict[str, float]:
    figures = dict(block or {})
    unknown = sorted(set(figures) - set(METRICS))
    if unknown:
        raise ResultsError(
            f"{path}: recipe.{what} names {', '.join(unknown)}; use MLflow metric names "
            f"({', '.join(METRICS)})."
        )
    for key, value in figures.items():
        if not isinstance(value, int | float) or not 0 <= value <= 1:
            raise ResultsError(
                f"{path}: recipe.{what}.{key} = {value!r}; give a fraction (0.9258 for 92.58%)."
            )
    return {k: float(v) for k, v in figures.items()}


def load_recipes(names: Iterable[str] | None = None) -> dict[str, Recipe]:
    """Every recipe of conf/experiment/ (or those named), composed as training composes them."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf, open_dict

    recipes = {}
    with initialize_config_dir(str(CONF_DIR)):
        for name in names or recipe_names():
            path = f"conf/experiment/{name}.yaml"
            cfg = compose("config", overrides=[f"experiment={name}"], return_hydra_config=True)
            choices = dict(cfg.hydra.runtime.choices)  # the groups the recipe chose
            with open_dict(cfg):
                del cfg.hydra  # as training sees it
            block = cfg.get("recipe")
            sweep = OmegaConf.select(cfg, "sweep.name", default=None)
            sweep = None if sweep is None else str(sweep)
            if block is None:
                recipes[name] = Recipe(
                    name, cfg.dataset.name, sweep=sweep, problem=f"{path} has no `recipe:` block."
                )
                continue
            block = OmegaConf.to_container(block, resolve=True)
            if block.get("name") != name:
                raise ResultsError(
                    f"{path}: recipe.name is {block.get('name')!r}; it must be the file's name "
                    f"({name!r}), which `experiment={name}` selects and runs are tagged with."
                )
            recipes[name] = Recipe(
                name=name,
                dataset=str(cfg.dataset.name),
                study=block.get("study"),
                reported=_figures(block.get("reported"), "reported", path),
                target=_figures(block.get("target"), "target", path),
                needs=block.get("needs"),
                sweep=sweep,
                settings=training_settings(cfg),
                defaults=training_settings(_group_defaults(choices)),
            )
    return recipes


def _group_defaults(choices: Mapping[str, str | None]) -> DictConfig:
    """The config composed from the groups a recipe chose, without the recipe's own values
    (inside load_recipes' Hydra context)."""
    from hydra import compose

    overrides = [
        f"{group}={choice}"
        for group, choice in choices.items()
        if choice is not None and group != "experiment" and not group.startswith("hydra")
    ]
    return compose("config", overrides)


def training_settings(cfg: DictConfig) -> dict[str, str]:
    """The composed config as a run logs it, but the keys that leave what a recipe trains as it
    is and the `recipe:` block."""
    return {k: v for k, v in config_params(cfg).items() if not _same_recipe(k)}


# --- The runs ----------------------------------------------------------------------------------


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
            metrics=dict(run.data.metrics),
            machine=tags.get("machine") or (f"host {tags['host']}" if "host" in tags else ""),
            command=tags.get("command"),
            reason=reason[:160] + ("…" if len(reason) > 160 else ""),
            params=dict(run.data.params),
        )


def recipe_runs(client: MlflowClient, name: str) -> list[RunRecord]:
    """The runs tagged `recipe=<name>` in every experiment of the store, but children of a sweep
    stage or a sampler study (tagged with a parent)."""
    runs = search_every_experiment(client, f"tags.recipe = '{name}'", ["attributes.start_time ASC"])
    return [
        RunRecord.from_run(r)
        for r in runs
        if "mlflow.parentRunId" not in r.data.tags and "stage" not in r.data.tags
    ]


def _same_recipe(override: str) -> bool:
    key = override.split("=", 1)[0].lstrip("+~")
    return key in PAGE_AXES or not changes_result(key)


def changed_settings(command: str | None) -> str | None:
    """The overrides of `fashion-sweeps train ...` that change what the recipe trains ('' none;
    None: the run recorded no command, so what it trained is not known from here)."""
    if not command:
        return None
    try:
        words = shlex.split(command)[2:]  # after `fashion-sweeps train`
    except ValueError:
        return None
    return shlex.join(w for w in words if not _same_recipe(w))


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


# --- The page ----------------------------------------------------------------------------------


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


def cell(text: object) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def md_row(cells: Sequence[object]) -> str:
    return "| " + " | ".join(cell(c) for c in cells) + " |"


def md_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *map(md_row, rows)]


def target_verdict(recipe: Recipe, group: Group | None) -> str:
    """'yes' / 'no' (the mean over seeds against every target figure), '—' without a target or
    runs."""
    if not recipe.target or group is None or not group.counted:
        return "—"
    met = [group.mean(k) >= v for k, v in recipe.target.items()]
    return "yes" if all(met) else "no"


def _status(record: RunRecord) -> str:
    return f"{record.status}: {record.reason}" if record.reason else record.status


def _group_lines(recipe: Recipe, group: Group) -> list[str]:
    header = ["seed", *METRICS.values(), "wall time", "machine", "date", "status"]
    rows = [
        [
            r.seed,
            *(fmt(k, r.metrics.get(k)) for k in METRICS),
            fmt_duration(r.metrics.get("wall_time_s")),
            r.machine or "—",
            r.started.strftime("%Y-%m-%d %H:%M"),
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
                fmt_duration(group.mean("wall_time_s")),
                "",
                "",
                f"{n} counted",
            ]
        )
    lines = md_table(header, rows)
    if group.superseded:
        lines += [
            "",
            f"{group.superseded} earlier finished run(s) of the same seeds are not shown: per "
            "seed the latest finished run counts.",
        ]
    if n and group.changes == "":
        if recipe.reported:
            diffs = []
            for k, v in recipe.reported.items():
                ours = group.mean(k)
                if math.isfinite(ours):
                    unit = " pt" if k == "test_acc" else ""
                    scale = 100 if k == "test_acc" else 1
                    diffs.append(f"{METRICS[k]} {(ours - v) * scale:+.2f}{unit}")
            if diffs:
                lines += ["", f"Ours (mean) minus the study's: {', '.join(diffs)}."]
        if recipe.target:
            checks = [
                f"{METRICS[k]} ≥ {fmt(k, v)}: "
                f"{'met' if group.mean(k) >= v else 'not met'} ({fmt(k, group.mean(k))})"
                for k, v in recipe.target.items()
            ]
            verdict = target_verdict(recipe, group)
            lines += ["", f"Target met: **{verdict}** (mean over seeds; {'; '.join(checks)})."]
    commands = list(dict.fromkeys(r.command for r in group.rows if r.command))
    if commands:
        lines += ["", "Commands, as run:", "", "```bash", *commands, "```"]
    return lines


def _as_written(groups: Sequence[Group]) -> Group | None:
    return next((g for g in groups if g.changes == "" and g.counted), None)


def summary_cells(recipe: Recipe, groups: Sequence[Group]) -> list[str]:
    """recipe, study reports, target, ours (mean), target met."""
    group = _as_written(groups)
    if group is not None:
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
        target_verdict(recipe, group),
    ]


def _recipe_lines(recipe: Recipe, groups: Sequence[Group]) -> list[str]:
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
    lines.append(" ".join(facts))
    if _as_written(groups) is None:
        why = f": it needs {recipe.needs}" if recipe.needs else ""
        if recipe.sweep:
            how = (
                f"A sweep recipe: `make sweep EXPERIMENT={recipe.name} ROOT=PATH`; its trials are "
                f"not listed here, its ranking and best model are in `fashion-sweeps report "
                f"{recipe.sweep}`."
            )
        else:
            how = (
                f"To run it: `{PROG} --run {recipe.name} --seeds 42 --root {recipe.dataset}=PATH`."
            )
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


def _changes_cell(changes: str | None) -> str:
    if not changes:
        return "not recorded (no command tag)"
    if changes.startswith(EARLIER):
        return f"{EARLIER}`{changes.removeprefix(EARLIER)}`"
    return f"`{changes}`"


def _changed_lines(recipe: Recipe, groups: Sequence[Group]) -> list[str]:
    """One row per run (per group and seed the latest finished, and those that did not finish),
    newest first, at most MAX_CHANGED_ROWS."""
    runs = sorted(
        ((g.changes, r) for g in groups for r in g.rows), key=lambda cr: cr[1].started, reverse=True
    )
    header = ["changes", "seed", *METRICS.values(), "wall time", "machine", "date", "status"]
    rows = [
        [
            _changes_cell(changes),
            r.seed,
            *(fmt(k, r.metrics.get(k)) for k in METRICS),
            fmt_duration(r.metrics.get("wall_time_s")),
            r.machine or "—",
            r.started.strftime("%Y-%m-%d %H:%M"),
            _status(r),
        ]
        for changes, r in runs[:MAX_CHANGED_ROWS]
    ]
    lines = md_table(header, rows)
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
) -> str:
    """The page; a recipe without runs in this store keeps its figures from `earlier`."""
    when = when or datetime.now().astimezone()
    carried = {n: e for n, e in (earlier or {}).items() if n in recipes and not groups.get(n)}
    lines = [
        f"<!-- Generated by `{PROG}` (`make results`). Do not edit by hand: rerun it. -->",
        "# Results of the recipes",
        "",
        f"*Generated by `{PROG}` on {when:%Y-%m-%d %H:%M %Z} from the MLflow store "
        f"`{display_store(store)}`. Do not edit this page by hand: `make results` rewrites it "
        "from the runs (README, section [Recipes](../README.md)).*",
        "",
        "Each recipe is `conf/experiment/<name>.yaml`, run as `fashion-sweeps train "
        "experiment=<name> seed=<seed>`; MLflow tags every such run `recipe=<name>`, with the "
        "machine it ran on and its command. The study's figures, the target and what a recipe "
        "needs come from the file's `recipe:` block. Per seed the latest finished run counts; "
        "failed, diverged, killed and unfinished runs are listed, never averaged. Runs whose "
        "command changes a training setting (anything but the seed, the data's location, "
        "tracking, outputs and devices) are shown apart and not compared with the study or the "
        "target. A recipe without runs says so, and why, instead of giving a figure.",
        "",
        "## Summary",
        "",
        *md_table(
            ["recipe", "study reports", "target", "ours (mean over seeds)", "target met"], []
        ),
        *(
            carried[name].row if name in carried else md_row(summary_cells(r, groups.get(name, [])))
            for name, r in recipes.items()
        ),
    ]
    for name, recipe in recipes.items():
        if name in carried:
            lines += ["", f"## {name}", "", carried[name].note(), "", carried[name].section]
        else:
            lines += _recipe_lines(recipe, groups.get(name, []))
    return "\n".join(lines) + "\n"


def console_table(recipes: Mapping[str, Recipe], groups: Mapping[str, Sequence[Group]]) -> str:
    rows = [("recipe", "runs", "test acc (mean)", "target", "met")]
    for name, recipe in recipes.items():
        group = _as_written(groups.get(name, []))
        n = len(group.counted) if group else 0
        acc = fmt("test_acc", group.mean("test_acc")) if group else "not run here"
        target = fmt_figures(recipe.target, "≥ ") if recipe.target else "—"
        rows.append((name, str(n), acc, target, target_verdict(recipe, group)))
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
    page = render_page(recipes, groups, client.tracking_uri, earlier=earlier_recipes(out))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page)
    return page, console_table(recipes, groups)


# --- Running recipes ---------------------------------------------------------------------------


def train_command(
    recipe: Recipe, seed: int, roots: Mapping[str, str], uri: str | None, overrides: Sequence[str]
) -> list[str]:
    """`train experiment=NAME seed=S [dataset.root=PATH] [tracking.uri=URI] OVERRIDES`."""
    args = ["train", f"experiment={recipe.name}", f"seed={seed}"]
    if recipe.dataset in roots:
        args.append(f"dataset.root={roots[recipe.dataset]}")
    if uri:
        args.append(f"tracking.uri={uri}")
    return [*args, *overrides]


def run_recipes(
    recipes: Mapping[str, Recipe],
    names: Sequence[str],
    seeds: Sequence[int],
    roots: Mapping[str, str],
    uri: str | None,
    overrides: Sequence[str],
) -> list[str]:
    """Train each recipe once per seed, one process after the other; the failed commands."""
    failed = []
    for name in names:
        recipe = recipes[name]
        if recipe.needs:
            log.warning(
                "%s needs %s: without it the run fails or is not the protocol.", name, recipe.needs
            )
        for seed in seeds:
            args = train_command(recipe, seed, roots, uri, overrides)
            shown = "fashion-sweeps " + shlex.join(args)
            print(f"$ {shown}", flush=True)
            done = subprocess.run([sys.executable, "-m", "fashion_sweeps.cli", *args], check=False)
            if done.returncode != 0:
                log.error("exit %d: %s", done.returncode, shown)
                failed.append(shown)
    return failed


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    default_out = project_dir() / "docs" / "results.md"
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Write docs/results.md from the recipe runs in MLflow: per recipe the "
        "study's figures, ours per seed and their mean, the target, the commands. With --run, "
        "train the recipes first.",
        epilog="example: fashion-sweeps results --run fmnist_cnn fmnist_best --seeds 42 7 "
        "--root fashion_mnist=../shared/data/fashion_mnist -- trainer.progress=lines",
    )
    parser.add_argument(
        "--run", nargs="+", default=[], metavar="RECIPE", help="train these recipes first"
    )
    parser.add_argument(
        "--seeds", nargs="+", type=int, default=[42], help="with --run: the seeds (default 42)"
    )
    parser.add_argument(
        "--root",
        action="append",
        default=[],
        metavar="DATASET=PATH",
        help="with --run: dataset.root of the recipes on DATASET (repeat per data set)",
    )
    parser.add_argument(
        "--out", type=Path, default=default_out, help=f"the page (default {default_out})"
    )
    parser.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow store, read and (with --run) trained into (default: as training, "
        "$MLFLOW_TRACKING_URI or mlruns/)",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        help="after --: Hydra overrides for every --run run (e.g. trainer.progress=lines)",
    )
    args = parser.parse_args(argv)
    if args.overrides and not args.run:
        parser.error("overrides apply to the runs of --run; give --run RECIPE...")
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        parser.error(f"{' '.join(bad)}: overrides are key=value (after --)")
    roots = {}
    for item in args.root:
        dataset, sep, path = item.partition("=")
        if not sep or not dataset or not path:
            parser.error(f"--root {item}: give DATASET=PATH, e.g. fashion_mnist=data/fmnist")
        roots[dataset] = path
    args.roots = roots
    known = recipe_names()
    unknown = [n for n in args.run if n not in known]
    if unknown:
        hint = " (Hydra overrides go after --)" if any("=" in n for n in unknown) else ""
        parser.error(f"unknown recipe(s) {', '.join(unknown)}{hint}; recipes: {', '.join(known)}")
    datasets = sorted(p.stem for p in (CONF_DIR / "dataset").glob("*.yaml"))
    unknown = sorted(set(roots) - set(datasets))
    if unknown:
        parser.error(
            f"--root: unknown data set(s) {', '.join(unknown)}; data sets: {', '.join(datasets)}"
        )
    return args


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="[%(asctime)s][%(name)s] %(message)s", force=True
    )
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from hydra.errors import HydraException

    from fashion_sweeps.tracking.runs import TrackingUnavailableError
    from fashion_sweeps.tracking.store import store_uri

    try:
        recipes = load_recipes()
        uri = store_uri(args.tracking_uri)  # unreachable: said before anything is trained
    except (ResultsError, TrackingUnavailableError, HydraException) as err:
        message = str(err).split("\nConfig search path:")[0].strip()  # the path is noise here
        print(f"{PROG}: {message}", file=sys.stderr)
        return 2
    failed = []
    if args.run:
        failed = run_recipes(
            recipes, args.run, args.seeds, args.roots, args.tracking_uri, args.overrides
        )
    _, table = write_page(store_client(uri), args.out, recipes)
    print(table)
    print(f"Wrote {args.out}")
    if failed:
        print(f"{len(failed)} run(s) failed (listed on the page):", file=sys.stderr)
        for command in failed:
            print(f"  {command}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
