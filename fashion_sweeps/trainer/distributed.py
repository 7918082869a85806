"""Which process of a multi-process (DDP) run this is, known before Lightning sets up its strategy
(conf/trainer/ddp.yaml, ddp_cpu.yaml).

Every rank runs `train()`: Lightning's `ddp` relaunches the command once per extra device, SLURM
(`srun`, submitit's `tasks_per_node`) and `torchrun` start one process per device themselves.
Only rank 0 may create and write the MLflow run, so the rank has to be read from the variables
these launchers set, before any Trainer exists.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from fashion_sweeps import run_folder

log = logging.getLogger(__name__)

# How long ranks > 0 wait for rank 0 to prepare the data (it builds the disk caches they read).
DATA_WAIT_S = 3600.0


def global_rank() -> int:
    """This process's rank: `RANK` (torchrun), `SLURM_PROCID` (one task per device), else the
    `NODE_RANK`/`LOCAL_RANK` of Lightning's own relaunch; 0 for an ordinary process."""
    for name in ("RANK", "SLURM_PROCID"):
        if name in os.environ:
            return int(os.environ[name])
    local = int(os.environ.get("LOCAL_RANK", 0))
    node = int(os.environ.get("NODE_RANK", os.environ.get("GROUP_RANK", 0)))
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", max(local + 1, 1)))
    return node * per_node + local


def is_rank_zero() -> bool:
    return global_rank() == 0


def fit_threads_to_allocation() -> None:
    """Use as many torch threads as SLURM gave this task cores. Where SLURM does not bind tasks
    to their cores (TaskPlugin=task/none, some clusters), each task sees every core of its node
    and torch would start one thread per core in every task sharing the node: array tasks of a
    screen then oversubscribe it several times over."""
    cpus = int(os.environ.get("SLURM_CPUS_PER_TASK", 0))
    if 0 < cpus < torch.get_num_threads():
        log.info("Using %d torch threads, the cores SLURM allocated to this task.", cpus)
        torch.set_num_threads(cpus)


def _external_launch_id() -> str | None:
    """An id shared by all ranks of one launch when a launcher outside Lightning started them all
    at once (SLURM tasks, torchrun); None otherwise (Lightning starts ranks > 0 itself, after
    rank 0 prepared the data)."""
    if int(os.environ.get("SLURM_NTASKS", 1)) > 1:
        restarts = os.environ.get("SLURM_RESTART_COUNT", "0")
        return f"slurm-{os.environ.get('SLURM_JOB_ID', 'job')}-{restarts}"
    if "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", 1)) > 1:
        run = os.environ.get("TORCHELASTIC_RUN_ID", "none")
        return f"torchrun-{run}-{os.environ.get('MASTER_PORT', '')}"
    return None


def wait_for_rank_zero_data(output_dir: Path) -> None:
    """On ranks > 0 started together with rank 0, wait until rank 0 has prepared the data, so the
    image and feature caches are built once and then read, not built by every rank at once."""
    launch = _external_launch_id()
    if launch is None or is_rank_zero():
        return
    marker = run_folder.data_ready_marker(output_dir, launch)
    deadline = time.monotonic() + DATA_WAIT_S
    while not marker.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"Rank {global_rank()} waited {DATA_WAIT_S:.0f}s for rank 0 to prepare the data "
                f"({marker} never appeared): rank 0 probably failed; see its log."
            )
        time.sleep(1.0)


def mark_data_ready(output_dir: Path) -> None:
    """Rank 0, once its data is prepared: let the waiting ranks go on."""
    launch = _external_launch_id()
    if launch is None or not is_rank_zero():
        return
    output_dir.mkdir(parents=True, exist_ok=True)
    run_folder.data_ready_marker(output_dir, launch).touch()


def check_relaunch_possible(trainer: pl.Trainer) -> None:
    """Lightning's `ddp` on one machine starts ranks > 0 by running the command line again. That is
    only right for a single Hydra run: in a `--multirun` every rank would start the whole sweep,
    and outside Hydra (a test, a notebook) it would rerun whatever program called us."""
    from pytorch_lightning.strategies.launchers.subprocess_script import (
        _SubprocessScriptLauncher,
    )

    launcher = getattr(trainer.strategy, "launcher", None)
    if not isinstance(launcher, _SubprocessScriptLauncher) or launcher.num_processes < 2:
        return
    if trainer.strategy.cluster_environment.creates_processes_externally:
        return  # SLURM / torchrun started every rank already
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.RUN:
        return
    where = "inside a --multirun (a sweep stage)" if HydraConfig.initialized() else "outside Hydra"
    raise ValueError(
        f"trainer.strategy=ddp with {launcher.num_processes} devices on one machine cannot run "
        f"{where}: Lightning starts the extra ranks by running the command line again. Train "
        "several devices per run as a single run (`fashion-sweeps train trainer=ddp ...`), or "
        "sweep on SLURM with one task per device (`hydra/launcher=slurm`, which sets "
        "tasks_per_node to trainer.devices); inside a local sweep use trainer=gpu or trainer=cpu."
    )
