"""What one trial spends its time on: `train` under cProfile, its steps by cumulative seconds.

The steps are the direct callees of `train._fit_and_test` (fit, test, artifact logging...), so
the list follows the code as it changes without naming anything here.
"""

from __future__ import annotations

import cProfile
import pstats
import time
from typing import Any

from omegaconf import DictConfig

from fashion_sweeps.train import train


def _label(func: tuple[str, int, str]) -> str:
    filename, _, name = func
    module = filename.replace("\\", "/").rsplit("/", 1)[-1]
    return f"{module}:{name}" if not filename.startswith("~") else name


def profile_trial(cfg: DictConfig, top: int = 8) -> dict[str, Any]:
    """Seconds of one `train(cfg)` and of the `top` costliest steps inside it."""
    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.runcall(train, cfg)
    total = time.perf_counter() - start
    stats = pstats.Stats(profiler)
    stats.calc_callees()
    fit_and_test = next(f for f in stats.all_callees if f[2] == "_fit_and_test")
    callees = stats.all_callees[fit_and_test]
    # Values are (primitive calls, calls, own seconds, cumulative seconds).
    steps = sorted(((_label(f), v[3]) for f, v in callees.items()), key=lambda s: -s[1])
    return {"trial_s": total, "steps": [[name, seconds] for name, seconds in steps[:top]]}
