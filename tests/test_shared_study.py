"""Several workers on one sweep stage through a shared study storage (journal file here): every
condition trained exactly once, claims of dead workers taken back, live ones left alone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState

from fashion_sweeps.sweeps.space import SearchSpace, params_id
from fashion_sweeps.sweeps.storage import open_storage
from fashion_sweeps.sweeps.study import (
    ALIVE,
    CONDITION,
    HOST,
    OUTCOME,
    PARAMS,
    PID,
    STALE_S,
    WORKER,
    abandon_leftovers,
    claim,
    finish_trial,
    open_study,
    others_active,
    worker_id,
)

LRS = ["0.1", "0.03", "0.01", "0.003", "0.001", "0.0003"]


def other_workers_claim(study: optuna.Study, params: dict, **who) -> None:
    """A RUNNING trial as another worker process leaves it in the storage."""
    attrs = {WORKER: "elsewhere-1", HOST: "elsewhere", PID: 1}
    attrs |= {ALIVE: time.time(), PARAMS: params, **who}
    template = optuna.trial.create_trial(state=TrialState.RUNNING, user_attrs=attrs)
    study._storage.create_new_trial(study._study_id, template_trial=template)


@pytest.fixture
def study(tmp_path: Path) -> optuna.Study:
    return open_study(f"journal:{tmp_path / 'optuna.journal'}", "s/screen", "minimize")[0]


def test_a_condition_a_live_worker_holds_is_not_claimed_again(study) -> None:
    other_workers_claim(study, {"optimizer.lr": 0.1})
    assert claim(study, {"optimizer.lr": 0.1}, "mlp/fc/adam/0.1") is None
    mine = claim(study, {"optimizer.lr": 0.01}, "mlp/fc/adam/0.01")
    assert mine is not None and mine.user_attrs[WORKER] == worker_id()
    assert others_active(study) == 1


def test_claims_of_gone_workers_are_abandoned_and_trained_again(study) -> None:
    stale = time.time() - STALE_S - 1
    other_workers_claim(study, {"optimizer.lr": 0.1}, **{ALIVE: stale})
    other_workers_claim(study, {"optimizer.lr": 0.01}, **{WORKER: worker_id()})
    other_workers_claim(study, {"optimizer.lr": 0.001})  # alive elsewhere
    assert len(abandon_leftovers(study)) == 2
    states = {t.user_attrs[PARAMS]["optimizer.lr"]: t for t in study.trials}
    assert states[0.1].user_attrs[OUTCOME] == "abandoned" and states[0.1].state == TrialState.FAIL
    assert states[0.01].user_attrs[OUTCOME] == "abandoned"
    assert states[0.001].state == TrialState.RUNNING
    assert claim(study, {"optimizer.lr": 0.1}, "mlp/fc/adam/0.1") is not None


def test_the_full_stage_waits_for_screen_conditions_other_workers_train(study, monkeypatch):
    """A worker done with its share of the screen trained a full run of the best of a partial
    screen (the worst condition, val 53.3) while another worker still trained the real winner."""
    import threading

    from fashion_sweeps.sweeps import select

    monkeypatch.setattr(select, "SCREEN_POLL_S", 0.05)
    mine = claim(study, {"optimizer.lr": 0.1}, "mlp/fc/adam/0.1")
    finish_trial(study, mine, "finished", 53.3)
    other_workers_claim(study, {"optimizer.lr": 0.01}, **{CONDITION: "mlp/fc/adam/0.01"})
    (theirs,) = study.get_trials(states=(TrialState.RUNNING,))

    def other_worker_finishes() -> None:
        time.sleep(0.5)
        study.tell(theirs.number, 0.7)

    finisher = threading.Thread(target=other_worker_finishes)
    finisher.start()
    select.wait_for_screen(study)
    finisher.join()
    assert [w.condition for w in select.top_k(study, 1)] == ["mlp/fc/adam/0.01"]


def test_an_unopenable_storage_url_says_what_works() -> None:
    with pytest.raises(ValueError, match=r"journal:/shared/path.journal"):
        open_storage("nosuchdb://host/db")


def screen_worker(
    workdir: Path, fmnist_root: Path, journal: Path, extra: list[str] | None = None
) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return subprocess.Popen(
        [
            sys.executable, "-m", "fashion_sweeps.cli", "screen",
            "sweep=tiny", "sweep.name=shared", "dataset=fashion_mnist",
            f"dataset.root={fmnist_root}", "backbone=mlp", "backbone.hidden=16",
            f"hydra.sweeper.storage=journal:{journal}",
            f"tracking.dir={workdir / 'mlruns'}", "trainer.progress=lines",
            *(extra or [f"optimizer.lr={','.join(LRS)}"]),
        ],
        cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


@pytest.mark.slow  # two sweep processes, ~30-60 s: `make test-slow`
def test_two_workers_on_one_journal_study_train_every_condition_once(
    tmp_path: Path, fmnist_root: Path
) -> None:
    journal = tmp_path / "shared" / "optuna.journal"
    procs = [screen_worker(tmp_path, fmnist_root, journal) for _ in range(2)]
    logs = [p.communicate(timeout=900)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(log[-3000:] for log in logs)

    study = optuna.load_study(
        study_name="shared/screen", storage=open_storage(f"journal:{journal}")
    )
    finished = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert sorted(str(t.user_attrs[PARAMS]["optimizer.lr"]) for t in finished) == sorted(LRS)
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    parents = [r for r in runs if r.data.tags.get("run_kind") == "stage"]
    assert len(parents) == 1, "both workers report under one stage parent"
    trained = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert sorted(r.data.tags["lr"] for r in trained) == sorted(LRS)  # each exactly once
    assert all(r.info.status == "FINISHED" for r in trained)


def test_claims_record_swept_values_as_optuna_params_for_importances(study) -> None:
    """optuna.importance and optuna-dashboard read `trial.params`: a grid's claims fill them
    (categorical), and a grid that gains a value later still trains, its new value kept as the
    condition's identity only (Optuna cannot widen a categorical space)."""
    space = SearchSpace.parse({}, ["head=fc,batchnorm", "optimizer.lr=0.1,0.01"])
    distributions = space.grid_distributions()
    assert all(isinstance(d, CategoricalDistribution) for d in distributions.values())
    for i, point in enumerate(space.grid()):
        trial = claim(study, point, params_id(point), distributions)
        finish_trial(study, trial, "finished", 1.0 + i * (0.5 if point["head"] == "fc" else 0.1))
    assert all(t.params == t.user_attrs[PARAMS] for t in study.trials)
    assert set(optuna.importance.get_param_importances(study)) == {"head", "optimizer.lr"}

    wider = SearchSpace.parse({}, ["head=fc,batchnorm", "optimizer.lr=0.1,0.01,0.001"])
    new = {"head": "fc", "optimizer.lr": 0.001}
    trial = claim(study, new, params_id(new), wider.grid_distributions())
    assert trial is not None
    assert study.trials[-1].params == {"head": "fc"}
    assert study.trials[-1].user_attrs[PARAMS] == new


def wait_for(proc: subprocess.Popen, text: str) -> str:
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if text in line:
            return "".join(seen)
    raise AssertionError(f"{text!r} never came:\n{''.join(seen)[-3000:]}")


@pytest.mark.slow  # tens of seconds: `make test-slow`
def test_a_condition_of_a_worker_killed_mid_run_is_trained_by_the_survivor(
    tmp_path: Path, fmnist_root: Path
) -> None:
    """The dead worker's condition was passed over by the survivor while it was held: the
    survivor trains it before closing the stage, never leaving it RUNNING under a parent
    closed as complete."""
    journal = tmp_path / "shared" / "optuna.journal"
    lrs = ["0.01", "0.001"]
    extra = [f"optimizer.lr={','.join(lrs)}", "sweep.screen.max_epochs=3"]
    first = screen_worker(tmp_path, fmnist_root, journal, extra)
    wait_for(first, "epoch 1/3")
    first.send_signal(signal.SIGSTOP)  # alive, holding its condition, while the other starts
    try:
        second = screen_worker(tmp_path, fmnist_root, journal, extra)
        wait_for(second, "epoch 1/3")  # training its own condition: it passed the held one
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    log = second.communicate(timeout=600)[0]
    assert second.returncode == 0, log[-3000:]

    study = optuna.load_study(
        study_name="shared/screen", storage=open_storage(f"journal:{journal}")
    )
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
    finished = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert sorted(str(t.user_attrs[PARAMS]["optimizer.lr"]) for t in finished) == sorted(lrs)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [r.info.status for r in runs if r.info.status == "RUNNING"] == []
    (parent,) = [r for r in runs if r.data.tags.get("run_kind") == "stage"]
    assert parent.info.status == "FINISHED"
    assert parent.data.tags.get("n_finished") == "2" and "n_running" not in parent.data.tags
