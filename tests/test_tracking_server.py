"""`make server`: an MLflow tracking server over an SQLite store with served artifacts; runs
given `tracking.uri=http://...` land in its store."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import fashion_sweeps, free_port, output, wait_until_healthy
from mlflow.tracking import MlflowClient

from fashion_sweeps.config import CONF_DIR
from fashion_sweeps.train import train

REPO = CONF_DIR.parent


@pytest.fixture
def server(tmp_path: Path):
    """`make server` on a free port, its store in tmp_path; stopped with its process group."""
    port, store = free_port(), tmp_path / "server_store"
    proc = subprocess.Popen(
        ["make", "-s", "-C", str(REPO), "server", f"PORT={port}", f"STORE={store}", "WORKERS=1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    wait_until_healthy(url, proc, 120)
    yield url, store
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=60)


def test_runs_land_in_the_tracking_server(server, make_cfg, fmnist_root: Path) -> None:
    url, store = server
    cfg = make_cfg(
        f"dataset.root={fmnist_root}", "backbone=mlp", "backbone.hidden=16",
        "dataset.image_size=16", "trainer.max_epochs=1", f"tracking.uri={url}",
    )  # fmt: skip
    train(cfg)

    client = MlflowClient(url)
    (run,) = client.search_runs([client.get_experiment_by_name("fashion_mnist").experiment_id])
    assert run.info.status == "FINISHED"
    assert "config.yaml" in {a.path for a in client.list_artifacts(run.info.run_id)}
    # The server keeps both: runs in its SQLite file, artifacts in its folder, none locally.
    direct = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    assert direct.get_run(run.info.run_id).info.status == "FINISHED"
    assert list((store / "artifacts").rglob("config.yaml"))
    assert not (Path(cfg.tracking.dir) / "mlflow.db").exists()


def start_server(store: Path, port: int) -> subprocess.Popen:
    """`mlflow server` over `store` on 127.0.0.1:`port`, up and answering."""
    (store / "artifacts").mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}",
         "--serve-artifacts", "--artifacts-destination", str(store / "artifacts")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    wait_until_healthy(f"http://127.0.0.1:{port}", proc, 120)
    return proc


def user_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}


def kill_server_at_epoch_2(
    cmd: list[str], cwd: Path, server: subprocess.Popen
) -> tuple[subprocess.Popen, str]:
    """Run `cmd`, kill the tracking server once it prints its second epoch, let it finish; the
    process and all it printed."""
    run = subprocess.Popen(
        cmd, cwd=cwd, env=user_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    shown = []
    for line in run.stdout:
        shown.append(line)
        if "epoch 2/6" in line:
            break
    os.killpg(server.pid, signal.SIGKILL)  # the server dies; the run goes on training
    server.wait()
    shown.append(run.communicate(timeout=600)[0])
    return run, "".join(shown)


@pytest.mark.slow  # tens of seconds: `make test-slow`
def test_a_server_dying_mid_run_stops_it_in_one_paragraph_and_the_rerun_resumes(
    tmp_path: Path,
) -> None:
    port, store, out = free_port(), tmp_path / "server_store", tmp_path / "job"
    cmd = [
        sys.executable, "-m", "fashion_sweeps.cli", "train", "dataset=clothing_sample",
        "dataset.image_size=16", "backbone=mlp", "backbone.hidden=16", "trainer.max_epochs=6",
        "trainer.patience=10", "trainer.progress=lines", "tracking.log_model=false",
        f"tracking.uri=http://127.0.0.1:{port}", f"hydra.run.dir={out}",
    ]  # fmt: skip
    server = start_server(store, port)
    try:
        run, text = kill_server_at_epoch_2(cmd, tmp_path, server)
        assert run.returncode == 1, text[-3000:]
        assert "Traceback" not in text, text[-3000:]
        (error,) = [line for line in text.splitlines() if "stopped answering" in line]
        assert f"hydra.run.dir={out}" in error and "checkpoint" in error
        assert (out / "checkpoints" / "last.ckpt").exists()  # what was trained is kept

        server = start_server(store, port)  # the server is back: the same command resumes
        again = subprocess.run(cmd, cwd=tmp_path, env=user_env(), capture_output=True, text=True)
        assert again.returncode == 0, again.stderr[-3000:]
        client = MlflowClient(f"http://127.0.0.1:{port}")
        (finished,) = client.search_runs(
            [client.get_experiment_by_name("clothing_sample").experiment_id]
        )
        assert finished.info.status == "FINISHED" and finished.data.tags["attempt"] == "2"
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def test_credentials_in_the_tracking_uri_are_never_written(server, tmp_path: Path) -> None:
    """`tracking.uri=http://user:password@host`: the run works, and the password is in no param,
    tag, artifact, output file or console line."""
    url, store = server
    secret = "s3cret-pw"
    with_credentials = url.replace("http://", f"http://user:{secret}@")
    out = tmp_path / "out"
    result = fashion_sweeps(
        tmp_path,
        "train",
        "dataset=clothing_sample",
        "backbone=mlp",
        "backbone.hidden=8",
        "dataset.image_size=8",
        "trainer.max_epochs=1",
        "tracking.log_model=false",
        f"tracking.uri={with_credentials}",
        f"hydra.run.dir={out}",
        check=False,
    )
    printed = output(result)
    assert result.returncode == 0, printed[-3000:]
    assert secret not in printed
    assert "user:***@" in (out / "mlflow_run.json").read_text()
    written = [p for p in out.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
    assert written == []
    client = MlflowClient(url)
    (run,) = client.search_runs([client.get_experiment_by_name("clothing_sample").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["tracking.uri"] == with_credentials.replace(secret, "***")
    assert "user:***@" in run.data.tags["command"]
    # Params, tags and artifacts (config.yaml) as the server stores them.
    stored = [p for p in store.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
    assert stored == []


@pytest.mark.slow  # tens of seconds: `make test-slow`
def test_a_server_dying_mid_sweep_stops_the_stage_in_one_paragraph(tmp_path: Path) -> None:
    """The tracking server dying during a sweep printed 16 tracebacks after a correct line: the
    stage stops at once (every later condition would fail alike) and says how to go on."""
    port, store = free_port(), tmp_path / "server_store"
    cmd = [
        sys.executable, "-m", "fashion_sweeps.cli", "screen", "sweep=tiny", "sweep.name=lost",
        "dataset=clothing_sample", "dataset.image_size=16", "backbone=mlp", "backbone.hidden=16",
        "optimizer.lr=0.1,0.01,0.001", "sweep.screen.max_epochs=6", "sweep.screen.patience=10",
        "trainer.progress=lines", f"tracking.uri=http://127.0.0.1:{port}",
    ]  # fmt: skip
    server = start_server(store, port)
    try:
        run, text = kill_server_at_epoch_2(cmd, tmp_path, server)
        assert run.returncode != 0, text[-3000:]
        assert "Traceback" not in text, text[-3000:]
        assert "stopped answering" in text and "[2/3]" not in text
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
