"""`fashion-sweeps train key=value...` (or `python -m fashion_sweeps.train ...`): one run.

The Hydra app and its exits: 0 done, 1 for a user's mistake (one paragraph, no traceback) or a
diverged run, the signal's code for an interrupt. The run itself is `training.py`, imported when
a run starts, so that `--help`, `--cfg job` and override completion answer without loading
torch, Lightning or MLflow.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from fashion_sweeps import interrupts, run_folder
from fashion_sweeps.config import CONF_DIR, condition_key
from fashion_sweeps.errors import user_error
from fashion_sweeps.redact import install_log_redaction, redact_file

log = logging.getLogger(__name__)
# `python -m fashion_sweeps.train` (DDP ranks, SLURM jobs) does not pass through cli.main.
install_log_redaction()


def train(cfg: DictConfig, callbacks: list | None = None) -> float:
    """One run (`training.train`); `callbacks` are extra Lightning callbacks."""
    from fashion_sweeps.training import train as train_run

    return train_run(cfg, callbacks)


def redact_hydra_files() -> None:
    """Hydra writes the job's config and overrides (`.hydra/`, the sweep's `multirun.yaml`)
    before the job starts, tracking URI and all: mask its credentials there."""
    hydra_cfg = HydraConfig.get()
    files = []
    if hydra_cfg.output_subdir is not None:
        files += (Path(hydra_cfg.runtime.output_dir) / hydra_cfg.output_subdir).glob("*.yaml")
    if hydra_cfg.mode == RunMode.MULTIRUN:
        files.append(Path(hydra_cfg.sweep.dir) / "multirun.yaml")
    for path in files:
        redact_file(path)


@hydra.main(config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> float:
    interrupts.install()
    redact_hydra_files()
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        value = train(cfg)
    except KeyboardInterrupt:
        if multirun:
            raise  # the sweep records the condition as abandoned and stops (sweeps/commands.py)
        folder = run_folder.output_dir(cfg)
        log.error(
            "Run %s: %s. Its last checkpoint is kept in %s: run the same command with "
            "hydra.run.dir=%s to train on from it.",
            condition_key(cfg),
            interrupts.reason(),
            folder,
            folder,
        )
        raise SystemExit(interrupts.exit_code()) from None
    except Exception as err:
        known = user_error(err)
        # In a multirun the sweeper records the failed trial and goes on.
        if known is None or multirun:
            raise
        log.error("%s: %s", type(known).__name__, known)
        raise SystemExit(1) from None
    if math.isnan(value) and not multirun:
        raise SystemExit(1)  # diverged, said above and recorded FAILED: scripts must see it too
    return value


if __name__ == "__main__":
    # The task function Hydra hands to a launcher must be importable: a function of `__main__`
    # is pickled by value for SLURM/submitit jobs, with its module's globals.
    from fashion_sweeps.train import main as importable_main

    importable_main()
