"""fashion_sweeps: experiment sweeps with tracked runs for fashion image classification."""

import os
from pathlib import Path

from omegaconf import OmegaConf


# Before torch loads OpenMP: on a busy machine (other jobs, parallel trials), waiting threads
# should sleep instead of spinning, or they hold the cores their peers wait for: training ran
# 2-10x faster under load that way. On an idle machine spinning is OpenMP's default and 1.8x
# faster for small CNNs (measured on 2 cores). So sleep only when the machine is already busy;
# setting OMP_WAIT_POLICY yourself (active / passive) always wins.
def _machine_busy() -> bool:
    try:
        return os.getloadavg()[0] > 0.5 * (os.cpu_count() or 1)
    except OSError:  # no load average on this platform
        return False


if "OMP_WAIT_POLICY" not in os.environ and _machine_busy():
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"

__version__ = "0.1.0"

SAMPLE_DIR = Path(__file__).resolve().parent / "sample"

# `${fashion_sweeps_sample:clothing_sample}` in a config: the bundled sample, wherever installed.
OmegaConf.register_resolver(
    "fashion_sweeps_sample", lambda name: str(SAMPLE_DIR / name), replace=True
)
