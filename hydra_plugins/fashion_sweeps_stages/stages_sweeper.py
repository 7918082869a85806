"""The Hydra-facing sweeper class: Hydra instantiates it from `hydra.sweeper`; the work is done
by `fashion_sweeps.sweeps.sweeper.StageSweep`."""

from __future__ import annotations

from typing import Any

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

from . import config as config  # registers the config with Hydra when the plugin is scanned


class StagesSweeper(Sweeper):
    """Runs one stage (screen or full) of a resumable sweep; see `fashion_sweeps.sweeps`."""

    def __init__(self, **options: Any) -> None:
        # Imported here: Hydra imports this module for every app it starts, sweep or not.
        from fashion_sweeps.sweeps.sweeper import StageSweep

        self.sweeper = StageSweep(**options)

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.sweeper.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> None:
        self.sweeper.sweep(arguments)
