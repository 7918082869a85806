"""`fashion-sweeps results`: docs/results.md from the recipe runs in MLflow.

One `--run fmnist_cnn --seeds 1 2` on the tiny Fashion-MNIST IDX files (real `fashion-sweeps
train` processes, 1 epoch) and one run of seed 1 whose data is missing (it fails) share a
temporary store; the tests read the page and the runs back from it. The sweep recipe
clothing_screen runs as `fashion-sweeps sweep` and `screen` on tiny clothing photos, narrowed to
2 conditions of 1 epoch, into a store of its own.
"""

from __future__ import annotations

import shlex
import statistics
import subprocess
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from conftest import fashion_sweeps, write_clothing, write_fmnist
from mlflow.tracking import MlflowClient

from fashion_sweeps.recipes.catalogue import Recipe, load_recipes, recipe_names
from fashion_sweeps.recipes.command import main
from fashion_sweeps.recipes.page import display_store, fmt_duration, render_page
from fashion_sweeps.recipes.runs import RunRecord, commits_behind, group_runs
from fashion_sweeps.recipes.sweep_runs import SweepRecord, sweep_arguments, sweep_changes

# The recipe as written on 60 images; these overrides change only outputs and tracking.
TINY = [
    "tracking.log_model=false",
    "tracking.gallery_size=1",
    "cache=off",
    "trainer.progress=lines",
]


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("results")
    root = write_fmnist(tmp / "fashion_mnist")
    uri = f"sqlite:///{tmp / 'mlruns' / 'mlflow.db'}"
    page = tmp / "docs" / "results.md"
    outputs = f"hydra.run.dir={tmp / 'out'}/${{now:%H-%M-%S-%f}}"  # one folder per process
    common = ["--tracking-uri", uri, "--out", str(page)]
    seeds = ["--run", "fmnist_cnn", "--seeds", "1", "2", "--root", f"fashion_mnist={root}"]
    ran = main([*seeds, *common, "--", *TINY, outputs])
    no_data = ["--run", "fmnist_cnn", "--seeds", "1", "--root", f"fashion_mnist={tmp / 'missing'}"]
    failed = main([*no_data, *common, "--", *TINY, "dataset.reader.download=false", outputs])
    client = MlflowClient(uri)
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        filter_string="tags.recipe = 'fmnist_cnn'",
        order_by=["attributes.start_time ASC"],
    )
    return {
        "root": root,
        "uri": uri,
        "page": page,
        "text": page.read_text(),
        "exit": (ran, failed),
        "runs": runs,
        "tmp": tmp,
    }


def row(*cells: str) -> str:
    return "| " + " | ".join(cells) + " |"


def test_every_recipe_file_has_its_recipe_block() -> None:
    recipes = load_recipes()
    assert sorted(recipes) == recipe_names()
    for name, recipe in recipes.items():
        assert recipe.problem is None, recipe.problem
        assert recipe.name == name
    # The defaults are the chosen groups' own values, not the recipe's.
    scratch = recipes["clothing_scratch"]
    assert scratch.settings["backbone.residual"] == "True"
    assert scratch.defaults["backbone.residual"] == "False"
    assert scratch.settings["backbone.pool"] == scratch.defaults["backbone.pool"] == "flatten"


def test_runs_are_tagged_with_recipe_machine_and_command(made: dict) -> None:
    assert made["exit"] == (0, 1)  # the run without data failed; the page was still written
    finished = [r for r in made["runs"] if r.data.tags.get("status") == "finished"]
    assert sorted(r.data.params["seed"] for r in finished) == ["1", "2"]
    for run in finished:
        tags = run.data.tags
        expected = [
            "fashion-sweeps",
            "train",
            "experiment=fmnist_cnn",
            f"seed={run.data.params['seed']}",
            f"dataset.root={made['root']}",
            f"tracking.uri={made['uri']}",
            *TINY,
        ]
        assert tags["command"] == shlex.join(expected)  # hydra.run.dir is not a task override
        assert "cores" in tags["machine"] and "GPU" in tags["machine"]


def test_page_shows_each_seed_with_its_recorded_figures_and_command(made: dict) -> None:
    text = made["text"]
    for run in made["runs"]:
        if run.data.tags.get("status") != "finished":
            continue
        m = run.data.metrics
        cells = (
            f"{m['test_acc']:.2%}",
            f"{m['test_f1_weighted']:.4f}",
            f"{m['test_f1_macro']:.4f}",
        )
        assert row(run.data.params["seed"], *cells) in text
        assert run.data.tags["machine"] in text
        assert run.data.tags["command"] in text.split("```bash", 1)[1]


def git(*args: str) -> str:
    from fashion_sweeps.config import CHECKOUT_DIR

    return subprocess.run(
        ["git", "-C", str(CHECKOUT_DIR), *args], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_each_row_shows_the_commit_that_made_it_and_how_far_behind_head(made: dict) -> None:
    """A figure from earlier code (89.06% on the page, 87.7% from the code of the day) must be
    seen as such: the commit of each run, and how many commits behind HEAD the counted ones are."""
    head = git("rev-parse", "HEAD")
    finished = [r for r in made["runs"] if r.data.tags.get("status") == "finished"]
    assert finished and {r.data.tags["mlflow.source.git.commit"] for r in finished} == {head}
    assert f"| `{head[:8]}` |" in made["text"]
    assert f"Code of the counted runs: `{head[:8]}` (this checkout's HEAD)." in made["text"]


def test_commits_behind_counts_from_head() -> None:
    assert commits_behind(git("rev-parse", "HEAD~3")) == 3
    assert commits_behind("0" * 40) is None and commits_behind("") is None


def test_mean_counts_finished_runs_and_a_data_error_leaves_no_run(made: dict) -> None:
    """The seed run without its data stops before any MLflow run is made (nothing to list);
    failed runs that do exist are listed, never counted (the unit test below)."""
    text = made["text"]
    finished = [r for r in made["runs"] if r.data.tags.get("status") == "finished"]
    assert len(finished) == 2 and len(made["runs"]) == 2
    mean = statistics.fmean(r.data.metrics["test_acc"] for r in finished)
    assert f"| **mean of 2 seeds** | {mean:.2%}" in text
    assert "2 counted" in text and "| failed" not in text


def test_summary_compares_the_runs_with_the_study_and_recipes_without_runs_say_why(
    made: dict,
) -> None:
    text = made["text"]
    assert text.startswith("<!-- Generated by `fashion-sweeps results`")
    assert "Do not edit this page by hand" in text
    finished = [r for r in made["runs"] if r.data.tags.get("status") == "finished"]
    mean = statistics.fmean(r.data.metrics["test_acc"] for r in finished)
    summary = text.split("## Summary", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in summary.splitlines() if line.startswith("| [")]
    lines = {line.split("](")[0].lstrip("| ["): line for line in rows}
    assert sorted(lines) == recipe_names()
    assert f"| test acc 92.58% | — | test acc {mean:.2%}" in lines["fmnist_cnn"]
    assert "(2 seeds) |" in lines["fmnist_cnn"]
    assert f"minus the study's: test acc {(mean - 0.9258) * 100:+.2f} pt" in text
    needs = "the Fashion Product Images data"
    assert f"not run here; needs {needs}" in lines["product_screen"]
    assert "| test acc ≥ 80.00%, weighted F1 ≥ 0.7900 | not run here |" in lines["clothing_scratch"]
    section = text.split("## product_screen", 1)[1].split("\n## ", 1)[0]
    assert f"**Not run here** as the recipe is written: it needs {needs}" in section


def test_without_run_the_page_is_rewritten_from_the_store(made: dict, capsys) -> None:
    out = made["tmp"] / "again.md"
    assert main(["--tracking-uri", made["uri"], "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "fmnist_cnn" in printed and f"Wrote {out}" in printed
    strip = [line for line in out.read_text().splitlines() if "Generated by" not in line]
    assert strip == [line for line in made["text"].splitlines() if "Generated by" not in line]


def test_a_store_without_runs_of_a_recipe_keeps_its_earlier_figures(made: dict) -> None:
    """Rewriting the page from another store (a fresh clone) never drops measured figures."""
    page = made["tmp"] / "carried.md"
    page.write_text(made["text"])
    empty = f"sqlite:///{made['tmp'] / 'empty' / 'mlflow.db'}"
    for _ in range(2):  # carried twice: still one note, naming the page that measured them
        assert main(["--tracking-uri", empty, "--out", str(page)]) == 0
    text = page.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| [fmnist_cnn]")]
    assert rows == [line for line in made["text"].splitlines() if line.startswith("| [fmnist_cnn]")]
    section = text.split("## fmnist_cnn", 1)[1].split("\n## ", 1)[0]
    earlier = made["text"].split("## fmnist_cnn", 1)[1].split("\n## ", 1)[0]
    assert section.count("*Carried over from the page generated on ") == 1
    assert display_store(made["uri"]) in section
    assert section.split("this store has no runs of it.*", 1)[1].strip() == earlier.strip()
    assert "| [clothing_scratch]" in text and "not run here" in text  # no runs anywhere


def test_unknown_recipe_is_refused_before_training(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--run", "fmnist_cnn", "trainer.max_epochs=1", "--out", str(tmp_path / "r.md")])
    assert exit_.value.code == 2
    assert "Hydra overrides go after --" in capsys.readouterr().err
    assert not (tmp_path / "r.md").exists()


# --- A sweep recipe, run for real -----------------------------------------------------------------

# clothing_screen narrowed to 2 conditions of 1 epoch on 16 px photos: settings the page names.
NARROWED = [
    "backbone=efficientnet_lite0",
    "head=fc,batchnorm",
    "optimizer=adam",
    "optimizer.lr=0.01",
    "dataset.image_size=16",
    "backbone.pretrained=false",
    "sweep.screen.max_epochs=1",
    "sweep.full.top_k=1",
    "sweep.full.max_epochs=2",
]


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """`fashion-sweeps sweep` (screen, then the full run of its best), then a `screen` alone
    under another sweep name, both of the recipe clothing_screen; the page from their store."""
    tmp = tmp_path_factory.mktemp("swept")
    root = write_clothing(tmp / "clothing", per_class=12, seed=4)
    common = [
        "experiment=clothing_screen",
        f"dataset.root={root}",
        f"tracking.dir={tmp / 'mlruns'}",
        "trainer.progress=lines",
        "tracking.log_model=false",
        *NARROWED,
    ]
    fashion_sweeps(tmp, "sweep", *common, "sweep.name=cs_tiny")
    fashion_sweeps(tmp, "screen", *common, "sweep.name=cs_screen_only")
    uri = f"sqlite:///{tmp / 'mlruns' / 'mlflow.db'}"
    page = tmp / "results.md"
    assert main(["--tracking-uri", uri, "--out", str(page)]) == 0
    client = MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return {"text": page.read_text(), "runs": runs}


def section(text: str, name: str) -> str:
    return text.split(f"\n## {name}\n", 1)[1].split("\n## ", 1)[0]


def sweep_row(runs: list, sweep: str, stage: str) -> tuple[str, ...]:
    """What the page shows of a sweep: its name, conditions screened, champion (the lowest best
    val_loss of its full runs, else of its screen) and the champion's figures."""
    mine = [r for r in runs if r.data.tags.get("sweep") == sweep]
    kids = [r for r in mine if r.data.tags.get("run_kind") != "stage"]
    screened = [r for r in kids if r.data.tags["stage"] == "screen"]
    finished = sum(r.data.tags["status"] == "finished" for r in screened)
    best = min(
        (r for r in kids if r.data.tags["stage"] == stage),
        key=lambda r: r.data.metrics["best_val_loss"],
    )
    m = best.data.metrics
    return (
        sweep,
        f"{finished}/{len(screened)}",
        best.data.tags["condition"],
        f"{m['test_acc']:.2%}",
        f"{m['test_f1_weighted']:.4f}",
        f"{m['test_f1_macro']:.4f}",
    )


@pytest.mark.slow  # two sweep processes, ~30-60 s: `make test-slow`
def test_a_sweep_recipe_that_was_run_lists_each_sweep_with_its_champion(swept: dict) -> None:
    text = section(swept["text"], "clothing_screen")
    assert "its trials are not listed here" not in text
    header = row(
        "changes",
        "sweep",
        "conditions screened",
        "champion",
        *("test acc", "weighted F1", "macro F1", "wall time", "machine", "date", "status"),
    )
    assert header in text
    lines = [line for line in text.splitlines() if line.startswith("| `")]
    assert len(lines) == 2  # newest first: the screen alone ran after the whole sweep
    assert row(*sweep_row(swept["runs"], "cs_screen_only", "screen")) in lines[0]
    assert row(*sweep_row(swept["runs"], "cs_tiny", "full")) in lines[1]
    assert lines[0].endswith("| incomplete: no full stage |")
    assert lines[1].endswith("| complete |")
    # Wall time: from the screen's start to the end of the sweep's last condition run.
    mine = [r for r in swept["runs"] if r.data.tags.get("sweep") == "cs_tiny"]
    start = min(r.info.start_time for r in mine if r.data.tags.get("run_kind") == "stage")
    end = max(r.info.end_time for r in mine if r.data.tags.get("run_kind") != "stage")
    machine = next(r.data.tags["machine"] for r in mine if "machine" in r.data.tags)
    assert f"| {fmt_duration((end - start) / 1000)} | {machine} |" in lines[1]


@pytest.mark.slow  # two sweep processes, ~30-60 s: `make test-slow`
def test_a_narrowed_sweep_is_listed_with_its_changes_never_as_the_recipe(swept: dict) -> None:
    text = section(swept["text"], "clothing_screen")
    written, changed = text.split("### Runs with changed settings", 1)
    assert "**Not run here** as the recipe is written" in written
    shown = {}
    for line in changed.splitlines():
        if line.startswith("| `"):
            changes, sweep = line.split(" | ")[:2]
            shown[sweep] = sorted(changes.strip("| `").split())
    # The grid narrowed and the sizes changed; not the swept head (as the recipe sweeps it).
    expected = sorted(w for w in NARROWED if not w.startswith("head="))
    assert shown == {"cs_tiny": expected, "cs_screen_only": expected}
    summary = next(
        line for line in swept["text"].splitlines() if line.startswith("| [clothing_screen]")
    )
    assert "not run here as written (2 sweep runs with changed settings)" in summary
    assert summary.endswith("| — |")  # no target verdict from a changed sweep


# --- Selection and the target, on records built directly (no MLflow) -----------------------------

T0 = datetime(2025, 1, 1, 12, 0)
AS_WRITTEN = "fashion-sweeps train experiment=demo dataset.root=data/x seed={seed}"


def record(seed: int, minutes: int, status: str = "finished", acc: float = 0.9, **kw) -> RunRecord:
    metrics = {"test_acc": acc, "test_f1_weighted": acc, "time/wall_time_s": 60.0}
    return RunRecord(
        run_id=f"{seed}-{minutes}",
        seed=str(seed),
        status=status,
        started=T0 + timedelta(minutes=minutes),
        metrics=metrics if status == "finished" else {},
        machine="CPU, 2 cores, no GPU",
        command=kw.get("command", AS_WRITTEN.format(seed=seed)),
        reason="" if status == "finished" else "boom",
        params=kw.get("params", {}),
    )


def test_latest_finished_run_of_each_seed_counts_and_failures_are_listed() -> None:
    groups = group_runs(
        [
            record(7, 0, acc=0.5),  # replaced by the later finished run of seed 7
            record(7, 10, acc=0.94),
            record(7, 20, status="failed"),  # later, but failed: listed, not counted
            record(42, 5, status="diverged"),
            record(42, 6, acc=0.93),
            record(1, 1, command="fashion-sweeps train experiment=demo seed=1 optimizer.lr=1"),
            record(3, 2, command=None),
        ]
    )
    assert [g.changes for g in groups] == ["", "optimizer.lr=1", None]
    written = groups[0]
    assert [r.run_id for r in written.counted] == ["7-10", "42-6"]
    assert [r.run_id for r in written.rows] == ["7-10", "7-20", "42-5", "42-6"]
    assert written.superseded == 1
    assert written.mean("test_acc") == pytest.approx(0.935)


@pytest.mark.parametrize(("accs", "verdict"), [((0.94, 0.93), "yes"), ((0.94, 0.92), "no")])
def test_target_is_judged_on_the_mean_of_the_runs_as_written(accs, verdict) -> None:
    recipe = Recipe("demo", "fashion_mnist", "a study", {"test_acc": 0.92}, {"test_acc": 0.935})
    groups = group_runs([record(s, s, acc=a) for s, a in zip((1, 2), accs, strict=True)])
    page = render_page({"demo": recipe}, {"demo": groups}, "sqlite:////tmp/mlflow.db")
    assert f"Target met: **{verdict}**" in page
    assert page.count(f"| {verdict} |") == 1  # the summary row
    assert "Ours (mean) minus the study's: test acc" in page


def test_runs_with_changed_settings_are_listed_apart_and_never_averaged() -> None:
    recipe = Recipe("demo", "fashion_mnist", "a study", {"test_acc": 0.92}, {"test_acc": 0.9})
    tuned = "fashion-sweeps train experiment=demo seed=1 trainer.max_epochs=1 optimizer.lr=1"
    groups = group_runs(
        [record(1, 1, acc=0.91), record(2, 2, acc=0.93), record(1, 3, acc=0.99, command=tuned)]
    )
    page = render_page({"demo": recipe}, {"demo": groups}, "sqlite:////tmp/mlflow.db")
    written, changed = page.split("### Runs with changed settings", 1)
    assert "| **mean of 2 seeds** | 92.00%" in written and "99.00%" not in written
    assert "| `trainer.max_epochs=1 optimizer.lr=1` | 1 | 99.00% |" in changed
    assert "(2 seeds) | yes |" in page  # the summary: as written only


def test_runs_of_an_earlier_version_of_the_recipe_are_listed_apart() -> None:
    # The recipe now sets widths and lr 0.002; options added since are at their defaults (off,
    # or the group file's value, which is what runs did before the option existed).
    now = {
        "optimizer.lr": "0.002",
        "backbone.widths": "[16, 32]",
        "trainer.ema_decay": "None",
        "backbone.pool": "flatten",
    }
    defaults = {"optimizer.lr": "0.001", "backbone.widths": "None", "backbone.pool": "flatten"}
    before = {"optimizer.lr": "0.001"}  # a run made before widths, ema_decay and pool existed
    groups = group_runs(
        [record(1, 1, acc=0.77, params=before), record(1, 2, acc=0.81, params=dict(now))],
        now,
        defaults,
    )
    assert [(g.changes, [r.run_id for r in g.counted]) for g in groups] == [
        ("", ["1-2"]),
        ("an earlier version of the recipe: optimizer.lr=0.001 backbone.widths=(unset)", ["1-1"]),
    ]
    recipe = Recipe("demo", "fashion_mnist", None, {}, {"test_acc": 0.8}, settings=now)
    page = render_page({"demo": recipe}, {"demo": groups}, "sqlite:////tmp/mlflow.db")
    # Without the defaults, an option added since with a non-null default would count.
    assert "backbone.pool=(unset)" in group_runs([record(1, 1, params=before)], now)[0].changes
    written, changed = page.split("### Runs with changed settings", 1)
    assert "81.00%" in written and "77.00%" not in written
    assert (
        "an earlier version of the recipe: `optimizer.lr=0.001 backbone.widths=(unset)`" in changed
    )


SCREEN = "fashion-sweeps train sweep=grid experiment=demo dataset.root=d {extra} sweep.stage=screen"


def test_a_sweeps_changes_are_its_own_overrides_that_change_what_it_finds() -> None:
    recipe = Recipe("demo", "clothing", sweep="demo", sweep_params={"head": "fc", "lr": "1,2"})
    as_written = (
        "sweep.name=x tracking.experiment=t sweep.full.log_model=false sweep.screen.plots=true "
        "head=fc seed=3"
    )
    assert sweep_arguments(SCREEN.format(extra=as_written) + " backbone=a 'lr=1'")[-1] == "seed=3"
    assert sweep_changes(sweep_arguments(SCREEN.format(extra=as_written)), recipe) == ""
    changed = "sweep=tpe sweep.full.top_k=2 hydra.sweeper.n_trials=5 head=mlp label_smoothing=0.1"
    assert sweep_changes(sweep_arguments(SCREEN.format(extra=changed)), recipe) == changed
    assert sweep_arguments("fashion-sweeps train experiment=demo seed=1") is None  # not a sweep's


def sweep(name: str, minutes: int, acc: float, status: str = "complete", changes: str = ""):
    best = record(1, minutes, acc=acc)
    return SweepRecord(
        name, best.started, 600.0, (24, 24), best, f"lite/fc/sgd/{acc}", status, changes
    )


def test_the_latest_complete_sweep_as_written_counts_against_the_target() -> None:
    recipe = Recipe("demo", "clothing", target={"test_acc": 0.8}, sweep="demo")
    sweeps = [
        sweep("demo.tuned", 40, 0.95, changes="sweep.full.max_epochs=30"),
        sweep("demo.new", 30, 0.5, status="incomplete: no full stage"),
        sweep("demo.b", 20, 0.81),
        sweep("demo", 10, 0.7),
    ]
    page = render_page({"demo": recipe}, {}, "sqlite:////tmp/mlflow.db", sweeps={"demo": sweeps})
    summary = next(line for line in page.splitlines() if line.startswith("| [demo]"))
    assert "| test acc 81.00%, weighted F1 0.8100 (champion of sweep demo.b) | yes |" in summary
    written, changed = page.split("### Runs with changed settings", 1)
    assert [line.split(" | ")[0] for line in written.splitlines() if "| demo" in line] == [
        "| demo.new",
        "| demo.b",
        "| demo",
    ]
    assert "| demo.new | 24/24 | lite/fc/sgd/0.5 | 50.00% |" in written
    assert "Counted: the champion of sweep `demo.b`" in written
    assert "Target met: **yes** (the champion of sweep demo.b; test acc ≥ 80.00%: met" in written
    assert "| `sweep.full.max_epochs=30` | demo.tuned |" in changed and "95.00%" not in written
    assert "Not run here" not in page
