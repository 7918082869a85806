"""Log lines of the command-line tools (report, predict, results, samplers) on stderr; a run's own
lines go through Hydra's job logging instead."""

from __future__ import annotations

import logging
import sys
from typing import TextIO

TOOL_FORMAT = "%(levelname)s %(name)s: %(message)s"
STUDY_FORMAT = "[%(asctime)s][%(name)s] %(message)s"  # as Hydra's job logging shows a run's


class _CurrentStderr(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is when a line is logged, not when the handler was made: a
    tool called in-process (a notebook, a test) may see its stderr swapped, and closed, later."""

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _: TextIO) -> None:
        pass


def log_to_stderr(fmt: str = TOOL_FORMAT) -> None:
    """INFO and above on stderr, once: a plain stderr handler set up earlier (importing
    `mlflow.pytorch` calls `basicConfig`) or by an earlier call is replaced, not doubled."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if type(handler) in (logging.StreamHandler, _CurrentStderr):
            root.removeHandler(handler)
    handler = _CurrentStderr()
    handler.setFormatter(logging.Formatter(fmt))
    root.addHandler(handler)
    root.setLevel(logging.INFO)


def drop_basic_config() -> None:
    """Remove the root handler `logging.basicConfig` installs: importing `mlflow.pytorch` calls it,
    and under Hydra's own commands (`--info`, `--cfg`), which set up no job logging, every
    line then printed twice."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        fmt = handler.formatter._fmt if handler.formatter else None
        if type(handler) is logging.StreamHandler and fmt == logging.BASIC_FORMAT:
            root.removeHandler(handler)
