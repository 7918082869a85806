"""Where a run was measured and how to run it again: the tags every run carries (host, pid,
SLURM job, the machine's CPU and GPUs, the command line, the recipe)."""

from __future__ import annotations

import functools
import os
import platform
import shlex
import shutil
import socket
import subprocess
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from fashion_sweeps.redact import redact


def where_it_runs() -> dict[str, str]:
    """Tags that find a run's process and logs: host, pid and, on SLURM, the job (array) id; the
    `machine` its figures were measured on; the `command` that runs it again."""
    tags = {"host": socket.gethostname(), "pid": str(os.getpid()), "machine": machine()}
    started = process_start(os.getpid())
    if started:
        tags["pid_started"] = started
    job = os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID")
    if job:
        task = os.environ.get("SLURM_ARRAY_TASK_ID")
        tags["slurm_job_id"] = f"{job}_{task}" if task else job
    command = command_line()
    if command:
        tags["command"] = command
    return tags


def process_start(pid: int) -> str | None:
    """When a process started, in clock ticks since boot (Linux's /proc); None elsewhere or when
    the process is gone. With the pid it names one process: pids are reused."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    # Field 22; the command name (field 2, in parentheses) may hold spaces, so count after it.
    return stat.rsplit(")", 1)[1].split()[19]


def process_gone(host: str | None, pid: str | int | None, started: str | None = None) -> bool:
    """Whether the process a run or a sweep claim names (tags host, pid, pid_started) has ended.
    Only a process of this host can be looked at: any other counts as alive."""
    if host != socket.gethostname() or not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # someone else's live process
        pass
    except (ValueError, OverflowError):  # not a pid
        return False
    now = process_start(int(pid))  # a live process of that pid: the same one, or a newer one?
    return started is not None and now is not None and now != started


def recipe_tags(cfg: DictConfig) -> dict[str, str]:
    """`recipe=<name>` for a run of a recipe (`experiment=<name>`, its `recipe:` block)."""
    recipe = cfg.get("recipe")
    return {"recipe": str(recipe.name)} if recipe and recipe.get("name") else {}


def command_line() -> str | None:
    """`fashion-sweeps train <overrides>`: the command that runs this job again, from Hydra's task
    overrides (shell-quoted; hydra.* options left out); None outside train's Hydra app (a config
    composed in Python has no command line)."""
    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.job.get("config_name") not in (None, "config"):
        return None
    overrides = [shlex.quote(str(o)) for o in hydra_cfg.overrides.task]
    return redact(" ".join(["fashion-sweeps", "train", *overrides]))[:5000]


@functools.cache
def machine() -> str:
    """`AMD EPYC, 2 cores, no GPU`: the CPU model, the cores this process may use, the GPUs."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{_cpu_model()}, {cores} cores, {_gpus() or 'no GPU'}"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return " ".join(line.split(":", 1)[1].split())
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _gpus() -> str:
    """`1 x NVIDIA A100-SXM4-40GB`, ... or '' (nvidia-smi: CUDA itself is not initialised, so
    forked processes and DDP launchers are unaffected)."""
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            done = subprocess.run(
                [smi, "--query-gpu=name", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            )
            names = [n.strip() for n in done.stdout.splitlines() if n.strip()]
        except (OSError, subprocess.SubprocessError):
            names = []
        if names:
            return ", ".join(f"{names.count(n)} x {n}" for n in dict.fromkeys(names))
    import torch

    if torch.backends.mps.is_available():
        return "Apple GPU (MPS)"
    from lightning_fabric.accelerators.cuda import num_cuda_devices

    count = num_cuda_devices()
    return f"{count} CUDA GPU(s)" if count else ""
