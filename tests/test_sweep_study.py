"""What a study counts as done, what the full stage selects, and how a sweep's space is read."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest

import fashion_sweeps.sweeps.sweeper  # noqa: F401  (registers hydra/sweeper=stages for sweep=)
from fashion_sweeps.sweeps.identity import sweep_settings
from fashion_sweeps.sweeps.select import top_k
from fashion_sweeps.sweeps.space import SearchSpace, params_id
from fashion_sweeps.sweeps.study import (
    abandon_leftovers,
    done_ids,
    finish_trial,
    hold,
    open_study,
    outcome_of,
)


@pytest.fixture
def study(tmp_path: Path) -> optuna.Study:
    study, created = open_study(
        f"sqlite:///{tmp_path / 'deep' / 'optuna.db'}", "s/screen", "minimize"
    )
    assert created
    return study


def sampled_trial(study: optuna.Study, params: dict, condition: str) -> optuna.trial.Trial:
    """A trial as the sweeper starts a sampled condition: asked, then held by this worker."""
    trial = study.ask()
    hold(study, trial, params, condition)
    return trial


def record(study: optuna.Study, lr: float, outcome: str, value: float | None = None) -> None:
    params = {"backbone": "mlp", "optimizer.lr": lr}
    finish_trial(study, sampled_trial(study, params, f"mlp/fc/adam/{lr:g}"), outcome, value)


def test_finished_and_diverged_are_done_crashed_and_abandoned_are_not(study):
    record(study, 0.1, "finished", 1.5)
    record(study, 1.0, "diverged")
    record(study, 0.01, "crashed")
    sampled_trial(study, {"backbone": "mlp", "optimizer.lr": 0.001}, "left running")
    assert len(abandon_leftovers(study)) == 1
    assert done_ids(study) == {
        params_id({"backbone": "mlp", "optimizer.lr": 0.1}),
        params_id({"backbone": "mlp", "optimizer.lr": 1.0}),
    }
    states = [t.state.name for t in study.trials]
    assert states == ["COMPLETE", "FAIL", "FAIL", "FAIL"]
    assert study.trials[-1].user_attrs["outcome"] == "abandoned"


def test_a_diverged_run_returns_nan_or_inf():
    assert outcome_of(math.nan) == ("diverged", None)
    assert outcome_of(math.inf) == ("diverged", None)
    assert outcome_of(0.5) == ("finished", 0.5)
    assert outcome_of(None) == ("crashed", None)


def test_top_k_ranks_finished_conditions_by_val_loss(study):
    record(study, 0.1, "finished", 0.9)
    record(study, 0.01, "finished", 0.4)
    record(study, 1.0, "diverged")
    record(study, 0.001, "finished", 0.7)
    record(study, 0.01, "finished", 0.8)  # the same condition again: it counts once, at its best
    winners = top_k(study, 2)
    assert [w.condition for w in winners] == ["mlp/fc/adam/0.01", "mlp/fc/adam/0.001"]
    assert [w.val_loss for w in winners] == [0.4, 0.7]
    assert winners[0].params == {"backbone": "mlp", "optimizer.lr": 0.01}
    assert len(top_k(study, 10)) == 3  # fewer finished than asked: those there are


def test_top_k_rejects_k_below_one(study):
    with pytest.raises(ValueError, match="top_k=0"):
        top_k(study, 0)


def test_command_line_replaces_a_configured_sweep_and_fixed_values_pass_through():
    space = SearchSpace.parse(
        {"backbone": "mobilenet_v2,vgg16", "head": "fc,batchnorm"},
        ["backbone=mobilenet_v2,vgg16,resnet18", "dataset=clothing", "optimizer.lr=0.1,0.01"],
    )
    assert list(space.distributions) == ["backbone", "head", "optimizer.lr"]
    assert space.fixed == ["dataset=clothing"]
    grid = space.grid()
    assert len(grid) == 2 * 3 * 2
    assert grid[0] == {"backbone": "mobilenet_v2", "head": "fc", "optimizer.lr": 0.1}
    assert grid[-1] == {"backbone": "resnet18", "head": "batchnorm", "optimizer.lr": 0.01}
    assert len({params_id(p) for p in grid}) == len(grid)


def test_a_grid_refuses_a_continuous_range_with_a_clear_error():
    space = SearchSpace.parse({}, ["optimizer.lr=interval(0.001, 0.1)"])
    with pytest.raises(ValueError, match="sweep=tpe"):
        space.grid()


def test_a_study_is_identified_by_every_setting_that_changes_a_result(make_cfg):
    swept = ["backbone", "optimizer.lr"]

    def settings(*fixed: str) -> dict:
        cfg = make_cfg("sweep=tiny", "sweep.stage=screen", *fixed)
        return sweep_settings(cfg, swept, list(fixed))

    same = settings()
    # Where things are, how runs are tracked or shown, which devices: the same results.
    assert settings("tracking.gallery_size=2", "cache=off", "dataset.root=/x") == same
    assert settings("trainer.devices=2", "trainer.log_every_n_steps=1") == same
    changed = ["dataset.image_size=32", "sweep.screen.max_epochs=2", "backbone.freeze=true"]
    for setting in [*changed, "seed=7", "label_smoothing=0.1"]:
        assert settings(setting) != same, setting


def test_a_setting_computed_from_the_swept_backbone_is_part_of_the_studys_identity(make_cfg):
    """`dataset.image_size: ${fashion_sweeps_native_resolution:${backbone._target_}}` differs from
    one condition to the next: the identity records the expression, not the value it takes for
    the base config's backbone (which equals a fixed 224 and would resume a 224-px study)."""
    swept = ["backbone"]
    native = "dataset.image_size='${fashion_sweeps_native_resolution:${backbone._target_}}'"

    def settings(*fixed: str) -> dict:
        cfg = make_cfg("sweep=tiny", "sweep.stage=screen", "backbone=efficientnet_lite0", *fixed)
        return sweep_settings(cfg, swept, list(fixed))

    assert settings(native) != settings("dataset.image_size=224")
    assert settings(native) == settings(native)
