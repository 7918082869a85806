"""The `hydra/sweeper=stages` config: the Optuna sweeper's, so its options, samplers and
override syntax mean the same here."""

from __future__ import annotations

from dataclasses import dataclass

from hydra.core.config_store import ConfigStore
from hydra_plugins.hydra_optuna_sweeper.config import OptunaSweeperConf


@dataclass
class StagesSweeperConf(OptunaSweeperConf):
    _target_: str = "hydra_plugins.fashion_sweeps_stages.stages_sweeper.StagesSweeper"
    n_jobs: int = 1  # the basic launcher runs jobs one after another anyway


ConfigStore.instance().store(
    group="hydra/sweeper", name="stages", node=StagesSweeperConf, provider="fashion_sweeps"
)
