"""The Makefile's servers: bound to this machine unless the user names a host on the command line."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SERVERS = ["server", "ui", "serve"]


def bind_address(target: str, *args: str, env_host: str | None = None) -> str:
    """The --host / -h the target would pass, from `make -n` (nothing is started)."""
    env = {k: v for k, v in os.environ.items() if k != "HOST"}
    if env_host is not None:
        env["HOST"] = env_host
    result = subprocess.run(
        ["make", "-n", "-C", str(ROOT), target, *args],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    found = re.search(r"(?:--host|-h) (\S+)", result.stdout)
    assert found, result.stdout
    return found.group(1)


@pytest.mark.parametrize("target", SERVERS)
def test_servers_bind_localhost_by_default(target: str) -> None:
    assert bind_address(target) == "127.0.0.1"


@pytest.mark.parametrize("target", SERVERS)
def test_a_host_exported_in_the_environment_does_not_widen_the_bind(target: str) -> None:
    assert bind_address(target, env_host="0.0.0.0") == "127.0.0.1"
    assert bind_address(target, "-e", env_host="0.0.0.0") == "127.0.0.1"


@pytest.mark.parametrize("target", SERVERS)
def test_a_host_named_on_the_command_line_is_used(target: str) -> None:
    assert bind_address(target, "HOST=0.0.0.0") == "0.0.0.0"


def test_the_local_ui_starts_one_worker_for_one_user() -> None:
    """Four uvicorn workers of the MLflow UI hold 1.5 GB for one person looking at runs."""
    result = subprocess.run(
        ["make", "-n", "-C", str(ROOT), "ui"], capture_output=True, text=True, check=True
    )
    assert re.search(r"mlflow ui .*--workers 1\b", result.stdout), result.stdout
