"""Ctrl-C and SIGTERM (a scheduler's stop, `kill`): the run is closed KILLED saying it was
interrupted, and the command exits 130 / 143 so that `make sweep` and scripts stop there."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from fashion_sweeps.sweeps.storage import open_storage
from fashion_sweeps.sweeps.study import load_study

TINY = ["dataset=clothing_sample", "dataset.image_size=16", "backbone=mlp", "backbone.hidden=16"]


def _as_from_a_terminal() -> None:
    # A shell's background job ignores SIGINT, and children inherit that: the command under
    # test gets Ctrl-C as it would in a terminal, however the tests were started.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return subprocess.Popen(
        [sys.executable, "-m", "fashion_sweeps.cli", *args, "trainer.progress=lines",
         f"tracking.dir={cwd / 'mlruns'}", "tracking.log_model=false"],
        cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        preexec_fn=_as_from_a_terminal,
    )  # fmt: skip


def interrupt_after(proc: subprocess.Popen, text: str, signum: int) -> str:
    seen = []
    try:
        for line in proc.stdout:
            seen.append(line)
            if text in line:
                proc.send_signal(signum)
                break
        seen.append(proc.communicate(timeout=300)[0])
    finally:
        if proc.poll() is None:  # it did not stop: fail without leaving it training
            proc.kill()
            proc.wait()
    return "".join(seen)


def runs(mlruns: Path) -> list:
    client = MlflowClient(f"sqlite:///{mlruns / 'mlflow.db'}")
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupted_run_is_killed_with_the_signal_as_reason(
    tmp_path: Path, signum: int, code: int
) -> None:
    proc = start(["train", *TINY, "trainer.max_epochs=200", "trainer.patience=200"], tmp_path)
    shown = interrupt_after(proc, "epoch 1/200", signum)
    assert proc.returncode == code, shown[-3000:]
    (run,) = runs(tmp_path / "mlruns")
    assert run.info.status == "KILLED"
    name = signal.Signals(signum).name
    assert run.data.tags["failure_reason"].startswith(f"interrupted ({name})")
    assert run.data.tags["status"] == "interrupted"
    assert "Traceback" not in shown


def test_a_sweep_stopped_with_sigterm_exits_143_before_the_next_stage(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    proc = start(
        ["sweep", "sweep=tiny", *TINY, "sweep.screen.max_epochs=200",
         "sweep.screen.patience=200", f"hydra.sweeper.storage={storage}"],
        tmp_path,
    )  # fmt: skip
    shown = interrupt_after(proc, "epoch 1/200", signal.SIGTERM)
    assert proc.returncode == 143, shown[-3000:]
    open_storage(storage)  # the study file exists
    assert load_study(storage, "clothing_sample-tiny/full") is None  # the full stage never began
    parent = next(r for r in runs(tmp_path / "mlruns") if r.data.tags.get("run_kind") == "stage")
    assert parent.info.status == "KILLED"
