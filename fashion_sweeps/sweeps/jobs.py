"""A stage's conditions as Hydra jobs: the overrides each job is launched with, its condition key
(its MLflow run name and its key in the stage tables) and its output folder.

Each job gets its condition as overrides, the stage's MLflow parent run id, tags, and an output
folder named by its condition key, one folder level per part: a swept value is a folder name,
never a path (paths.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
from hydra.core.utils import JobReturn
from omegaconf import DictConfig

from fashion_sweeps.config import Condition, condition_key
from fashion_sweeps.paths import subfolder
from fashion_sweeps.sweeps.space import override_lines, quoted

# Swept keys that the condition key (`mobilenet_v2/fc/sgd/0.01`) already shows.

# Override lines -> the job's config, composed the way Hydra composes the job.
Compose = Callable[[list[str]], DictConfig]


@dataclass
class Job:
    params: dict[str, Any]
    condition: str  # `mlp/fc/adam/0.01/note=x`: the run name and the tables' key
    folder: str  # the condition's folder under the stage's, each part a folder name (paths.py)
    trial: optuna.trial.Trial | None = None


@dataclass
class StageJobs:
    """The jobs of one stage: `fixed`, the sweep's fixed overrides with its stage and name, and
    `common`, where every job is tracked (the stage's parent run, the experiment, the tags)."""

    compose: Compose
    fixed: list[str]
    common: list[str]

    @classmethod
    def of(
        cls,
        compose: Compose,
        space_fixed: list[str],
        stage: str,
        name: str,
        experiment: str,
        parent_run_id: str,
    ) -> StageJobs:
        fixed = [
            line
            for line in space_fixed
            if line.lstrip("+~").split("=", 1)[0] not in ("sweep.stage", "sweep.name")
        ]
        fixed += [f"sweep.stage={stage}", f"sweep.name={quoted(name)}"]
        common = [
            f"tracking.parent_run_id={quoted(parent_run_id)}",
            f"tracking.experiment={quoted(experiment)}",
            f"++tracking.tags.sweep={quoted(name)}",
            f"++tracking.tags.stage={stage}",
        ]
        return cls(compose, fixed, common)

    def job(self, params: dict[str, Any]) -> Job:
        """The job's condition key, composed the way its job will be; swept keys the key does
        not show are appended (`.../backbone.freeze=true`) so that conditions stay distinct. Its
        folder has one level per part: a swept value is a folder name, never a path."""
        cfg = self.compose([*self.fixed, *override_lines(params)])
        extras = [
            f"{key.lstrip('+~')}={value}"
            for key, value in params.items()
            if key.lstrip("+~") not in Condition.CONFIG_KEYS
        ]
        parts = [*condition_key(cfg).split("/"), *extras]
        return Job(params, "/".join(parts), subfolder(parts))

    def overrides(self, job: Job) -> list[str]:
        """What the launcher runs the job with: its condition over the fixed values."""
        return [
            *(line for line in self.fixed if line.split("=", 1)[0] not in job.params),
            *override_lines(job.params),
            *self.common,
            f"tracking.run_name={quoted(job.condition)}",
            f"hydra.sweep.subdir={quoted(job.folder)}",
            # The run names its Optuna trial; the trial, its run (sweeper.py, once it ran).
            *([f"++tracking.tags.optuna_trial={job.trial.number}"] if job.trial else []),
        ]


def job_dir(ret: JobReturn) -> str | None:
    """The job's output folder (its run folder), as its Hydra config resolved it."""
    hydra_cfg = getattr(ret, "hydra_cfg", None)
    return str(hydra_cfg.hydra.runtime.output_dir) if hydra_cfg is not None else None
