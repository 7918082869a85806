"""The `stages` sweeper is a Hydra plugin: Hydra's own entry point, `--cfg hydra` and
`--info plugins` find it without our commands importing anything first."""

from __future__ import annotations

import subprocess
from pathlib import Path

import optuna
from conftest import fashion_sweeps, write_clothing


def train_app(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """`python -m fashion_sweeps.train ...`: Hydra's entry point, not `fashion-sweeps`."""
    return fashion_sweeps(cwd, *args, check=False, module="fashion_sweeps.train")


def test_hydra_lists_the_stages_sweeper_among_its_plugins(tmp_path: Path) -> None:
    result = train_app(tmp_path, "--info", "plugins")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "StagesSweeper" in result.stdout
    # Found through its entry point: an editable install warned that its scan saw nothing.
    assert "could not discover plugins" not in result.stderr


def test_cfg_hydra_composes_a_sweep_with_the_stages_sweeper(tmp_path: Path) -> None:
    result = train_app(tmp_path, "sweep=grid", "--cfg", "hydra")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "_target_: hydra_plugins.fashion_sweeps_stages" in result.stdout
    assert "study_name: ${sweep.name}/${sweep.stage}" in result.stdout


def test_multirun_of_the_train_app_runs_a_screen(tmp_path: Path) -> None:
    root = write_clothing(tmp_path / "clothing", per_class=6, seed=4)
    result = train_app(
        tmp_path,
        "--multirun",
        "sweep=tiny",
        "dataset=clothing",
        f"dataset.root={root}",
        f"tracking.dir={tmp_path / 'mlruns'}",
        "trainer.progress=lines",
        "sweep.name=plugin",
        "backbone=mlp",
        "optimizer.lr=0.01",
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    storage = f"sqlite:///{tmp_path / 'multirun' / 'sweeps' / 'optuna.db'}"
    study = optuna.load_study(study_name="plugin/screen", storage=storage)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE]
