"""On a real one-node SLURM and a real PostgreSQL server (`.ci/cluster up`): the screen as a SLURM
job array through `hydra/launcher=slurm`, two independent workers of an `#SBATCH --array` job on
one PostgreSQL study, an MLflow server over a PostgreSQL store, a run requeued by SLURM, a worker
killed by scancel whose condition a later worker trains.

Marked `cluster`; they run as root (the script installs and starts the daemons), else they are
skipped. Tiny on purpose: the bundled sample at 16 px, 1 epoch, 1 CPU per job.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import optuna
import pytest
from conftest import free_port, wait_until_healthy
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from fashion_sweeps.config import CONF_DIR
from fashion_sweeps.sweeps.storage import open_storage
from fashion_sweeps.sweeps.study import CONDITION, WORKER

pytestmark = pytest.mark.cluster
log = logging.getLogger(__name__)

REPO = CONF_DIR.parent
CONDITIONS = sorted(
    f"{b}/fc/adam/{lr}" for b in ("mlp", "simple_cnn") for lr in ("0.01", "0.001")
)  # conf/sweep/tiny.yaml
SCREEN = [
    "sweep=tiny", "dataset=clothing_sample", "trainer=cpu", "trainer.progress=lines",
]  # fmt: skip


@pytest.fixture(scope="session")
def cluster() -> dict[str, str]:
    """The local SLURM and PostgreSQL, brought up (idempotently) by .ci/cluster."""
    if os.geteuid() != 0:
        pytest.skip("cluster tests need root: .ci/cluster installs and starts SLURM and PostgreSQL")
    script = REPO / ".ci" / "cluster"
    up = subprocess.run([script, "up"], capture_output=True, text=True, timeout=900)
    assert up.returncode == 0, f".ci/cluster up failed:\n{up.stdout}\n{up.stderr}"
    exports = subprocess.run([script, "env"], capture_output=True, text=True, check=True).stdout
    return dict(line.removeprefix("export ").split("=", 1) for line in exports.splitlines())


def _admin(url: str, sql: str) -> None:
    import psycopg

    conn = psycopg.connect(url)
    conn.autocommit = True  # CREATE/DROP DATABASE refuse to run in a transaction
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


@pytest.fixture
def database(cluster: dict[str, str]) -> Iterator[Callable[[], str]]:
    """Makes fresh PostgreSQL databases for this test (dropped afterwards); returns their URLs."""
    base = cluster["FASHION_SWEEPS_PG_URL"]
    made: list[str] = []

    def make() -> str:
        name = f"test_{uuid.uuid4().hex[:12]}"
        _admin(base, f"CREATE DATABASE {name}")
        made.append(name)
        return f"{base.rsplit('/', 1)[0]}/{name}"

    yield make
    for name in made:
        _admin(base, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def job_env(tmp_path: Path) -> dict[str, str]:
    """What the sweep process (and, through sbatch's exported environment, every SLURM job)
    runs with: this checkout's code, an isolated cache, no user tracking server."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["FASHION_SWEEPS_CACHE"] = str(tmp_path / "cache")
    return env


def all_runs(client: MlflowClient) -> list:
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


def stage_children(client: MlflowClient) -> tuple:
    runs = all_runs(client)
    (parent,) = [r for r in runs if r.data.tags.get("run_kind") == "stage"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    return parent, children


def test_screen_on_slurm_trains_every_condition_once_as_one_job_array(
    cluster: dict[str, str], database: Callable[[], str], tmp_path: Path
) -> None:
    """...with its study in PostgreSQL: the password reaches the jobs through the environment
    sbatch exports, never through the configs submitit pickles for them."""
    storage = database()
    parts = urlsplit(storage)
    assert parts.password
    credentials = f"{parts.username}:{parts.password}@".encode()
    start = time.monotonic()
    done = subprocess.run(
        [
            sys.executable, "-m", "fashion_sweeps.cli", "screen", *SCREEN, "sweep.name=arr",
            "hydra/launcher=slurm", f"hydra.launcher.partition={cluster['FASHION_SWEEPS_SLURM_PARTITION']}",
            "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1",
            "hydra.launcher.timeout_min=10", "hydra.sweeper.n_jobs=4",
            f"tracking.dir={tmp_path / 'mlruns'}", f"hydra.sweeper.storage={storage}",
        ],
        cwd=tmp_path, env=job_env(tmp_path), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    log.info("tiny screen as a SLURM array: %.0f s", time.monotonic() - start)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    parent, children = stage_children(MlflowClient(f"sqlite:///{tmp_path / 'mlruns/mlflow.db'}"))
    assert parent.info.status == "FINISHED"
    assert sorted(r.info.run_name for r in children) == CONDITIONS  # each exactly once
    assert all(r.info.status == "FINISHED" for r in children)
    # One array: the same SLURM job id, one task each.
    job_ids = sorted(r.data.tags["slurm_job_id"] for r in children)
    array = {j.split("_")[0] for j in job_ids}
    assert len(array) == 1 and sorted(j.split("_")[1] for j in job_ids) == ["0", "1", "2", "3"]
    # Each task's SLURM logs beside the stage's outputs, in a folder named by its job id.
    logs = tmp_path / "multirun/sweeps/arr/screen/.submitit"
    assert all((logs / j / f"{j}_0_log.out").exists() for j in job_ids)

    study = optuna.load_study(study_name="arr/screen", storage=storage)
    assert sorted(t.user_attrs[CONDITION] for t in study.trials) == CONDITIONS
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    pickles = list((tmp_path / "multirun").rglob("*.pkl"))
    assert pickles
    holding = [p for p in tmp_path.rglob("*") if p.is_file() and credentials in p.read_bytes()]
    assert holding == []


@pytest.fixture
def pg_tracking_server(database: Callable[[], str], tmp_path: Path) -> Iterator[tuple[str, str]]:
    """`make server` over a PostgreSQL backend store (artifacts in tmp_path): (url, store URL)."""
    store, port = database(), free_port()
    proc = subprocess.Popen(
        ["make", "-s", "-C", str(REPO), "server", f"PORT={port}", f"BACKEND={store}",
         f"STORE={tmp_path / 'server'}", "WORKERS=2", f"BIN={Path(sys.executable).parent}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    wait_until_healthy(url, proc, 600)  # creating the tables of a fresh store, on a loaded machine
    yield url, store
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=60)


def connections(url: str) -> int:
    """Open connections to the database of `url`, as the server counts them."""
    import psycopg

    conn = psycopg.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid()"
            )
            return int(cur.fetchone()[0])
    finally:
        conn.close()


OPEN_AT_ONCE = """
import sys, time
from fashion_sweeps.sweeps.storage import open_storage

time.sleep(max(0.0, float(sys.argv[2]) - time.time()))  # all start together
open_storage(sys.argv[1])
print("open", flush=True)
time.sleep(30)
"""


def test_workers_opening_a_fresh_postgresql_study_together_hold_no_more_than_their_pools(
    cluster: dict[str, str], database: Callable[[], str]
) -> None:
    """Workers started together race to create Optuna's schema: every one opens the study, and
    none keeps a second pool from a lost attempt (3-4 connections each before)."""
    url, start = database(), time.time() + 3
    command = [sys.executable, "-c", OPEN_AT_ONCE, url, str(start)]
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    procs = [subprocess.Popen(command, env=job_env(Path.cwd()), **pipes) for _ in range(4)]
    try:
        peak = 0
        while not all(select.select([p.stdout], [], [], 0)[0] for p in procs):
            assert all(p.poll() is None for p in procs), [p.stderr.read() for p in procs]
            peak = max(peak, connections(url))
            time.sleep(0.05)
        assert [p.stdout.readline() for p in procs] == ["open\n"] * len(procs)
        assert max(peak, connections(url)) <= 2 * len(procs)  # a pool of two each (storage.py)
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


ARRAY_SCRIPT = """#!/bin/bash
#SBATCH --job-name=screen --array=0-1 --cpus-per-task=1
#SBATCH --mem=2G --time=00:15:00 --requeue
#SBATCH --output={out}/slurm-%A_%a.out
cd {out}
exec {python} -m fashion_sweeps.cli screen {screen} sweep.name=pg \\
    hydra.sweeper.storage={storage} \\
    tracking.uri={tracking}
"""


def test_two_workers_of_an_sbatch_array_share_a_postgresql_study_and_tracking_server(
    cluster: dict[str, str],
    database: Callable[[], str],
    pg_tracking_server: tuple[str, str],
    tmp_path: Path,
) -> None:
    url, store = pg_tracking_server
    storage = database()
    script = tmp_path / "screen.sbatch"
    script.write_text(
        ARRAY_SCRIPT.format(
            out=tmp_path,
            python=sys.executable,
            screen=" ".join(SCREEN),
            storage=storage,
            tracking=url,
        )
    )
    # --wait: sbatch returns when every task has ended, with the highest exit code among them.
    proc = subprocess.Popen(
        ["sbatch", "--wait", "--parsable", str(script)],
        cwd=tmp_path, env=job_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    peak = 0
    while proc.poll() is None:
        peak = max(peak, connections(storage))
        time.sleep(1)
    logs = "\n".join(p.read_text()[-3000:] for p in sorted(tmp_path.glob("slurm-*.out")))
    assert proc.returncode == 0, f"{proc.stderr.read()}\n{logs}"
    job = proc.stdout.read().strip().split(";")[0]

    study = optuna.load_study(study_name="pg/screen", storage=open_storage(storage))
    finished = study.get_trials(states=(TrialState.COMPLETE,))
    assert sorted(t.user_attrs[CONDITION] for t in finished) == CONDITIONS  # each exactly once
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
    workers = {t.user_attrs[WORKER] for t in finished}
    assert workers <= {f"slurm-{job}_0.0", f"slurm-{job}_1.0"}, workers
    log.info(
        "conditions per worker: %s",
        {w: sum(t.user_attrs[WORKER] == w for t in finished) for w in workers},
    )
    # One small pool per worker, not one per storage object (4 connections each before).
    log.info("peak connections of two workers to the study's database: %d", peak)
    assert peak <= 4, f"{peak} connections to the study's database"

    # Both workers reported to the server, under one parent that the last one closed.
    parent, children = stage_children(MlflowClient(url))
    assert parent.info.status == "FINISHED"
    assert sorted(r.info.run_name for r in children) == CONDITIONS
    assert all(r.info.status == "FINISHED" for r in children)
    assert {r.data.tags["slurm_job_id"].split("_")[0] for r in children} == {job}
    # The server keeps them in PostgreSQL.
    direct = MlflowClient(store)
    assert direct.get_run(parent.info.run_id).info.status == "FINISHED"


def slurm(*args: str) -> str:
    return subprocess.run(args, capture_output=True, text=True, check=True).stdout.strip()


def wait_for(what: str, ready: Callable[[], bool], proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            out = proc.communicate()[0] if proc.poll() is not None else ""
            pytest.fail(f"{what} did not happen: {out[-3000:]}")
        time.sleep(1)


def release_requeued(job: str, proc: subprocess.Popen) -> None:
    """SLURM holds a requeued job for two minutes (BeginTime); let it start again at once."""

    def pending() -> bool:
        return slurm("squeue", "-h", "-j", job, "-o", "%T") == "PENDING"

    wait_for(f"job {job} back in the queue", pending, proc, 120)
    slurm("scontrol", "update", f"jobid={job}", "starttime=now")


def test_a_run_requeued_by_slurm_resumes_from_its_checkpoint_in_the_same_mlflow_run(
    cluster: dict[str, str], tmp_path: Path
) -> None:
    # 200 epochs of >= 0.1 s: the requeue, a second after the first checkpoint, lands mid-run
    # even on an idle machine (20 epochs took 16 s at load 3-4 and ended before it).
    epochs, out = 200, tmp_path / "multirun"
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "fashion_sweeps.train", "--multirun", "dataset=clothing_sample",
            "trainer=cpu", "backbone=mlp", "backbone.hidden=16", "dataset.image_size=16",
            "dataset.batch_size=8", f"trainer.max_epochs={epochs}", "trainer.patience=1000",
            "trainer.progress=lines", "tracking.log_model=false", f"tracking.dir={tmp_path / 'mlruns'}",
            "hydra/launcher=slurm", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1",
            "hydra.launcher.timeout_min=10", f"hydra.sweep.dir={out}",
        ],
        cwd=tmp_path, env=job_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    last = out / "0" / "checkpoints" / "last.ckpt"
    wait_for("a first checkpoint", last.exists, proc, 300)
    (job,) = [p.name for p in (out / ".submitit").iterdir() if p.name.isdigit()]
    slurm("scontrol", "requeue", job)  # what a preemption with requeue does
    release_requeued(job, proc)
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, output[-3000:]

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns/mlflow.db'}")
    (run,) = all_runs(client)  # continued, not started again
    assert run.info.status == "FINISHED"
    assert run.data.tags["attempt"] == "2"
    assert run.data.tags["resumed_from"] == str(last)
    assert run.data.tags["slurm_job_id"] == job
    assert run.data.metrics["epochs_run"] == epochs
    assert "Restarts=1" in slurm("scontrol", "show", "job", job)


WORKER_SCRIPT = """#!/bin/bash
#SBATCH --job-name=worker --cpus-per-task=1 --mem=2G --time=00:15:00
#SBATCH --output={out}/slurm-%j.out
cd {out}
exec {python} -m fashion_sweeps.cli screen {args}
"""


def worker_alive(marker: str) -> bool:
    """Whether a process with `marker` in its command line still runs: SLURM may drop a job from
    squeue before its processes have exited."""
    return subprocess.run(["pgrep", "-f", marker], capture_output=True).returncode == 0


def submit_worker(tmp_path: Path, args: list[str], *, wait: bool) -> subprocess.CompletedProcess:
    script = tmp_path / "worker.sbatch"
    script.write_text(
        WORKER_SCRIPT.format(out=tmp_path, python=sys.executable, args=" ".join(args))
    )
    return subprocess.run(
        ["sbatch", "--parsable", *(["--wait"] if wait else []), str(script)],
        cwd=tmp_path, env=job_env(tmp_path), capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def test_a_condition_of_a_worker_killed_by_scancel_is_trained_by_a_later_worker(
    cluster: dict[str, str], database: Callable[[], str], tmp_path: Path
) -> None:
    storage = database()
    args = [
        *SCREEN, "sweep.name=kill", "backbone=mlp", "optimizer.lr=0.01,0.001",
        "sweep.screen.max_epochs=60", "sweep.screen.patience=60", "dataset.batch_size=8", f"hydra.sweeper.storage={storage}",
        f"tracking.dir={tmp_path / 'mlruns'}",
    ]  # fmt: skip
    first = submit_worker(tmp_path, args, wait=False).stdout.strip()
    stage = tmp_path / "multirun/sweeps/kill/screen"
    deadline = time.monotonic() + 300
    # 60 epochs of ~0.1 s without early stopping: the kill lands mid-condition. (A SIGTERM during
    # a condition's test lets it finish and stops before the next: nothing would be left.)
    while not list(stage.glob("*/*/*/*/checkpoints/last.ckpt")):
        assert slurm("squeue", "-h", "-j", first, "-o", "%T"), "the worker ended before its kill"
        assert time.monotonic() < deadline, "the first worker never reached a checkpoint"
        time.sleep(1)
    slurm("scancel", first)
    while slurm("squeue", "-h", "-j", first, "-o", "%T") or worker_alive("sweep.name=kill"):
        assert time.monotonic() < deadline + 60, "the killed worker did not exit"
        time.sleep(1)

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns/mlflow.db'}")
    parent, _ = stage_children(client)
    assert parent.info.status != "FINISHED", "the stage closed while a condition was missing"
    study = optuna.load_study(study_name="kill/screen", storage=open_storage(storage))
    killed = {t.user_attrs[CONDITION] for t in study.trials if t.state != TrialState.COMPLETE}
    assert killed, "the killed worker's condition is not done"

    later = submit_worker(tmp_path, args, wait=True)
    logs = "\n".join(p.read_text()[-3000:] for p in sorted(tmp_path.glob("slurm-*.out")))
    assert later.returncode == 0, logs
    study = optuna.load_study(study_name="kill/screen", storage=open_storage(storage))
    finished = study.get_trials(states=(TrialState.COMPLETE,))
    assert sorted(t.user_attrs[CONDITION] for t in finished) == [
        "mlp/fc/adam/0.001",
        "mlp/fc/adam/0.01",
    ]
    second = later.stdout.strip()
    assert all(
        t.user_attrs[WORKER] == f"slurm-{second}.0"
        for t in finished
        if t.user_attrs[CONDITION] in killed
    )
    parent, children = stage_children(client)
    assert parent.info.status == "FINISHED"
    # Each condition one MLflow run: the killed one continued from its checkpoint.
    assert sorted(r.info.run_name for r in children) == ["mlp/fc/adam/0.001", "mlp/fc/adam/0.01"]
    assert all(r.info.status == "FINISHED" for r in children)
    assert {r.data.tags["attempt"] for r in children if r.info.run_name in killed} == {"2"}
