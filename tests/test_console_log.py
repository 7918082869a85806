"""The tools' log lines on stderr when a tool is called in-process (a notebook, a test)."""

from __future__ import annotations

import io
import logging
import sys

import pytest

from fashion_sweeps.recipes.command import main as results_main


def test_a_tool_called_in_process_keeps_logging_after_its_stderr_is_swapped(monkeypatch) -> None:
    """A tool's stderr handler follows `sys.stderr`: one that kept the stream of its first call
    wrote "--- Logging error ---" tracebacks into every later tool's output (and once per call)."""
    first = io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    for _ in range(2):
        with pytest.raises(SystemExit):
            results_main(["--no-such-option"])  # sets up logging, then refuses the option
    first.close()
    later = io.StringIO()
    monkeypatch.setattr(sys, "stderr", later)
    logging.getLogger("fashion_sweeps.anything").warning("still heard")
    lines = later.getvalue().splitlines()
    assert "Logging error" not in later.getvalue()
    assert sum("still heard" in line for line in lines) == 1  # once, not once per call
