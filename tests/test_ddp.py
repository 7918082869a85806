"""Multi-process training (trainer=ddp_cpu, the CPU stand-in of trainer=ddp): one MLflow run,
written by rank 0 only, with metrics synchronised over both processes."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from fashion_sweeps.tracking.runs import tracking_uri
from fashion_sweeps.train import train

# lr=0 keeps the initial weights, so a 1-process and a 2-process run evaluate the same model: equal
# val and test losses prove the 2-process values cover both halves of each split, not rank 0's.
FROZEN = [
    "dataset=fashion_mnist",
    "backbone=mlp",
    "backbone.hidden=16",
    "dataset.image_size=16",
    "dataset.batch_size=8",
    "optimizer.lr=0",
    "trainer.max_epochs=2",
    "trainer.progress=lines",
]


def run_cli(*overrides: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fashion_sweeps.train", *overrides],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_ddp_cpu_run_is_one_mlflow_run_with_synchronised_metrics(
    make_cfg, fmnist_root: Path, tmp_path: Path
) -> None:
    out = tmp_path / "ddp_out"
    mlruns = tmp_path / "ddp_mlruns"
    done = run_cli(
        *FROZEN,
        f"dataset.root={fmnist_root}",
        "trainer=ddp_cpu",
        f"tracking.dir={mlruns}",
        f"hydra.run.dir={out}",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # Rank 1 ran as its own process (Lightning relaunched the command) with its own job log.
    assert (out / "train_ddp_process_1.log").exists()
    assert "Starting with 2 processes" in done.stdout + done.stderr

    client = MlflowClient(f"sqlite:///{mlruns / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1, "rank 1 must not create a run of its own"
    ddp = runs[0]
    assert ddp.info.status == "FINISHED"
    assert ddp.data.params["trainer.strategy"] == "ddp"
    assert len(client.get_metric_history(ddp.info.run_id, "val_loss")) == 2  # once per epoch

    single_cfg = make_cfg(*FROZEN, f"dataset.root={fmnist_root}")
    train(single_cfg)
    single_client = MlflowClient(tracking_uri(single_cfg.tracking))
    (single,) = single_client.search_runs(
        [e.experiment_id for e in single_client.search_experiments()]
    )
    for key in ("val_loss", "val_acc", "val_f1_macro", "test_loss"):
        assert ddp.data.metrics[key] == pytest.approx(single.data.metrics[key], rel=1e-5), key
    assert math.isfinite(ddp.data.metrics["best_val_loss"])


def test_ddp_refuses_to_relaunch_outside_a_single_hydra_run(make_cfg, fmnist_root: Path) -> None:
    """Lightning would rerun this program (pytest here, the whole sweep in a --multirun) per rank."""
    cfg = make_cfg(*FROZEN, f"dataset.root={fmnist_root}", "trainer=ddp_cpu")
    with pytest.raises(ValueError, match="by running the command line again"):
        train(cfg)
    client = MlflowClient(tracking_uri(cfg.tracking))
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.status == "FAILED" and "ddp" in run.data.tags["failure_reason"]


@pytest.mark.slow  # tens of seconds: `make test-slow`
def test_ranks_started_together_write_one_run(fmnist_root: Path, tmp_path: Path) -> None:
    """torchrun starts every rank at once, as SLURM does with one task per device: rank 1 waits
    for rank 0's data, and still only rank 0 writes to MLflow."""
    out, mlruns = tmp_path / "out", tmp_path / "mlruns"
    done = subprocess.run(
        [
            sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
            "-m", "fashion_sweeps.train", *FROZEN, "optimizer.lr=0.001", "trainer=ddp_cpu",
            f"dataset.root={fmnist_root}", f"tracking.dir={mlruns}", f"hydra.run.dir={out}",
        ],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert list(out.glob(".data_ready.torchrun-*")), "rank 0 announced its prepared data"
    client = MlflowClient(f"sqlite:///{mlruns / 'mlflow.db'}")
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.status == "FINISHED"
