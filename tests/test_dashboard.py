"""`make dashboard`: optuna-dashboard (an optional dependency) over the sweep studies, on
127.0.0.1 only."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from fashion_sweeps.sweeps.study import open_study

ROOT = Path(__file__).resolve().parent.parent
pytest.importorskip("optuna_dashboard")
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_make_dashboard_serves_the_sweep_studies_on_localhost(tmp_path: Path) -> None:
    db = tmp_path / "optuna.db"
    open_study(f"sqlite:///{db}", "demo/screen", "minimize")
    port = free_port()
    options = [f"BIN={Path(sys.executable).parent}", f"STUDIES={db}", f"DASHBOARD_PORT={port}"]
    server = subprocess.Popen(
        ["make", "-s", "-C", str(ROOT), "dashboard", *options],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # make and the dashboard stop together below
    )
    try:
        studies = None
        for _ in range(60):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies") as answer:
                    studies = json.load(answer)["study_summaries"]
                break
            except OSError:
                time.sleep(0.5)
        assert studies is not None, "the dashboard did not answer on 127.0.0.1"
        assert [s["study_name"] for s in studies] == ["demo/screen"]
        bound = subprocess.run(["ss", "-ltnH"], capture_output=True, text=True).stdout
        if bound:  # bound to the loopback address only, never every interface
            assert f"127.0.0.1:{port}" in bound and f"0.0.0.0:{port}" not in bound
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
