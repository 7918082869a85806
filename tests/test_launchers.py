"""Hydra launchers: trials of a sweep run as separate processes (submitit_local, the stand-in of
SLURM) and all land in MLflow; the SLURM preset sizes each job from the trainer config."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient

from fashion_sweeps.config import CONF_DIR


@pytest.mark.slow  # tens of seconds: `make test-slow`
def test_submitit_local_runs_two_trials_in_separate_processes_that_both_log(
    fmnist_root: Path, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    done = subprocess.run(
        [
            sys.executable, "-m", "fashion_sweeps.cli", "screen",
            "sweep=tiny", "sweep.name=t", "dataset=fashion_mnist", f"dataset.root={fmnist_root}",
            "backbone=mlp", "backbone.hidden=16", "optimizer.lr=0.01,0.001",
            "hydra/launcher=submitit_local", "hydra.sweeper.n_jobs=2",
            f"tracking.dir={tmp_path / 'mlruns'}", "trainer.progress=lines",
        ],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    (parent,) = [r for r in runs if r.data.tags.get("run_kind") == "stage"]
    trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.data.tags["lr"] for r in trials) == ["0.001", "0.01"]
    assert all(r.info.status == "FINISHED" for r in trials)
    assert all("val_loss" in r.data.metrics for r in trials)
    pids = {r.data.tags["pid"] for r in trials}
    assert len(pids) == 2, "each trial runs in a process of its own"
    # submitit started them as two jobs, one folder of logs each.
    jobs = tmp_path / "multirun" / "sweeps" / "t" / "screen" / ".submitit"
    assert len([p for p in jobs.iterdir() if p.name.isdigit()]) == 2


def test_slurm_preset_starts_one_task_per_device_on_each_node() -> None:
    with initialize_config_dir(str(CONF_DIR)):
        ddp = compose(
            "config",
            overrides=["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4",
                       "trainer.num_nodes=2", "hydra.launcher.partition=gpu"],
            return_hydra_config=True,
        )  # fmt: skip
        cpu = compose("config", overrides=["hydra/launcher=slurm"], return_hydra_config=True)
    launcher = ddp.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.tasks_per_node, launcher.nodes, launcher.gpus_per_task) == (4, 2, 1)
    assert launcher.partition == "gpu"
    assert (cpu.hydra.launcher.tasks_per_node, cpu.hydra.launcher.nodes) == (1, 1)
    # A GPU asked for on a CPU-only cluster: sbatch refuses the whole array (invalid gres).
    assert cpu.hydra.launcher.gpus_per_task is None


@pytest.mark.parametrize(
    "args,preset,expected",
    [
        (["hydra/launcher=joblib", "sweep=tiny"], None, "PASSIVE"),
        (["hydra/launcher=submitit_local"], None, "PASSIVE"),
        (["hydra/launcher=slurm"], None, None),  # a node of its own per trial
        (["sweep=tiny"], None, None),  # trials one after the other: threads may spin
        (["hydra/launcher=joblib"], "active", "active"),  # the user's choice wins
    ],
)
def test_trials_side_by_side_make_idle_threads_sleep(monkeypatch, args, preset, expected) -> None:
    from fashion_sweeps.sweeps.commands import share_cores

    if preset is None:
        monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    else:
        monkeypatch.setenv("OMP_WAIT_POLICY", preset)
    share_cores(args)
    assert os.environ.get("OMP_WAIT_POLICY") == expected


def test_a_slurm_task_trains_with_as_many_threads_as_it_was_given_cores(monkeypatch) -> None:
    import torch

    from fashion_sweeps.trainer.distributed import fit_threads_to_allocation

    before = torch.get_num_threads()
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")
    try:
        fit_threads_to_allocation()  # without CPU binding a task sees every core of its node
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
