"""How logged metrics are named where the name is a policy: bookkeeping timings go under `time/`,
which MLflow charts in a section of their own, apart from what users compare (accuracy, losses).
Light on purpose: commands import it for `--help` too."""

from __future__ import annotations

TIME_PREFIX = "time/"


def time_metric(name: str) -> str:
    """The MLflow name of the timing `name`, e.g. `time/wall_time_s`."""
    return TIME_PREFIX + name
