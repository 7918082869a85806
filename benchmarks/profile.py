"""What one trial spends its time on: `train` under cProfile, its steps by cumulative seconds.

The steps are what `train._fit_and_test` calls (fit, test, artifact logging...), through the
helpers of train.py it splits into, so the list follows the code as it changes without naming
anything here.
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


Callees = dict[tuple[str, int, str], dict[tuple[str, int, str], tuple[Any, ...]]]


def _steps(callees: Callees, func: tuple[str, int, str]) -> dict[str, float]:
    """Cumulative seconds of what `func` calls; a function of `func`'s own file (a helper it
    was split into) counts as what it calls in turn."""
    steps: dict[str, float] = {}
    for callee, values in callees[func].items():
        # Values are (primitive calls, calls, own seconds, cumulative seconds).
        inner = _steps(callees, callee) if callee[0] == func[0] and callee in callees else {}
        for name, seconds in (inner or {_label(callee): values[3]}).items():
            steps[name] = steps.get(name, 0.0) + seconds
    return steps


def profile_trial(cfg: DictConfig, top: int = 8) -> dict[str, Any]:
    """Seconds of one `train(cfg)` and of the `top` costliest steps inside it."""
    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.runcall(train, cfg)
    total = time.perf_counter() - start
    stats = pstats.Stats(profiler)
    stats.calc_callees()
    fit_and_test = next(f for f in stats.all_callees if f[2] == "_fit_and_test")
    steps = sorted(_steps(stats.all_callees, fit_and_test).items(), key=lambda s: -s[1])
    return {"trial_s": total, "steps": [[name, seconds] for name, seconds in steps[:top]]}
