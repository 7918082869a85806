"""Progress lines for long work whose output is not a terminal (cluster logs, `make ... > log`):
a line at least every `PROGRESS_EVERY_S` seconds with what is done, the rate and the time left,
so a run is never silent for minutes."""

from __future__ import annotations

import logging
import statistics
import time

PROGRESS_EVERY_S = 30.0


def duration(seconds: float) -> str:
    """`42s`, `3m05s`, `1h02m`."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class ProgressLines:
    """`update(done, total, ...)` logs a line when `every` seconds have passed since the last
    one; the rate counts `items` (images) per second since the start."""

    def __init__(self, log: logging.Logger, every: float | None = None) -> None:
        self.log = log
        self.every = PROGRESS_EVERY_S if every is None else every
        self.start = self.last = time.perf_counter()

    def due(self) -> bool:
        return time.perf_counter() - self.last >= self.every

    def update(self, what: str, items: int, left_s: float | None = None) -> None:
        """Log `what` with the rate of `items` so far and the estimated time left, if due."""
        if not self.due():
            return
        now = time.perf_counter()
        self.last = now
        rate = items / max(now - self.start, 1e-9)
        left = f", ~{duration(left_s)} left" if left_s is not None else ""
        self.log.info("%s, %.1f images/s%s", what, rate, left)


def stage_progress(done: int, total: int, conditions: list[str], seconds: list[float]) -> str:
    """`condition 3/24: <key> (stage ~5m10s left)`: the line a sweep stage writes before each
    launch. `seconds`: what each condition this invocation finished took; their median, not
    their mean, extrapolates, since a condition that computes a backbone's features once takes
    minutes where the others take seconds."""
    first, last = done + 1, done + len(conditions)
    which = f"condition {first}/{total}" if first == last else f"conditions {first}-{last}/{total}"
    if not seconds:
        return f"{which}: {', '.join(conditions)}"
    left = statistics.median(seconds) * (total - done)
    return f"{which}: {', '.join(conditions)} (stage ~{duration(left)} left)"
