"""The sweep stages as a user runs them: real multiruns in subprocesses on tiny synthetic data.

One `fashion-sweeps sweep` (screen of a 2x3 grid whose `lr=inf` column diverges, then the full
runs of its top 2) is shared by the tests below; each checks one promise of it.
"""

from __future__ import annotations

import csv
import subprocess
from pathlib import Path

import optuna
import pytest
from conftest import fashion_sweeps, output, write_clothing
from mlflow.tracking import MlflowClient
from optuna.distributions import CategoricalDistribution

from fashion_sweeps.sweeps.study import OUTCOME

GRID = ["backbone=mlp", "head=fc,batchnorm", "optimizer.lr=0.01,0.001,inf"]
SCREEN_KEYS = {f"mlp/{h}/adam/{lr}" for h in ("fc", "batchnorm") for lr in ("0.01", "0.001", "inf")}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("sweep")
    write_clothing(work / "clothing", per_class=12, seed=4)
    return work


def common_args(work: Path) -> list[str]:
    return [
        "sweep=tiny",
        "dataset=clothing",
        f"dataset.root={work / 'clothing'}",
        f"tracking.dir={work / 'mlruns'}",
        "trainer.progress=lines",
        "sweep.name=t",
    ]


@pytest.fixture(scope="module")
def swept(workdir: Path) -> subprocess.CompletedProcess:
    """`fashion-sweeps sweep`: the screen, then the full runs of its top 2."""
    return fashion_sweeps(workdir, "sweep", *common_args(workdir), *GRID, "sweep.full.top_k=2")


@pytest.fixture(scope="module")
def client(workdir: Path, swept: subprocess.CompletedProcess) -> MlflowClient:
    return MlflowClient(f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}")


def stage_runs(client: MlflowClient, stage: str) -> tuple[object, list]:
    experiment = client.get_experiment_by_name("clothing")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("run_kind") == "stage"]
    parents = [r for r in parents if r.data.tags["stage"] == stage]
    assert len(parents) == 1, f"one {stage} parent expected, got {len(parents)}"
    kids = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    return parents[0], kids


def study(workdir: Path, stage: str, name: str = "t") -> optuna.Study:
    storage = f"sqlite:///{workdir / 'multirun' / 'sweeps' / 'optuna.db'}"
    return optuna.load_study(study_name=f"{name}/{stage}", storage=storage)


def test_a_sweep_ends_with_its_report(workdir: Path, swept) -> None:
    """`fashion-sweeps sweep` is the whole job: the report is written and the champion
    registered in the same process, no `fashion-sweeps report` needed after it."""
    assert swept.returncode == 0, swept.stderr[-2000:]
    assert "Report of sweep 't'" in swept.stdout
    assert (workdir / "multirun/sweeps/t/report/report.html").is_file()
    client = MlflowClient(f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}")
    version = client.get_model_version_by_alias("fashion-classifier", "champion")
    assert client.get_run(version.run_id).data.tags["stage"] == "full"


def test_screen_trains_each_condition_once_under_one_parent(client, workdir):
    parent, kids = stage_runs(client, "screen")
    assert sorted(r.data.tags["condition"] for r in kids) == sorted(SCREEN_KEYS)
    for run in kids:
        assert run.data.tags["stage"] == "screen"
        assert run.data.tags["sweep"] == "t"
        assert run.data.tags["status"] in ("finished", "diverged")
    # Output folders are named by condition key, not by Hydra's per-invocation job number.
    for key in SCREEN_KEYS:
        assert (workdir / "multirun/sweeps/t/screen" / key / ".hydra/overrides.yaml").exists()
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"ranking.csv", "ranking.md"} <= artifacts


def test_diverging_condition_is_recorded_failed_while_others_finish(client, workdir):
    _, kids = stage_runs(client, "screen")
    by_key = {r.data.tags["condition"]: r for r in kids}
    for key, run in by_key.items():
        if key.endswith("/inf"):
            assert run.info.status == "FAILED"
            assert run.data.tags["status"] == "diverged"
            assert "non-finite" in run.data.tags["failure_reason"]
        else:
            assert run.info.status == "FINISHED"
            assert run.data.tags["status"] == "finished"
    trials = study(workdir, "screen").trials
    diverged = {t.user_attrs["condition"] for t in trials if t.user_attrs[OUTCOME] == "diverged"}
    assert diverged == {k for k in SCREEN_KEYS if k.endswith("/inf")}
    assert all(t.state.name == "FAIL" for t in trials if t.user_attrs[OUTCOME] == "diverged")


def test_ranking_table_lists_conditions_best_first(workdir, swept, client):
    """Best epoch's figures, under the names and with the values the MLflow runs table shows
    (it showed the last epoch's val_loss beside the table's best, and `val_acc` as
    `val_accuracy`)."""
    with (workdir / "multirun/sweeps/t/screen/ranking.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:9] == [
        "rank",
        "backbone",
        "head",
        "optimizer",
        "lr",
        "best_val_loss",
        "best_train_loss",
        "best_val_acc",
        "best_train_acc",
    ]
    _, screen = stage_runs(client, "screen")
    logged = {r.info.run_id: r.data.metrics for r in screen}
    for row in (r for r in rows if r["status"] == "finished"):
        for name in ("best_val_loss", "best_train_loss", "best_val_acc", "best_train_acc"):
            assert float(row[name]) == pytest.approx(logged[row["run_id"]][name]), name
    finished = [float(r["best_val_loss"]) for r in rows if r["status"] == "finished"]
    assert len(finished) == 4 and finished == sorted(finished)
    assert [r["status"] for r in rows[4:]] == ["diverged", "diverged"]
    assert "## Screen ranking" in output(swept) and "## Full runs" in output(swept)


def test_full_stage_trains_the_screens_top_k(client):
    _, screen = stage_runs(client, "screen")
    finished = [r for r in screen if r.data.tags["status"] == "finished"]
    best_two = sorted(finished, key=lambda r: r.data.metrics["best_val_loss"])[:2]
    parent, full = stage_runs(client, "full")
    assert sorted(r.data.tags["condition"] for r in full) == sorted(
        r.data.tags["condition"] for r in best_two
    )
    for run in full:
        assert run.data.tags["stage"] == "full"
        assert run.data.params["trainer.max_epochs"] == "3"
        assert {"test_loss", "test_acc", "test_f1_weighted"} <= set(run.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"comparison.csv", "comparison.md"} <= artifacts


def test_screen_trials_draw_no_figures_and_full_runs_do(client):
    """Figures for the few full runs; a screen trial's teardown stays short."""
    screened = [r for r in stage_runs(client, "screen")[1] if r.data.tags["status"] == "finished"]
    full = stage_runs(client, "full")[1][0]
    assert screened and all(not client.list_artifacts(r.info.run_id, "plots") for r in screened)
    assert {a.path for a in client.list_artifacts(full.info.run_id, "plots")} >= {
        "plots/learning_curves.png",
        "plots/gallery.png",
    }


def test_swept_values_are_optuna_params_so_optunas_tools_read_the_study(workdir, swept):
    screen = study(workdir, "screen")
    for trial in screen.trials:
        assert trial.params == trial.user_attrs["params"]
        assert all(isinstance(d, CategoricalDistribution) for d in trial.distributions.values())
    assert set(optuna.importance.get_param_importances(screen)) == {"head", "optimizer.lr"}
    full = study(workdir, "full")
    assert [t.params for t in full.trials] == [t.user_attrs["params"] for t in full.trials]


def test_each_trial_and_its_mlflow_run_name_each_other(workdir, client, swept) -> None:
    """Optuna's dashboard showed "Objective 0" and no way from a trial to its run."""
    for stage in ("screen", "full"):
        trials = study(workdir, stage)
        assert trials.metric_names == ["val_loss"]
        runs = {r.info.run_id: r for r in stage_runs(client, stage)[1]}
        ran = [t for t in trials.trials if t.user_attrs.get("outcome") in ("finished", "diverged")]
        assert ran and {t.user_attrs["mlflow_run_id"] for t in ran} == set(runs)
        for trial in ran:
            tags = runs[trial.user_attrs["mlflow_run_id"]].data.tags
            assert tags["optuna_trial"] == str(trial.number)
            assert tags["condition"] == trial.user_attrs["condition"]


def test_each_stage_parent_carries_the_settings_and_the_result(client, swept) -> None:
    """A parent's row in MLflow's runs table was dashes: no params, one bookkeeping metric."""
    for stage in ("screen", "full"):
        parent, kids = stage_runs(client, stage)
        params, metrics = parent.data.params, parent.data.metrics
        assert params["sweep.name"] == "t" and params["grid.head"] == "fc,batchnorm"
        assert params["grid.optimizer.lr"] == "0.01,0.001,inf"
        finished = [k for k in kids if k.data.tags["status"] == "finished"]
        best = min(finished, key=lambda k: k.data.metrics["best_val_loss"])
        assert parent.data.tags["best_condition"] == best.data.tags["condition"]
        for key in ("best_val_loss", "test_acc", "test_f1_weighted"):
            assert metrics[key] == best.data.metrics[key]
        assert metrics["conditions_finished"] == len(finished)
        assert metrics["conditions_failed"] == len(kids) - len(finished)
    assert stage_runs(client, "screen")[0].data.metrics["conditions_failed"] == 2  # lr=inf


def test_a_condition_runs_command_reads_as_typed(client, swept) -> None:
    """The `command` tag was unreadable: `'sweep.name='"'"'clothing_sample-demo'"'"''`."""
    _, kids = stage_runs(client, "screen")
    command = kids[0].data.tags["command"]
    assert " sweep.name=t " in command and "'\"'\"'" not in command
    assert f"tracking.run_name={kids[0].data.tags['condition']}" in command


def test_rerun_trains_nothing_new(client, workdir):
    before = {s: len(stage_runs(client, s)[1]) for s in ("screen", "full")}
    trials = {s: len(study(workdir, s).trials) for s in ("screen", "full")}
    rerun = fashion_sweeps(workdir, "sweep", *common_args(workdir), *GRID, "sweep.full.top_k=2")
    assert "6 condition(s) planned, 6 done, 0 to train" in output(rerun)
    assert "2 condition(s) planned, 2 done, 0 to train" in output(rerun)
    assert {s: len(stage_runs(client, s)[1]) for s in ("screen", "full")} == before
    assert {s: len(study(workdir, s).trials) for s in ("screen", "full")} == trials
    # One point per invocation of each stage's parent, numbered from 1 (both were at one step).
    for stage in ("screen", "full"):
        parent, _ = stage_runs(client, stage)
        history = client.get_metric_history(parent.info.run_id, "time/last_invocation_s")
        assert [m.step for m in history] == [1, 2]


def test_a_refused_condition_is_recorded_failed_and_the_others_go_on(workdir):
    """optimizer.lr=-1 stopped the whole sweep with a traceback: one policy now (docs/sweeps.md),
    a condition whose settings are refused fails with its paragraph, the rest are trained."""
    args = [*common_args(workdir), "sweep.name=refused", "backbone=mlp", "optimizer.lr=-1,0.01"]
    first = fashion_sweeps(workdir, "screen", *args)
    text = output(first)
    assert "mlp/fc/adam/-1: refused, recorded as failed" in text
    assert "OptimizerConfigError: optimizer.lr=-1" in text and "Traceback" not in text
    assert "mlp/fc/adam/0.01: finished" in text
    outcomes = sorted(t.user_attrs[OUTCOME] for t in study(workdir, "screen", "refused").trials)
    assert outcomes == ["finished", "refused"]
    again = fashion_sweeps(workdir, "screen", *args)  # refused again would change nothing
    assert "2 condition(s) planned, 2 done, 0 to train" in output(again)


def test_crashed_condition_stops_the_stage_and_is_retried(workdir):
    args = [*common_args(workdir), "sweep.name=crash", "backbone=mlp", "head=mlp"]
    args += ["optimizer.lr=0.01", "head.hidden=-1,16"]  # a negative width: no check names it
    first = fashion_sweeps(workdir, "screen", *args, check=False)
    assert first.returncode != 0
    assert "crashed" in output(first) and "max_failure_rate" in output(first)
    # A crash is not a result: the next invocation tries that condition again.
    second = fashion_sweeps(workdir, "screen", *args, "hydra.sweeper.max_failure_rate=1.0")
    assert "2 condition(s) planned, 0 done, 2 to train" in output(second)
    assert output(second).count(": finished, val_loss") == 1
    assert "1 condition(s) crashed" in output(second)
    assert "run the same command again to retry them" in output(second)


@pytest.mark.slow  # tens of seconds: `make test-slow`
def test_a_sampler_screen_trains_up_to_n_trials_and_continues_on_rerun(workdir):
    args = [*common_args(workdir), "sweep=tpe", "sweep.name=tpe", "backbone=mlp", "head=fc"]
    args += ["sweep.screen.max_epochs=1", "dataset.image_size=16"]
    fashion_sweeps(workdir, "screen", *args, "hydra.sweeper.n_trials=2")
    more = fashion_sweeps(workdir, "screen", *args, "hydra.sweeper.n_trials=3")
    assert "3 condition(s) planned, 2 done, 1 to train" in output(more)
    trials = study(workdir, "screen", "tpe").trials
    assert [t.user_attrs[OUTCOME] for t in trials] == ["finished"] * 3
    lrs = {t.user_attrs["params"]["optimizer.lr"] for t in trials}
    assert len(lrs) == 3 and all(1e-4 <= lr <= 0.1 for lr in lrs)


def test_full_stage_without_a_screen_says_what_to_run_first(workdir):
    result = fashion_sweeps(workdir, "full", *common_args(workdir), "sweep.name=none", check=False)
    assert result.returncode != 0
    assert "No finished screen named 'none/screen'" in result.stderr
    assert "fashion-sweeps screen" in result.stderr and "Traceback" not in result.stderr


def test_stage_says_which_condition_of_how_many_and_the_time_left(swept):
    lines = [line for line in output(swept).splitlines() if "condition " in line and "/6:" in line]
    assert any("condition 1/6: mlp/" in line for line in lines)
    assert any("condition 6/6: mlp/" in line and "left)" in line for line in lines)


def test_full_stage_can_fine_tune_the_winners_with_a_smaller_learning_rate(workdir, client):
    """Screen cheaply, then fine-tune the best: `sweep.full.freeze` and `sweep.full.lr_scale`."""
    args = [a for a in common_args(workdir) if a != "sweep.name=t"]
    fashion_sweeps(
        workdir,
        "full",
        *args,
        *GRID,
        "sweep.name=t_tuned",
        "sweep.full.screen_study=t/screen",
        "sweep.full.top_k=2",
        "sweep.full.freeze=0",
        "sweep.full.lr_scale=0.1",
    )
    screened = {t.user_attrs["condition"]: t.value for t in study(workdir, "screen").trials}
    experiment = client.get_experiment_by_name("clothing")
    tuned = client.search_runs([experiment.experiment_id], "tags.sweep = 't_tuned'")
    kids = [r for r in tuned if r.data.tags.get("run_kind") != "stage"]
    assert len(kids) == 2
    best_two = sorted((v, k) for k, v in screened.items() if v is not None)[:2]
    expected = set()
    for _, key in best_two:
        backbone, head, optimizer, lr = key.split("/")
        expected.add(f"{backbone}/{head}/{optimizer}/{float(lr) * 0.1:g}/backbone.freeze=0")
    assert {r.info.run_name for r in kids} == expected
    assert {r.data.params["backbone.freeze"] for r in kids} == {"0"}


@pytest.mark.slow  # tens of seconds: `make test-slow`
def test_a_changed_fixed_setting_starts_a_new_study_and_the_same_settings_resume(workdir):
    args = [*common_args(workdir), "sweep.name=fixed", "backbone=mlp", "head=fc"]
    args += ["optimizer.lr=0.01,0.001", "backbone.hidden=8"]
    fashion_sweeps(workdir, "screen", *args)
    smaller = fashion_sweeps(workdir, "screen", *args, "dataset.image_size=12")
    assert "2 condition(s) planned, 0 done, 2 to train" in output(smaller)
    assert "dataset.image_size: '16' -> '12'" in output(smaller)
    assert "new study" in output(smaller)
    (folder,) = (workdir / "multirun" / "sweeps").glob("fixed.*")  # its own folder and study
    assert (folder / "screen" / "ranking.csv").exists()
    assert len(study(workdir, "screen", folder.name).trials) == 2
    assert len(study(workdir, "screen", "fixed").trials) == 2  # the first sweep's, untouched
    # The same settings resume their study, whatever is tracked or shown differently.
    again = fashion_sweeps(
        workdir, "screen", *args, "dataset.image_size=12", "tracking.gallery_size=2"
    )
    assert "2 condition(s) planned, 2 done, 0 to train" in output(again)
    first = fashion_sweeps(workdir, "screen", *args, "cache=off")
    assert "2 condition(s) planned, 2 done, 0 to train" in output(first)
    assert "new study" not in output(first)


def test_swept_values_never_place_outputs_outside_the_stage_folder(tmp_path: Path) -> None:
    """A swept value is part of the condition's folder name, not a path: `..`, `/` and absolute
    paths stay inside multirun/sweeps/<name>/<stage>/."""
    write_clothing(tmp_path / "clothing", per_class=6, seed=4)
    # From the condition folder `.../mlp/fc/adam/0.01/note=..`, nine more `..` reach tmp_path.
    escape = "../" * 10 + "escaped"
    args = [*common_args(tmp_path), "sweep.name=esc", "backbone=mlp", "head=fc"]
    args += ["optimizer.lr=0.01", f"++note={escape},/abs/olute"]
    result = fashion_sweeps(tmp_path, "screen", *args)
    assert "mlp/fc/adam/0.01/note=/abs/olute: finished" in output(result)
    assert not (tmp_path / "escaped").exists()
    stage = (tmp_path / "multirun" / "sweeps" / "esc" / "screen").resolve()
    checkpoints = list(tmp_path.rglob("*.ckpt"))
    assert len(checkpoints) >= 2
    assert all(p.resolve().is_relative_to(stage) for p in checkpoints), checkpoints
    records = [p.parent for p in tmp_path.rglob("mlflow_run.json")]
    assert [p.resolve().parent for p in records] == [stage / "mlp" / "fc" / "adam" / "0.01"] * 2


@pytest.mark.parametrize("name", ["-rf", ".x"])
def test_a_refused_sweep_name_is_told_how_names_start(name: str) -> None:
    """`sweep.name=-rf` was refused with a message saying '-' is allowed, and nothing more."""
    from fashion_sweeps.paths import UnsafePathError, check_name

    with pytest.raises(UnsafePathError, match="starting with a letter, a digit or '_'"):
        check_name(name, "sweep.name", "the study")
    assert check_name("a-rf", "sweep.name", "the study") == "a-rf"


@pytest.mark.parametrize("name", ["..", ".", ".hidden"])
def test_a_sweep_name_that_is_not_a_folder_name_is_refused(tmp_path: Path, name: str) -> None:
    write_clothing(tmp_path / "clothing", per_class=2, seed=4)
    args = [*common_args(tmp_path), f"sweep.name={name}", "backbone=mlp", "head=fc"]
    result = fashion_sweeps(tmp_path, "screen", *args, "optimizer.lr=0.01", check=False)
    assert result.returncode != 0
    assert f"sweep.name={name!r}" in output(result) and "Traceback" not in output(result)
    assert not (tmp_path / "multirun").exists() or not any(
        p.name.endswith(".ckpt") for p in (tmp_path / "multirun").rglob("*")
    )
    assert not (tmp_path / "multirun" / "screen").exists()


def test_a_data_root_every_condition_needs_stops_the_stage_before_it_starts(tmp_path: Path):
    args = [*common_args(tmp_path), "sweep.name=nodata", "backbone=mlp", "head=fc"]
    result = fashion_sweeps(tmp_path, "screen", *args, "optimizer.lr=0.01,0.001", check=False)
    text = output(result)
    assert result.returncode == 1
    assert f"The clothing data folder '{tmp_path / 'clothing'}' does not exist" in text
    assert "Traceback" not in text and "crashed" not in text and "[1/2]" not in text
    assert "Screen ranking" not in text  # no table of NaN
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    assert client.search_runs([e.experiment_id for e in client.search_experiments()]) == []
