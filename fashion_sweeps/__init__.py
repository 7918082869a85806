"""fashion_sweeps: experiment sweeps with tracked runs for fashion image classification."""

from pathlib import Path

from omegaconf import OmegaConf

__version__ = "0.1.0"

SAMPLE_DIR = Path(__file__).resolve().parent / "sample"

# `${fashion_sweeps_sample:clothing_sample}` in a config: the bundled sample, wherever installed.
OmegaConf.register_resolver(
    "fashion_sweeps_sample", lambda name: str(SAMPLE_DIR / name), replace=True
)


def _gpus_per_task(accelerator: str) -> int | None:
    """One GPU per SLURM task for GPU trainers; none for `trainer=cpu` (asking a CPU-only
    cluster for a GPU makes sbatch refuse the whole array)."""
    return 1 if str(accelerator) in ("gpu", "cuda") else None


# `${fashion_sweeps_gpus_per_task:${trainer.accelerator}}` in conf/hydra/launcher/slurm.yaml.
OmegaConf.register_resolver("fashion_sweeps_gpus_per_task", _gpus_per_task, replace=True)
