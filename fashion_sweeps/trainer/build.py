"""The Lightning Trainer of one run: devices, early stopping, checkpoints, progress  (conf/trainer/).

Keys of `conf/trainer/*.yaml` go to `pytorch_lightning.Trainer` as they are, except the few this
module consumes itself: `patience`, `progress`, `progress_every_s`, `ema_decay`; and
`channels_last` and `precision: auto`, which trainer/speed.py resolves.
"""

from __future__ import annotations

import logging
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import Callback, EarlyStopping, ModelCheckpoint, TQDMProgressBar
from pytorch_lightning.callbacks.progress.tqdm_progress import convert_inf
from pytorch_lightning.callbacks.weight_averaging import EMAWeightAveraging

from fashion_sweeps import interrupts, run_folder
from fashion_sweeps.errors import UserError
from fashion_sweeps.progress import ProgressLines

log = logging.getLogger(__name__)


class _DropAdverts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip:" not in record.getMessage()


# Lightning's advertising tip and two warnings that say nothing a user can act on.
logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(_DropAdverts())
warnings.filterwarnings("ignore", message=r".*LeafSpec.*")
warnings.filterwarnings("ignore", message=r".*smaller than the logging interval.*")
# EMA (ema_averaging): the test loads the best checkpoint, whose weights are already the average.
warnings.filterwarnings("ignore", message=r".*WeightAveraging callback, but loading a checkpoint.*")
# Frozen backbone blocks stay in eval mode on purpose (models/backbones.py: their BatchNorm keeps
# its ImageNet statistics); Lightning warned about them on every frozen run.
warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training.*")


class StopWhenAsked(Callback):
    """Stop at a batch boundary once a SIGTERM asked to (interrupts.py): nothing is half
    written there. When Lightning's own SIGTERM handler saw it, Lightning stops instead, on
    every DDP process at the same batch."""

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        if not trainer.received_sigterm:
            interrupts.check()

    on_validation_batch_start = on_test_batch_start = on_predict_batch_start = on_train_batch_start


class TrainerConfigError(UserError, ValueError):
    """A `trainer.*` option this module consumes has an impossible value."""


class EpochSummary(Callback):
    """One log line per epoch, readable in a file where a progress bar would be noise, and
    within a long epoch a line at least every 30 s: batch, images/s, estimated time left (at
    most: early stopping may end the run sooner)."""

    def __init__(self, every_s: float | None = None) -> None:
        self.every_s = every_s

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._progress = ProgressLines(log, self.every_s)
        self._images = 0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        self._images += len(batch[0])
        if not trainer.is_global_zero or not self._progress.due():
            return
        per_epoch = trainer.num_training_batches
        done = trainer.current_epoch * per_epoch + batch_idx + 1
        total = trainer.max_epochs * per_epoch if trainer.max_epochs > 0 else done
        elapsed = time.perf_counter() - self._progress.start
        self._progress.update(
            f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs} batch "
            f"{batch_idx + 1}/{per_epoch}",
            self._images,
            left_s=elapsed / done * (total - done),
        )

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Runs after the epoch's validation, so both train and val metrics are in.
        if not trainer.is_global_zero:
            return
        metrics = trainer.callback_metrics
        shown = " ".join(
            f"{k}={float(metrics[k]):.4f}"
            for k in ("train_loss", "train_acc", "val_loss", "val_acc", "val_f1_weighted")
            if k in metrics
        )
        seconds = time.perf_counter() - getattr(self, "_start", time.perf_counter())
        log.info(
            "epoch %d/%d %s (%.1fs)", trainer.current_epoch + 1, trainer.max_epochs, shown, seconds
        )


class EpochBar(TQDMProgressBar):
    """Lightning's bar on a terminal, with the run's loss and accuracy (train and validation, as
    the epoch lines show them), epochs counted from 1 and no logger version (`v_num`)."""

    SHOWN = ("train_loss", "train_acc", "val_loss", "val_acc")

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, str]:
        metrics = trainer.callback_metrics
        return {k: f"{float(metrics[k]):.4f}" for k in self.SHOWN if k in metrics}

    def on_train_epoch_start(self, trainer: pl.Trainer, *args: object) -> None:
        # Lightning's own steps, with the epoch from 1: its "Epoch 0" would flash first.
        if self._leave:
            self.train_progress_bar = self.init_train_tqdm()
        self.train_progress_bar.reset(total=convert_inf(self.total_train_batches))
        self.train_progress_bar.initial = 0
        self.train_progress_bar.set_description(
            f"Epoch {trainer.current_epoch + 1}/{trainer.max_epochs}"
        )


def run_device(cfg: DictConfig) -> str:
    """ "cuda" when the run trains on a GPU, else "cpu" (before any Trainer exists)."""
    accelerator = str(cfg.get("accelerator", "cpu")).lower()
    if accelerator in ("gpu", "cuda"):
        return "cuda"
    return "cuda" if accelerator == "auto" and torch.cuda.is_available() else "cpu"


def progress_bar_wanted(progress: str) -> bool:
    if progress not in ("auto", "bar", "lines"):
        raise TrainerConfigError(f"trainer.progress={progress!r}: use auto, bar or lines.")
    return progress == "bar" or (progress == "auto" and sys.stderr.isatty())


def ema_averaging(decay: float) -> EMAWeightAveraging:
    """Lightning's exponential moving average of the weights (and BatchNorm statistics), updated
    every step: validation, the best checkpoint, the test and the logged model all use it."""
    if not 0 < float(decay) < 1:
        raise TrainerConfigError(
            f"trainer.ema_decay={decay!r}: a decay per step in (0, 1), e.g. 0.99 (about the last "
            "100 steps weigh), or null for no averaging."
        )
    return EMAWeightAveraging(decay=float(decay))


def check_trainer_options(cfg: DictConfig) -> None:
    """The options this module consumes, checked before a run opens (TrainerConfigError)."""
    progress_bar_wanted(cfg.get("progress", "auto"))
    epochs = cfg.get("max_epochs")
    if epochs is not None and (not isinstance(epochs, int) or epochs == 0 or epochs < -1):
        raise TrainerConfigError(
            f"trainer.max_epochs={epochs!r}: train at least one epoch (e.g. "
            "trainer.max_epochs=10), or -1 to train until early stopping ends the run."
        )
    if cfg.get("ema_decay") is not None:
        ema_averaging(cfg.ema_decay)


def last_checkpoint(folder: Path) -> ModelCheckpoint:
    """`last.ckpt`, rewritten after every epoch's validation: what a killed run resumes from.
    Not `save_last=True` on the best-checkpoint callback: Lightning 2.6 rewrites that file only
    when val_loss improves, so a rerun trained the epochs after the best one again. Lightning
    runs checkpoint callbacks after the others and in list order, so this file also holds the
    best checkpoint's and early stopping's state of the same epoch."""
    return ModelCheckpoint(
        dirpath=folder,
        filename=run_folder.LAST,
        monitor=None,  # no ranking: the newest epoch replaces the file
        save_top_k=1,
        enable_version_counter=False,  # always last.ckpt, never last-v1.ckpt
    )


def build_trainer(
    cfg: DictConfig,
    output_dir: Path,
    logger: Any = False,
    callbacks: list[Callback] | None = None,
    precision: str | None = None,
) -> tuple[pl.Trainer, ModelCheckpoint]:
    """A Trainer with EarlyStopping on val_loss and a best-checkpoint callback (returned too);
    `precision`: `trainer.precision` resolved (trainer/speed.py)."""
    options = OmegaConf.to_container(cfg, resolve=True)
    if precision is not None:
        options["precision"] = precision
    patience = options.pop("patience")
    bar = progress_bar_wanted(options.pop("progress", "auto"))
    options.pop("channels_last", None)  # applied to the model by train.py, before any wrapping
    progress_every_s = options.pop("progress_every_s", None)
    ema_decay = options.pop("ema_decay", None)
    checkpoint = ModelCheckpoint(
        dirpath=run_folder.checkpoints(output_dir),
        filename=run_folder.BEST,
        monitor="val_loss",
        mode="min",
    )
    all_callbacks: list[Callback] = [
        checkpoint,
        last_checkpoint(run_folder.checkpoints(output_dir)),
        # check_finite: a NaN val_loss stops the run rather than training on for nothing.
        EarlyStopping(monitor="val_loss", mode="min", patience=patience, check_finite=True),
        StopWhenAsked(),
        *(callbacks or []),
    ]
    if ema_decay is not None:
        all_callbacks.append(ema_averaging(ema_decay))
    all_callbacks.append(EpochBar() if bar else EpochSummary(progress_every_s))
    trainer = pl.Trainer(
        default_root_dir=output_dir,
        logger=logger,
        callbacks=all_callbacks,
        enable_progress_bar=bar,
        enable_model_summary=False,
        **options,
    )
    return trainer, checkpoint
