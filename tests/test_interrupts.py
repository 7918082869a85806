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


# A scheduler's SIGTERM lands wherever the process is, often inside an MLflow write. It must not
# cut that write (a SQLite write lock left held made the next worker's writes time out): the run
# stops at the next batch boundary instead.
SIGTERM_INSIDE_A_WRITE = """
import os, signal, sys
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

original = SqlAlchemyStore.log_batch
metric_writes = []

def log_batch(self, *args, **kwargs):
    metric_writes.append(bool(kwargs.get("metrics") or args[1:2] and args[1]))
    if sum(metric_writes) == 2 and metric_writes[-1]:
        os.kill(os.getpid(), signal.SIGTERM)
        done = original(self, *args, **kwargs)
        print("the write in progress completed", flush=True)
        return done
    return original(self, *args, **kwargs)

SqlAlchemyStore.log_batch = log_batch
from fashion_sweeps.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_sigterm_inside_an_mlflow_write_lets_the_write_finish_then_stops(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    done = subprocess.run(
        [sys.executable, "-c", SIGTERM_INSIDE_A_WRITE, "train", *TINY, "trainer.max_epochs=50",
         "trainer.patience=50", "trainer.progress=lines", f"tracking.dir={tmp_path / 'mlruns'}",
         "tracking.log_model=false"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    shown = done.stdout + done.stderr
    assert done.returncode == 143, shown[-3000:]
    assert "the write in progress completed" in shown, shown[-3000:]
    assert "database is locked" not in shown
    (run,) = runs(tmp_path / "mlruns")
    assert run.info.status == "KILLED"
    assert run.data.tags["failure_reason"].startswith("interrupted (SIGTERM)")
    assert run.data.metrics.get("epochs_run", 0) < 50


SIGTERM_TWICE = """
import os, signal, sys, time
from fashion_sweeps import interrupts

interrupts.install()
os.kill(os.getpid(), signal.SIGTERM)
time.sleep(0.1)  # the handler has run: asked to stop, not stopped
print("after one:", interrupts.stop_requested(), flush=True)
child = os.fork()
if child == 0:  # a forked worker (decoding pool) never calls check(): it stops at once
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
        os._exit(0)
    except KeyboardInterrupt:
        os._exit(7)
print("child:", os.waitstatus_to_exitcode(os.waitpid(child, 0)[1]), flush=True)
try:
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5)
except KeyboardInterrupt as err:
    print("after two:", err, interrupts.exit_code(), flush=True)
"""


def test_a_first_sigterm_asks_to_stop_and_a_second_stops_at_once() -> None:
    done = subprocess.run(
        [sys.executable, "-c", SIGTERM_TWICE], capture_output=True, text=True, timeout=60
    )
    assert done.stdout.splitlines() == ["after one: True", "child: 7", "after two: SIGTERM 143"], (
        done.stdout + done.stderr
    )


def test_a_sigterm_before_a_run_opens_stops_it_before_any_mlflow_run(
    make_cfg, clothing_root, monkeypatch
) -> None:
    """A SIGTERM between conditions (after the sweep's check, ~100 ms before the next job's run
    opened) started that condition's run and left it KILLED."""
    from fashion_sweeps import interrupts
    from fashion_sweeps.tracking.runs import tracking_uri
    from fashion_sweeps.train import train

    monkeypatch.setattr(interrupts, "_pending", [signal.SIGTERM])  # what the handler deferred
    cfg = make_cfg("dataset=clothing", f"dataset.root={clothing_root}", *TINY[1:])
    with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
        train(cfg)
    client = MlflowClient(tracking_uri(cfg.tracking))
    assert client.search_runs([e.experiment_id for e in client.search_experiments()]) == []
