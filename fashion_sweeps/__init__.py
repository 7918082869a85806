"""fashion_sweeps: experiment sweeps with tracked runs for fashion image classification."""

from pathlib import Path

from omegaconf import OmegaConf

__version__ = "0.1.0"

SAMPLE_DIR = Path(__file__).resolve().parent / "sample"

# `${fashion_sweeps_sample:clothing_sample}` in a config: the bundled sample, wherever installed.
OmegaConf.register_resolver(
    "fashion_sweeps_sample", lambda name: str(SAMPLE_DIR / name), replace=True
)
