"""One training run: data -> model -> Lightning fit -> test the best checkpoint -> MLflow.

`train(cfg)` returns the best validation loss, the objective Hydra's Optuna sweeper minimises
(NaN when the run diverged, which Optuna records as a failed trial). Its command, the Hydra app
`fashion-sweeps train` / `python -m fashion_sweeps.train`, is `train.py`, which imports this
module only when a run starts (help and completion stay instant).
"""

from __future__ import annotations

import gc
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from pytorch_lightning.callbacks import Callback, ModelCheckpoint

from fashion_sweeps import interrupts, run_folder
from fashion_sweeps.config import (
    Condition,
    build,
    check_targets,
    component_name,
    condition_key,
    image_cache_dir,
)
from fashion_sweeps.console_log import drop_basic_config
from fashion_sweeps.data.datamodule import (
    FashionDataModule,
    check_loader_options,
    check_readable,
    train_augmentation,
)
from fashion_sweeps.data.sampling import sampling_summary
from fashion_sweeps.errors import disk_full
from fashion_sweeps.evaluation import (
    baseline_text,
    baselines,
    collect_predictions,
    evaluate,
    tail_summary,
)
from fashion_sweeps.inference import engines
from fashion_sweeps.inference.engines import Engine
from fashion_sweeps.models.classifier import classifier_for, crop_areas
from fashion_sweeps.models.features import apply_feature_cache
from fashion_sweeps.models.knn import check_knn_config, fit_knn, is_knn
from fashion_sweeps.models.module import ClassifierModule, check_optimizer
from fashion_sweeps.tracking.datasets import split_inputs
from fashion_sweeps.tracking.evaluation_artifacts import log_evaluation
from fashion_sweeps.tracking.job_run import open_job_run
from fashion_sweeps.tracking.run_results import log_run_results
from fashion_sweeps.tracking.runs import (
    TrackedRun,
    TrackingLostError,
    lost_store,
)
from fashion_sweeps.trainer.build import (
    build_trainer,
    check_trainer_options,
    run_device,
)
from fashion_sweeps.trainer.clock import TrialClock
from fashion_sweeps.trainer.distributed import (
    check_relaunch_possible,
    fit_threads_to_allocation,
    is_rank_zero,
    mark_data_ready,
    wait_for_rank_zero_data,
)
from fashion_sweeps.trainer.epoch_table import EpochTable
from fashion_sweeps.trainer.speed import Speed, resolve_speed

log = logging.getLogger(__name__)
drop_basic_config()  # left by importing mlflow.pytorch above


def inference_engine(cfg: DictConfig) -> Engine:
    """The engine of the run's forward passes that train nothing (conf/inference/)."""
    return engines.from_config(cfg.get("inference"), run_device(cfg.trainer))


def train(cfg: DictConfig, callbacks: list[Callback] | None = None) -> float:
    """One run. `callbacks` are extra Lightning callbacks (e.g. the benchmark's clock)."""
    start = time.perf_counter()
    fit_threads_to_allocation()
    pl.seed_everything(cfg.seed, workers=True)
    # Config errors, before any run is opened or data read.
    check_targets(cfg)
    check_loader_options(cfg.dataset)
    check_knn_config(cfg)
    train_augmentation(cfg.dataset)
    crop_areas(cfg.get("test_time_crops"))
    check_trainer_options(cfg.trainer)
    check_optimizer(cfg.optimizer)
    engine = inference_engine(cfg)  # resolved once: its warnings, if any, said once
    # Data errors too: a wrong dataset.root must leave no FAILED run or new experiment behind.
    check_readable(cfg.dataset, cfg.seed, image_cache_dir(cfg))
    condition = Condition.of(cfg)
    tags = {**condition.tags(), "condition": condition.key, **(cfg.tracking.tags or {})}
    # A SIGTERM that came after the sweep's last check: stop before a run exists (the stage
    # records the condition as abandoned), not after it opened and is left KILLED.
    interrupts.check()
    # A new MLflow run; or, in a folder an interrupted job left, its run and last checkpoint.
    job = open_job_run(
        cfg,
        run_folder.output_dir(cfg),
        experiment=cfg.tracking.experiment or cfg.dataset.name,
        run_name=cfg.tracking.run_name or condition_key(cfg),
        tags=tags,
        parent_run_id=cfg.tracking.parent_run_id,
    )
    if job.run is None:  # this folder's run finished earlier
        return job.result
    run = job.run
    try:
        with run.system_metrics(cfg.tracking.get("system_metrics_s")):
            best = _fit_and_test(cfg, run, engine, start, callbacks, job.resume_from)
    except BaseException as err:  # Ctrl-C included: the run must not stay RUNNING forever
        raised = _close_stopped_run(cfg, run, err)
        if raised is err:
            raise
        raise raised from err
    finally:
        # A sweep trains its conditions in one process, and each one's trainer, module and data
        # sit in reference cycles the collector reached only after several more had piled up
        # (230 MB of feature copies a condition on the product photos).
        gc.collect()
    return best


def _close_stopped_run(cfg: DictConfig, run: TrackedRun, err: BaseException) -> BaseException:
    """Close a run that `err` stopped, saying why; return what to raise in its place."""
    if interrupts.was_interrupted(err):
        run.set_tags({"status": "interrupted", "failure_reason": interrupts.reason()})
        run.end("KILLED")
        # One kind of interruption for callers: Lightning turns its KeyboardInterrupt into
        # SystemExit(1), which a sweep would count as a crash.
        return KeyboardInterrupt(interrupts.signal_name())
    lost = lost_store(run.uri, err)
    if lost:  # nothing can be written to the store: say how to continue once it is back
        return _tracking_lost(cfg, run, lost)
    full = disk_full(err)
    reason = f"{type(full or err).__name__}: {full or err}"[:5000]
    try:
        run.set_tags({"status": "failed", "failure_reason": reason})
        run.end("FAILED")
    except Exception as closing:  # the store is on the full disk too
        if full is None or disk_full(closing) is None:
            raise
        log.warning("MLflow run %s stays RUNNING: its store is full too.", run.run_id)
    return full or err


def _tracking_lost(cfg: DictConfig, run: TrackedRun, why: str) -> TrackingLostError:
    out = run_folder.output_dir(cfg)
    return TrackingLostError(
        f"The MLflow tracking store {run.uri} stopped answering during the run ({why}). What "
        f"was trained is kept: the last checkpoint is in {run_folder.checkpoints(out)} and "
        f"MLflow run {run.run_id} keeps what was logged. Once the store answers again, run the "
        f"same command with hydra.run.dir={out} to train on from that checkpoint in the same "
        "MLflow run."
    )


def _fit_and_test(
    cfg: DictConfig,
    run: TrackedRun,
    engine: Engine,
    start: float,
    callbacks: list[Callback] | None = None,
    resume_from: Path | None = None,
) -> float:
    """Data, model and trainer of the run; fit; test the best checkpoint. Returns the objective."""
    run.log_config(cfg)
    out = run_folder.output_dir(cfg)
    data = FashionDataModule(cfg.dataset, cfg.sampler, cfg.seed, image_cache_dir(cfg))
    wait_for_rank_zero_data(out)  # DDP ranks > 0 read the caches rank 0 builds
    data.setup()
    _log_data(cfg, run, data)
    module, speed = _module(cfg, run, data, engine)
    mark_data_ready(out)
    clock = TrialClock(start)  # overhead around the training steps, logged by _test
    epochs = EpochTable(out)
    trainer, checkpoint = build_trainer(
        cfg.trainer,
        out,
        logger=run.lightning_logger(),
        callbacks=[clock, epochs, *(callbacks or [])],
        precision=speed.precision,
    )
    check_relaunch_possible(trainer)
    best = _fit(cfg, run, trainer, checkpoint, module, data, engine, resume_from, start)
    if best is None:  # diverged: recorded as failed
        return math.nan
    _test(cfg, run, trainer, module, data, best, clock, start, epochs.best_of(best.epoch))
    return best.val_loss


def _log_data(cfg: DictConfig, run: TrackedRun, data: FashionDataModule) -> None:
    """The prepared data's facts: class counts per split, skipped items, label map, the splits as
    MLflow inputs, and what the sampler made of the training split."""
    prepared = data.data
    counts = prepared.counts()
    run.log_json(counts, "data/class_counts.json")
    run.log_params(
        {
            "num_classes": len(prepared.classes),
            **{f"n_{split}": sum(c.values()) for split, c in counts.items()},
        }
    )
    run.log_at_end({f"skipped_{reason}": n for reason, n in prepared.skipped.items()})
    run.log_json(prepared.classes, "label_map.json")
    run.log_inputs(split_inputs(prepared, cfg.dataset.name, cfg.dataset.root))
    sampling = sampling_summary(
        data.plan,
        prepared.targets[prepared.indices("train")],
        prepared.classes,
        component_name(cfg.sampler),
    )
    run.log_json(sampling, "data/sampling.json")
    run.log_params(
        {
            "train_images_per_epoch": sampling["images_per_epoch"],
            **{
                f"train_counts_{when}": json.dumps(
                    {k: v[when] for k, v in sampling["classes"].items()}
                )
                for when in ("before", "after")
            },
        }
    )


def _module(
    cfg: DictConfig, run: TrackedRun, data: FashionDataModule, engine: Engine
) -> tuple[ClassifierModule, Speed]:
    """The LightningModule of the run's classifier, and the precision and layout it trains in
    (trainer/speed.py); with a frozen backbone, on its cached features (models/features.py,
    computed by `engine`), whose use the run records."""
    model = classifier_for(cfg, data.data)
    speed = resolve_speed(cfg.trainer, model, run_device(cfg.trainer))
    if speed.channels_last:
        # NHWC weights: oneDNN's CPU convolutions (and cuDNN's with mixed precision) run faster.
        # Before Lightning wraps the model (DDP keeps views of the parameters as they are then).
        model.to(memory_format=torch.channels_last)
    run.log_params({"train_precision": speed.precision, "channels_last": speed.channels_last})
    scheduler = build(cfg.scheduler) if cfg.scheduler.get("_target_") else None
    cache = cfg.get("cache") or {}
    features = apply_feature_cache(
        cache.get("features", False), cache.get("dir"), model, data, engine
    )
    # The engine whose features the head trains on (after any fallback), else the configured one.
    run.log_params((features.engine or engine).params)
    run.set_tags({"image_cache": data.data.image_cache, "feature_cache": features.status})
    seconds = {"image_cache_s": data.data.seconds, "feature_cache_s": features.seconds}
    run.log_times(seconds, at_end=True)
    module = ClassifierModule(
        model,
        optimizer=build(cfg.optimizer),
        scheduler=scheduler,
        class_weights=data.plan.class_weights,
        label_smoothing=cfg.get("label_smoothing", 0.0),
        on_features=features.active,
        augment=data.train_augmentation(),
    )
    return module, speed


@dataclass(frozen=True)
class _Best:
    """What the fit leaves for the test: the checkpoint, its val_loss and epoch (from 1)."""

    checkpoint: Path | str
    val_loss: float
    epoch: int


def _fit(
    cfg: DictConfig,
    run: TrackedRun,
    trainer: pl.Trainer,
    checkpoint: ModelCheckpoint,
    module: ClassifierModule,
    data: FashionDataModule,
    engine: Engine,
    resume_from: Path | None,
    start: float,
) -> _Best | None:
    """Train (from `resume_from` when given), or store a kNN head's features; None when the run
    diverged, which closes it as failed."""
    if is_knn(cfg.head):
        # Nothing to optimise (models/knn.py): store the training features, validate once.
        path = run_folder.knn_checkpoint(run_folder.output_dir(cfg))
        return _Best(path, fit_knn(trainer, module, data, path, engine), 0)
    trainer.fit(module, datamodule=data, ckpt_path=resume_from)
    if module.diverged:
        run.set_tags({"status": "diverged", "failure_reason": module.divergence})
        run.log_times({"wall_time_s": time.perf_counter() - start})
        run.end("FAILED")
        log.error(
            "Run %s diverged (%s): recorded as failed in MLflow. Lower optimizer.lr or try "
            "another optimizer.",
            condition_key(cfg),
            module.divergence,
        )
        return None
    path = checkpoint.best_model_path
    return _Best(path, float(checkpoint.best_model_score), run_folder.epoch_of(path))


def _to_load(cfg: DictConfig, trainer: pl.Trainer, best: _Best) -> Path | str | None:
    """The checkpoint to test; None when the model in memory is it (the best epoch was the
    last, no weight averaging swapped weights in): reloading cost up to 0.1 s of a screen
    trial's teardown."""
    if is_knn(cfg.head) or cfg.trainer.get("ema_decay") is not None:
        return best.checkpoint
    return None if best.epoch == trainer.current_epoch else best.checkpoint


def _test(
    cfg: DictConfig,
    run: TrackedRun,
    trainer: pl.Trainer,
    module: ClassifierModule,
    data: FashionDataModule,
    best: _Best,
    clock: TrialClock,
    start: float,
    best_epoch: dict[str, float],
) -> None:
    """Test the best checkpoint; on rank 0, evaluate it, log metrics (`best_epoch`: the best
    epoch's train and validation metrics) and results, close the run."""
    # The test metrics are logged once, below, beside the evaluation's: Lightning's logger would
    # log them a second time (float32, at the last step).
    trainer.loggers = []
    trainer.test(module, datamodule=data, ckpt_path=_to_load(cfg, trainer, best), verbose=False)
    if not is_rank_zero():
        return  # the rest is rank 0's: evaluation and logging
    prepared = data.data
    # The best checkpoint's test-split probabilities, from the test pass (a second pass where DDP
    # ranks each tested a share), once for every report and plot.
    predictions = module.test_predictions()
    if predictions is None:
        predictions = collect_predictions(module, data.test_dataloader())
    test_metrics = {
        k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test_")
    }
    evaluation = evaluate(predictions, recall_below=cfg.tail_recall)
    figures = cfg.tracking.get("plots", True)
    log_evaluation(run, evaluation, run_folder.evaluation(run_folder.output_dir(cfg)), figures)
    (log.warning if len(evaluation.tail) else log.info)(tail_summary(evaluation))
    test_metrics.update({f"test_{k}": v for k, v in evaluation.overall.items()})
    train_targets = prepared.targets[prepared.indices("train")]
    floor = baselines(train_targets, predictions.targets, len(prepared.classes))
    test_metrics.update({f"test_{k}": v for k, v in floor.items()})
    accuracy = baseline_text(test_metrics.get("test_acc", math.nan), floor)
    run.log_metrics(
        {
            **test_metrics,
            **best_epoch,
            "best_val_loss": best.val_loss,
            "best_epoch": best.epoch,
            "epochs_run": trainer.current_epoch,
            "train_images_seen": data.plan.images_per_epoch * trainer.current_epoch,
        }
    )
    run.log_times(
        {
            "wall_time_s": time.perf_counter() - start,
            "startup_s": clock.startup_s,
            "train_images_per_s": clock.images_per_s,
        }
    )
    # Curves, gallery and the deployable model: after the metrics, so a failure loses nothing.
    log_run_results(
        run,
        module.model,
        lambda: prepared.images("test"),
        predictions,
        cfg.tracking,
        accuracy,
        floor["chance_acc"],
        run_folder.output_dir(cfg),
    )
    run.set_tags({"status": "finished"})
    run.log_times({"teardown_s": clock.teardown_s()})
    run.end("FINISHED")
    log.info(
        "%s: best val_loss %.4f at epoch %d; test acc %s, weighted F1 %.4f",
        condition_key(cfg),
        best.val_loss,
        best.epoch,
        accuracy,
        test_metrics.get("test_f1_weighted", math.nan),
    )
