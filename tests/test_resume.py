"""Preemption: a job killed after an epoch, started again with the same command (what a SLURM
requeue does), trains on from its last checkpoint inside the same MLflow run."""

from __future__ import annotations

import csv
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from fashion_sweeps.run_folder import RECORD
from fashion_sweeps.tracking.job_run import checkpoint_epoch, read_record, write_record
from fashion_sweeps.train import train

EPOCHS = 30


def command(fmnist_root: Path, out: Path, mlruns: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "fashion_sweeps.train",
        f"dataset.root={fmnist_root}",
        "backbone=mlp",
        "backbone.hidden=16",
        "dataset.image_size=16",
        "dataset.batch_size=8",
        f"trainer.max_epochs={EPOCHS}",
        "trainer.patience=1000",
        "trainer.progress=lines",
        f"tracking.dir={mlruns}",
        f"hydra.run.dir={out}",
    ]


def only_run(mlruns: Path):
    client = MlflowClient(f"sqlite:///{mlruns / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1
    return client, runs[0]


def test_killed_run_resumes_from_its_last_checkpoint_in_the_same_mlflow_run(
    fmnist_root: Path, tmp_path: Path
) -> None:
    out, mlruns = tmp_path / "job", tmp_path / "mlruns"
    cmd = command(fmnist_root, out, mlruns)
    last = out / "checkpoints" / "last.ckpt"

    first = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while not last.exists() and first.poll() is None:
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)  # no handler runs: what a lost node or OOM kill leaves
    first.wait()
    assert first.returncode == -signal.SIGKILL, "the first attempt ended before it was killed"

    saved_epoch = torch.load(last, map_location="cpu", weights_only=False)["epoch"]
    assert saved_epoch < EPOCHS - 1
    client, run = only_run(mlruns)
    assert run.info.status == "RUNNING"
    logged_before = len(client.get_metric_history(run.info.run_id, "val_loss"))

    second = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "Restored all states from the checkpoint" in second.stderr + second.stdout

    client, resumed = only_run(mlruns)  # continued, not duplicated
    assert resumed.info.run_id == run.info.run_id
    assert resumed.info.status == "FINISHED"
    assert resumed.data.tags["attempt"] == "2"
    assert resumed.data.metrics["epochs_run"] == EPOCHS
    history = client.get_metric_history(run.info.run_id, "val_loss")
    assert len({m.step for m in history}) == EPOCHS  # every epoch's value, in one curve
    # Only the epochs after the checkpoint were trained again (restarting would log all EPOCHS).
    assert len(history) == logged_before + (EPOCHS - 1 - saved_epoch)
    assert read_record(out)["status"] == "finished"


def test_finished_folder_is_not_trained_again(make_cfg, fmnist_root: Path) -> None:
    cfg = make_cfg(
        f"dataset.root={fmnist_root}", "backbone=mlp", "backbone.hidden=16",
        "dataset.image_size=16", "trainer.max_epochs=1",
    )  # fmt: skip
    best = train(cfg)
    assert train(cfg) == pytest.approx(best)
    client = MlflowClient(read_record(Path(cfg.output_dir))["tracking_uri"])
    assert len(client.search_runs([e.experiment_id for e in client.search_experiments()])) == 1


def test_corrupt_last_checkpoint_is_set_aside_and_the_run_starts_over(
    make_cfg, fmnist_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = make_cfg(
        f"dataset.root={fmnist_root}", "backbone=mlp", "backbone.hidden=16",
        "dataset.image_size=16", "trainer.max_epochs=1",
    )  # fmt: skip
    train(cfg)
    out = Path(cfg.output_dir)
    # What a job killed while its last checkpoint was copied leaves: a running record, a stub.
    write_record(out, {**read_record(out), "status": "running"})
    last = out / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:100])
    assert math.isfinite(train(cfg))
    assert "is damaged" in caplog.text and "starting over" in caplog.text
    assert [p.name for p in last.parent.glob("last.ckpt.damaged*")]
    assert read_record(out)["status"] == "finished"


def test_folder_of_another_config_is_refused(make_cfg, fmnist_root: Path) -> None:
    base = [f"dataset.root={fmnist_root}", "backbone=mlp", "dataset.image_size=16"]
    train(make_cfg(*base, "backbone.hidden=16", "trainer.max_epochs=1"))
    other = make_cfg(*base, "backbone.hidden=8", "trainer.max_epochs=1")
    with pytest.raises(ValueError, match=r"another configuration \(backbone.hidden: '16' -> '8'"):
        train(other)
    assert (Path(other.output_dir) / RECORD).exists()  # the first run's record is kept


def read_until(proc: subprocess.Popen, text: str, timeout: float = 300) -> str:
    """The process's output up to the first line holding `text`."""
    seen, deadline = [], time.monotonic() + timeout
    for line in proc.stdout:
        seen.append(line)
        if text in line or time.monotonic() > deadline:
            break
    return "".join(seen)


@pytest.mark.slow  # tens of seconds: `make test-slow`
def test_a_run_killed_after_a_worse_epoch_resumes_after_it_and_logs_each_step_once(
    tmp_path: Path,
) -> None:
    """A learning rate too small to move a weight: val_loss never improves after epoch 0, the
    case where Lightning's `save_last` kept only epoch 0."""
    out, mlruns = tmp_path / "job", tmp_path / "mlruns"
    cmd = [
        sys.executable, "-m", "fashion_sweeps.train", "dataset=clothing_sample",
        "dataset.image_size=16", "backbone=mlp", "backbone.hidden=16", "optimizer=sgd",
        "optimizer.lr=1e-30", "trainer.max_epochs=6", "trainer.patience=10",
        "trainer.progress=lines", "tracking.log_model=false", f"tracking.dir={mlruns}",
        f"hydra.run.dir={out}",
    ]  # fmt: skip
    first = subprocess.Popen(
        cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    # The line of epoch 4 is written after epoch 3's checkpoint (its line comes just before).
    shown = read_until(first, "epoch 4/6")
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert first.returncode == -signal.SIGKILL, shown[-3000:]
    last = out / "checkpoints" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=False)["epoch"] >= 2  # 0-based

    second = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    client, run = only_run(mlruns)
    assert run.info.status == "FINISHED" and run.data.tags["attempt"] == "2"
    for key in run.data.metrics:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        assert len(steps) == len(set(steps)), f"{key} logged twice at a step: {sorted(steps)}"
    assert len(client.get_metric_history(run.info.run_id, "val_loss")) == 6


ONE_EPOCH_MLP = (
    "backbone=mlp",
    "backbone.hidden=16",
    "dataset.image_size=16",
    "trainer.max_epochs=1",
)


class _Planted:
    """A pickle that runs code when loaded: what a hostile `last.ckpt` would hold."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_planted_last_checkpoint_is_never_unpickled(
    make_cfg, fmnist_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = make_cfg(f"dataset.root={fmnist_root}", *ONE_EPOCH_MLP)
    train(cfg)
    out = Path(cfg.output_dir)
    write_record(out, {**read_record(out), "status": "running"})
    marker = tmp_path / "code-ran"
    torch.save({"state_dict": {}, "payload": _Planted(marker)}, out / "checkpoints" / "last.ckpt")
    assert math.isfinite(train(cfg))
    assert not marker.exists(), "loading the checkpoint ran code from it"
    assert "is damaged" in caplog.text  # set aside, never loaded; the run started over


def test_a_real_last_checkpoint_loads_with_weights_only(make_cfg, fmnist_root: Path) -> None:
    """What resume checks a checkpoint with: Lightning's own checkpoints pass it."""
    cfg = make_cfg(f"dataset.root={fmnist_root}", *ONE_EPOCH_MLP)
    train(cfg)
    last = Path(cfg.output_dir) / "checkpoints" / "last.ckpt"
    assert checkpoint_epoch(last) == 1  # its epochs done, counted from 1


def test_an_epoch_trained_again_replaces_what_the_killed_attempt_left(
    make_cfg, fmnist_root: Path
) -> None:
    """Killed after logging epoch 3 but before its last.ckpt: the rerun trains epoch 3 again.
    MLflow kept the killed attempt's val_loss beside the new train_loss (the new val_loss was
    dropped), and the killed attempt's best-epoch checkpoint stayed to be tested."""
    from fashion_sweeps.run_folder import best_checkpoints
    from fashion_sweeps.tracking.runs import metric_curve

    args = [f"dataset.root={fmnist_root}", "backbone=mlp", "backbone.hidden=16",
            "dataset.image_size=16", "trainer.patience=10"]  # fmt: skip
    cfg = make_cfg(*args, "trainer.max_epochs=2")
    train(cfg)
    out = Path(cfg.output_dir)
    record = read_record(out)
    client = MlflowClient(record["tracking_uri"])
    # What the killed attempt left: epoch 3 logged, its best checkpoint saved, last.ckpt not.
    client.log_batch(record["run_id"], metrics=[
        Metric(key, 99.0, int(time.time() * 1000) - 60_000, 3)
        for key in ("train_loss", "val_loss", "val_acc", "epoch")
    ])  # fmt: skip
    stale = out / "checkpoints" / "best-epoch=2.ckpt"  # Lightning's 2: the third epoch
    stale.write_bytes((out / "checkpoints" / "last.ckpt").read_bytes() + b"stale")
    write_record(out, {**record, "status": "running"})

    train(make_cfg(*args, "trainer.max_epochs=3"))

    run = client.get_run(record["run_id"])
    assert run.data.tags["attempt"] == "2"
    for key in ("train_loss", "val_loss", "val_acc"):
        assert run.data.metrics[key] != 99.0, key  # the epoch as trained again
        assert [m.step for m in metric_curve(client, run.info.run_id, key)] == [1, 2, 3]
    epochs = metric_curve(client, run.info.run_id, "epoch")
    assert [(m.step, m.value) for m in epochs] == [(1, 1), (2, 2), (3, 3)]  # from 1, by epoch
    assert all(p.read_bytes()[-5:] != b"stale" for p in best_checkpoints(out))
    rows = list(csv.DictReader((out / "results.csv").open()))  # one row per epoch, in the folder
    assert [int(float(r["epoch"])) for r in rows] == [1, 2, 3]
    assert float(rows[-1]["val_loss"]) == pytest.approx(run.data.metrics["val_loss"])
