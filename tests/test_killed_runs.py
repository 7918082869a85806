"""A run whose process died without closing it (kill -9, a lost node, OOM) is closed KILLED by
the next run or stage that opens the store on the same host; runs of live processes and of
other hosts are left alone."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

from fashion_sweeps.train import train

TINY = ["dataset=clothing_sample", "dataset.image_size=16", "backbone=mlp", "backbone.hidden=16"]


def test_a_run_killed_with_sigkill_is_closed_killed_by_the_next_run(
    make_cfg, tmp_path: Path
) -> None:
    mlruns = tmp_path / "mlruns"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    killed = subprocess.Popen(
        [sys.executable, "-m", "fashion_sweeps.cli", "train", *TINY, "trainer.max_epochs=200",
         "trainer.patience=200", "trainer.progress=lines", f"tracking.dir={mlruns}"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    for line in killed.stdout:  # no hydra.run.dir: nothing would ever continue this run
        if "epoch 1/200" in line:
            break
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    client = MlflowClient(f"sqlite:///{mlruns / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("clothing_sample").experiment_id
    (dead,) = client.search_runs([experiment])
    assert dead.info.status == "RUNNING"
    here = socket.gethostname()
    alive = client.create_run(experiment, tags={"host": here, "pid": str(os.getpid())})
    elsewhere = client.create_run(experiment, tags={"host": "another-node", "pid": "1"})

    train(make_cfg(*TINY, "trainer.max_epochs=1", "tracking.log_model=false"))

    dead = client.get_run(dead.info.run_id)
    assert dead.info.status == "KILLED"
    assert dead.data.tags["status"] == "interrupted"
    assert f"pid {killed.pid}" in dead.data.tags["failure_reason"]
    assert client.get_run(alive.info.run_id).info.status == "RUNNING"
    assert client.get_run(elsewhere.info.run_id).info.status == "RUNNING"


DECODING_PARENT = """
import sys, time
from pathlib import Path
from fashion_sweeps.data import decode
from fashion_sweeps import interrupts

def slow_chunk(job):
    time.sleep(120)
    return []

decode._decode_chunk = slow_chunk  # forked workers inherit it: they stay busy until killed
interrupts.install()  # as the CLI does: its handler is what workers used to inherit
print("decoding", flush=True)
decode.decode_files([Path("x.jpg")] * 512, 8, workers=2)
"""


def test_decoding_workers_die_with_a_parent_killed_by_sigkill(tmp_path: Path) -> None:
    """kill -9 (or the OOM killer) during a decode left its pool's workers alive for minutes,
    ignoring SIGTERM and holding the stores open: they now end with their parent."""
    import psutil

    parent = subprocess.Popen(
        [sys.executable, "-c", DECODING_PARENT], cwd=tmp_path, stdout=subprocess.PIPE, text=True
    )
    assert parent.stdout.readline() == "decoding\n"
    process = psutil.Process(parent.pid)
    deadline = time.monotonic() + 60
    while len(process.children()) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    workers = process.children()
    assert len(workers) == 2
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    _, alive = psutil.wait_procs(workers, timeout=15)
    for worker in alive:
        worker.kill()
    assert alive == [], "decoding workers outlived their killed parent"
