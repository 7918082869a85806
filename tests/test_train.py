"""One real (tiny) run per data set format, tracked in MLflow; failures recorded, not lost."""

from __future__ import annotations

import contextlib
import csv
import json
import math
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import fashion_sweeps, output
from mlflow.tracking import MlflowClient

from fashion_sweeps.data.sources import DataError
from fashion_sweeps.errors import DiskFullError, user_error
from fashion_sweeps.tracking.runs import TrackingUnavailableError, tracking_uri
from fashion_sweeps.train import train

CNN = ["backbone=simple_cnn", "backbone.width=4"]
TINY = [*CNN, "trainer.max_epochs=2", "dataset.batch_size=8"]


def only_run(cfg):
    client = MlflowClient(tracking_uri(cfg.tracking))
    experiments = client.search_experiments()
    runs = client.search_runs([e.experiment_id for e in experiments])
    assert len(runs) == 1
    return client, runs[0]


@pytest.mark.parametrize(
    "dataset,extra",
    [
        ("fashion_mnist", ["backbone=mlp", "backbone.hidden=16", "dataset.image_size=16"]),
        ("clothing", ["dataset.image_size=16", "dataset.decode_workers=1"]),
        ("fashion_product", ["dataset.image_size=16", "dataset.min_count=5"]),
        ("image_folder", ["dataset.image_size=16"]),
    ],
)
def test_one_tracked_run_per_dataset(make_cfg, request, dataset: str, extra: list[str]) -> None:
    fixture = {
        "fashion_mnist": "fmnist_root",
        "clothing": "clothing_root",
        "fashion_product": "product_root",
        "image_folder": "folder_root",
    }[dataset]
    root = request.getfixturevalue(fixture)
    model = [] if any(o.startswith("backbone=") for o in extra) else CNN
    cfg = make_cfg(
        f"dataset={dataset}",
        f"dataset.root={root}",
        *model,
        "trainer.max_epochs=2",
        "dataset.batch_size=8",
        *extra,
    )
    best = train(cfg)
    assert math.isfinite(best)

    client, run = only_run(cfg)
    assert run.info.status == "FINISHED"
    assert run.data.tags["status"] == "finished"
    assert run.data.params["dataset.name"] == dataset
    assert run.data.params["optimizer.lr"] == "0.001"
    for key in ("test_acc", "test_f1_weighted", "test_f1_macro", "test_loss", "best_epoch"):
        assert key in run.data.metrics
    assert run.data.metrics["best_val_loss"] == pytest.approx(best)
    history = client.get_metric_history(run.info.run_id, "val_f1_weighted")
    assert len(history) == 2  # one value per epoch
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "label_map.json", "data"} <= artifacts
    # ...kept beside the local store, where `mlruns/` is, not elsewhere on the disk.
    assert list((Path(cfg.tracking.dir) / "artifacts").rglob("label_map.json"))


def test_clothing_run_records_its_skipped_rows(make_cfg, clothing_root: Path) -> None:
    cfg = make_cfg(
        "dataset=clothing",
        f"dataset.root={clothing_root}",
        "dataset.image_size=16",
        *TINY,
    )
    train(cfg)
    _, run = only_run(cfg)
    metrics = run.data.metrics
    assert metrics["skipped_missing_image"] == 1
    assert metrics["skipped_corrupt_image"] == 1
    assert metrics["skipped_no_row"] == 1
    assert metrics["skipped_excluded_label"] == 1  # the 'Skip' row
    assert run.data.params["num_classes"] == "3"


def test_diverging_run_stops_and_is_recorded_failed(make_cfg, clothing_root: Path) -> None:
    cfg = make_cfg(
        "dataset=clothing",
        f"dataset.root={clothing_root}",
        "dataset.image_size=16",
        "optimizer=sgd",
        "optimizer.lr=1e12",
        *TINY,
    )
    assert math.isnan(train(cfg))
    _, run = only_run(cfg)
    assert run.info.status == "FAILED"
    assert run.data.tags["status"] == "diverged"
    assert "non-finite" in run.data.tags["failure_reason"]


def test_a_diverged_run_exits_non_zero(tmp_path: Path) -> None:
    """`train` ending FAILED (diverged) exited 0: a script or CI job took it for a result."""
    result = fashion_sweeps(
        tmp_path, "train", "dataset=clothing_sample", "dataset.image_size=16", *CNN,
        "optimizer=sgd", "optimizer.lr=1e12", "trainer.max_epochs=1", "tracking.log_model=false",
        check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert "diverged" in output(result)


@pytest.mark.parametrize("root", ["nowhere", "a_file"])
def test_a_data_root_that_cannot_be_read_fails_before_any_run_is_made(make_cfg, tmp_path, root):
    """A typo in dataset.root is no experiment: no FAILED run, no new MLflow experiment."""
    (tmp_path / "a_file").write_text("not a folder")
    cfg = make_cfg("dataset=clothing", f"dataset.root={tmp_path / root}")
    with pytest.raises(DataError, match=root):
        train(cfg)
    client = MlflowClient(tracking_uri(cfg.tracking))
    assert [e.name for e in client.search_experiments()] == ["Default"]
    assert client.search_runs(["0"]) == []


def test_unreachable_tracking_server_fails_before_training(make_cfg, clothing_root) -> None:
    cfg = make_cfg(
        "dataset=clothing", f"dataset.root={clothing_root}", "tracking.uri=http://127.0.0.1:9"
    )
    with pytest.raises(TrackingUnavailableError, match="does not answer"):
        train(cfg)
    assert not (Path(cfg.output_dir) / "checkpoints").exists()


def test_a_read_only_store_is_refused_before_training(make_cfg, clothing_root, read_only_copy):
    """A store that cannot be written (a read-only mount, even for root) is said in one
    paragraph before any data is read, not after a traceback at the first run it opens."""
    store = Path(make_cfg().output_dir).parent / "store"
    MlflowClient(f"sqlite:///{store / 'mlflow.db'}").search_experiments()  # the store exists
    view = read_only_copy(store)
    cfg = make_cfg("dataset=clothing", f"dataset.root={clothing_root}", f"tracking.dir={view}")
    with pytest.raises(TrackingUnavailableError, match="read-only") as raised:
        train(cfg)
    assert str(view / "mlflow.db") in str(raised.value)
    assert not (Path(cfg.output_dir) / "checkpoints").exists()


def test_a_read_only_store_stops_a_sweep_in_one_paragraph(tmp_path, read_only_copy) -> None:
    """`screen` and `sweep` printed a traceback after making the study (train already said it)."""
    store = tmp_path / "store"
    MlflowClient(f"sqlite:///{store / 'mlflow.db'}").search_experiments()
    view = read_only_copy(store)
    result = fashion_sweeps(
        tmp_path, "screen", "sweep=tiny", "dataset=clothing_sample", f"tracking.dir={view}",
        check=False,
    )  # fmt: skip
    assert result.returncode == 1, output(result)[-3000:]
    assert "Traceback" not in output(result), output(result)[-3000:]
    assert "is read-only here" in output(result)
    import optuna

    for db in tmp_path.rglob("optuna.db"):  # no study made for runs that cannot be kept
        assert optuna.get_all_study_names(f"sqlite:///{db}") == []


def fill(disk: Path) -> None:
    """Write to `disk` until it has no space left."""
    with (disk / "filler").open("wb") as filler, contextlib.suppress(OSError):
        while True:
            filler.write(b"\0" * 65536)
            filler.flush()


def test_a_full_run_folder_fails_the_run_in_one_paragraph(make_cfg, clothing_root, small_disk):
    """The run folder's disk fills up: a DiskFullError saying where, and the MLflow run, whose
    store still has room, closed FAILED with that reason (it stayed RUNNING, under tracebacks)."""
    fill(small_disk)
    cfg = make_cfg("dataset=clothing", f"dataset.root={clothing_root}", *TINY)
    cfg.output_dir = str(small_disk / "out")
    with pytest.raises(Exception) as raised:
        train(cfg)
    assert isinstance(user_error(raised.value), DiskFullError), raised.value
    assert "No space left on the disk" in str(user_error(raised.value))
    client = MlflowClient(tracking_uri(cfg.tracking))
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert runs, "the run was opened before the disk was needed"
    assert {r.info.status for r in runs} == {"FAILED"}
    assert all("No space left" in r.data.tags["failure_reason"] for r in runs)


def test_a_full_disk_under_run_and_store_is_one_paragraph(tmp_path, small_disk) -> None:
    fill(small_disk)
    result = fashion_sweeps(
        tmp_path,
        "train",
        "dataset=clothing_sample",
        *TINY,
        f"tracking.dir={small_disk / 'mlruns'}",
        f"hydra.run.dir={small_disk / 'out'}",
        check=False,
    )
    assert result.returncode == 1, output(result)[-3000:]
    assert "Traceback" not in output(result), output(result)[-3000:]
    assert "No space left on device" in output(result)  # before Hydra writes its files there


def test_cli_trains_on_the_bundled_sample(tmp_path: Path) -> None:
    result = fashion_sweeps(
        tmp_path,
        "train",
        "dataset=clothing_sample",
        "backbone=simple_cnn",
        "backbone.width=4",
        "backbone.freeze=1",  # a frozen block stays in eval mode: no warning about it
        "trainer.max_epochs=1",
        f"tracking.dir={tmp_path / 'mlruns'}",
        f"hydra.run.dir={tmp_path / 'out'}",
    )
    assert "epoch 1/1" in output(result)  # one summary line when not on a tty
    assert "in eval mode" not in output(result)
    assert (tmp_path / "mlruns" / "mlflow.db").is_file()


@pytest.mark.parametrize(
    "override,message",
    [
        ("dataset.root={tmp}/missing", "DataError: The clothing data folder"),
        ("+dataset.augment={{flip: true, hue: 0.2}}", "AugmentError: Unknown dataset.augment"),
        # Refused by Hydra's execution whitelist: it was said, but under a traceback.
        ("optimizer._target_=os.system", "UntrustedTargetError:"),
    ],
)
def test_cli_prints_a_user_error_without_a_traceback(tmp_path: Path, override, message) -> None:
    code, printed = cli_train(tmp_path, "dataset=clothing", override.format(tmp=tmp_path))
    assert code == 1
    assert message in printed
    assert "Traceback" not in printed


def test_ema_validates_keeps_and_tests_the_averaged_weights(make_cfg, clothing_root) -> None:
    cfg = make_cfg(
        "dataset=clothing", f"dataset.root={clothing_root}", *TINY, "trainer.ema_decay=0.5"
    )
    assert math.isfinite(train(cfg))
    _, run = only_run(cfg)
    assert run.info.status == "FINISHED" and "test_acc" in run.data.metrics
    (best,) = (Path(cfg.output_dir) / "checkpoints").glob("best-*.ckpt")
    saved = torch.load(best, map_location="cpu", weights_only=False)
    # The checkpoint the test restores holds the average; the raw weights are kept beside it.
    averaged, current = saved["state_dict"], saved["current_model_state"]
    assert averaged.keys() == current.keys()
    assert any(not torch.equal(averaged[k], current[k]) for k in averaged)


def test_ema_decay_outside_zero_one_is_refused(make_cfg, clothing_root) -> None:
    cfg = make_cfg("dataset=clothing", f"dataset.root={clothing_root}", "trainer.ema_decay=1.5")
    with pytest.raises(ValueError, match="ema_decay"):
        train(cfg)


def test_test_metrics_are_logged_once_and_best_epoch_counts_from_one(
    make_cfg, clothing_root
) -> None:
    """One value per test metric (not Lightning's float32 and the evaluation's float64), and
    `best_epoch` numbered like `epochs_run` in MLflow, the log and the tables alike."""
    from fashion_sweeps.sweeps.tables import comparison_table

    cfg = make_cfg("dataset=clothing", f"dataset.root={clothing_root}", *TINY)
    train(cfg)
    client, run = only_run(cfg)
    tested = [k for k in run.data.metrics if k.startswith("test_")]
    assert {"test_loss", "test_acc", "test_f1_weighted"} <= set(tested)
    for key in tested:
        assert len(client.get_metric_history(run.info.run_id, key)) == 1, key

    (best,) = (Path(cfg.output_dir) / "checkpoints").glob("best-*.ckpt")
    lightning_epoch = int(best.stem.split("epoch=")[1].split("-")[0])  # Lightning counts from 0
    assert run.data.metrics["best_epoch"] == lightning_epoch + 1
    assert 1 <= run.data.metrics["best_epoch"] <= run.data.metrics["epochs_run"]
    table = comparison_table(client, [run])
    assert table.loc[0, "best_epoch"] == run.data.metrics["best_epoch"]
    # The best epoch's curves' values, logged as best_*: what MLflow's runs table shows beside
    # the last epoch's val_acc, and what the tables show under the same names.
    best_step = run.data.metrics["best_epoch"]
    for name in ("val_loss", "val_acc", "val_f1_weighted", "train_loss", "train_acc"):
        (at_best,) = [
            m.value for m in client.get_metric_history(run.info.run_id, name) if m.step == best_step
        ]
        assert run.data.metrics[f"best_{name}"] == pytest.approx(at_best), name
        if f"best_{name}" in table:
            assert table.loc[0, f"best_{name}"] == pytest.approx(at_best), name


def test_the_test_split_runs_through_the_model_once(make_cfg, clothing_root, monkeypatch) -> None:
    """The evaluation (per-class table, confusion matrix, gallery) reuses the test pass's outputs:
    a second pass cost a fine-tuned run as long as the test itself."""
    import fashion_sweeps.training as train_module

    def second_pass(*args, **kwargs):
        raise AssertionError("the test split ran through the model a second time")

    monkeypatch.setattr(train_module, "collect_predictions", second_pass)
    cfg = make_cfg("dataset=clothing", f"dataset.root={clothing_root}", *TINY)
    train(cfg)
    client, run = only_run(cfg)
    assert run.info.status == "FINISHED"
    table = client.download_artifacts(run.info.run_id, "evaluation/per_class.csv")
    assert Path(table).stat().st_size > 0


def test_a_run_carries_mlflows_context_tags_data_inputs_and_system_metrics(
    make_cfg, clothing_root
) -> None:
    """What the MLflow UI's runs table and run page show: the Source and Dataset columns, and
    the System metrics tab."""
    cfg = make_cfg(
        "dataset=clothing",
        f"dataset.root={clothing_root}",
        *TINY,
        "tracking.system_metrics_s=0.2",
    )
    train(cfg)
    client, run = only_run(cfg)
    tags = run.data.tags
    assert {"mlflow.user", "mlflow.source.name", "mlflow.source.type"} <= set(tags)
    checkout = Path(__file__).resolve().parent.parent
    head = subprocess.run(
        ["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True
    )
    if head.returncode == 0:
        assert tags["mlflow.source.git.commit"] == head.stdout.strip()

    inputs = {
        {t.key: t.value for t in i.tags}["mlflow.data.context"]: i.dataset
        for i in run.inputs.dataset_inputs
    }
    assert set(inputs) == {"train", "val", "test"}
    counts = json.loads(
        Path(client.download_artifacts(run.info.run_id, "data/class_counts.json")).read_text()
    )
    for split, dataset in inputs.items():
        assert str(clothing_root) in dataset.source
        assert json.loads(dataset.profile)["features_shape"][0] == sum(counts[split].values())
    assert len({d.digest for d in inputs.values()}) == 3  # one per split, all from the cache's

    assert any(key.startswith("system/cpu") for key in run.data.metrics)


def test_a_run_shorter_than_the_sampling_interval_still_has_system_metrics(
    make_cfg, clothing_root
) -> None:
    """The demo's runs last a few seconds, under the default 10 s interval: the monitor's
    last sample is logged when the run ends, so the System metrics tab is never empty."""
    cfg = make_cfg(
        "dataset=clothing",
        f"dataset.root={clothing_root}",
        *TINY,
        "tracking.system_metrics_s=600",
    )
    train(cfg)
    _, run = only_run(cfg)
    assert any(key.startswith("system/cpu") for key in run.data.metrics)


def cli_train(tmp_path: Path, *args: str) -> tuple[int, str]:
    """`fashion-sweeps train ARGS` in a subprocess: its exit code and everything it printed."""
    result = fashion_sweeps(
        tmp_path,
        "train",
        *args,
        "backbone.pretrained=false",
        f"tracking.dir={tmp_path / 'mlruns'}",
        f"hydra.run.dir={tmp_path / 'out'}",
        check=False,
    )
    return result.returncode, output(result)


def assert_one_paragraph(code: int, output: str, message: str) -> None:
    assert code == 1, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    (line,) = [line for line in output.splitlines() if message in line]
    assert "[ERROR]" in line


@pytest.mark.parametrize(
    "args,message",
    [
        (["test_time_crops=[1.0,2]"], "TestTimeError: test_time_crops=[1.0, 2]"),
        (["trainer.ema_decay=1"], "TrainerConfigError: trainer.ema_decay=1"),
        (["trainer.max_epochs=0"], "TrainerConfigError: trainer.max_epochs=0"),
        (["optimizer.lr=-0.01"], "OptimizerConfigError: optimizer.lr=-0.01"),
        (["dataset.batch_size=0"], "DataError: dataset.batch_size=0"),
        (["dataset.batch_size=-4"], "DataError: dataset.batch_size=-4"),
        (["backbone=vgg16", "dataset.image_size=16"], "ImageSizeError: dataset.image_size=16"),
        (["backbone=simple_cnn", "dataset.image_size=8"], "ImageSizeError: dataset.image_size=8"),
        (["dataset.include=[Dress]"], "DataError: Only one class (Dress) is left"),
    ],
)
def test_impossible_settings_are_refused_as_user_errors(make_cfg, args, message) -> None:
    """Each is a UserError, which the CLI prints as its one paragraph (the CLI test above shows
    it for some); tested in process, where a subprocess each took a minute of the suite."""
    from fashion_sweeps.errors import user_error

    cfg = make_cfg("dataset=clothing_sample", "backbone.pretrained=false", *args)
    with pytest.raises(Exception) as caught:
        train(cfg)
    err = user_error(caught.value)
    assert err is not None, caught.value
    assert message in f"{type(err).__name__}: {err}"
    assert "\n" not in str(err).strip()  # one paragraph


def test_truncated_fashion_mnist_download_is_one_paragraph(tmp_path, fmnist_root) -> None:
    path = fmnist_root / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:200])  # a download that stopped early
    code, output = cli_train(
        tmp_path, f"dataset.root={fmnist_root}", "dataset.reader.download=false"
    )
    assert_one_paragraph(code, output, "is truncated or damaged")
    assert "train-images-idx3-ubyte.gz" in output


def test_csv_not_in_utf8_is_one_paragraph(tmp_path, clothing_root) -> None:
    csv_path = clothing_root / "images.csv"
    csv_path.write_bytes(csv_path.read_text().replace("Dress", "Robe é").encode("latin-1"))
    code, output = cli_train(tmp_path, "dataset=clothing", f"dataset.root={clothing_root}")
    assert_one_paragraph(code, output, "images.csv is not UTF-8 text")


@pytest.mark.parametrize("size", [0, -8])
def test_an_image_size_below_one_is_one_paragraph_before_any_run(make_cfg, size: int) -> None:
    """A ZeroDivisionError traceback before (the CLI prints this error's paragraph alone, as
    test_impossible_settings_are_one_paragraph shows for its siblings)."""
    from fashion_sweeps.data.datamodule import check_loader_options

    cfg = make_cfg("dataset=clothing_sample", f"dataset.image_size={size}")
    with pytest.raises(DataError, match=rf"dataset.image_size={size}: give the pixels per side"):
        check_loader_options(cfg.dataset)


@pytest.mark.parametrize("plots", [True, False])
def test_the_run_folder_holds_a_table_per_epoch_and_its_curves(make_cfg, clothing_root, plots):
    """As Ultralytics writes them without asking: results.csv (one row per epoch) and, in runs
    that draw figures, results.png, beside the checkpoints."""
    cfg = make_cfg(
        "dataset=clothing", f"dataset.root={clothing_root}", *TINY, f"tracking.plots={plots}",
    )  # fmt: skip
    train(cfg)
    out = Path(cfg.output_dir)
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert {"train_loss", "train_acc", "val_loss", "val_acc", "seconds"} <= set(rows[0])
    _, run = only_run(cfg)
    assert float(rows[-1]["val_loss"]) == pytest.approx(run.data.metrics["val_loss"])
    assert (out / "results.png").is_file() == plots
