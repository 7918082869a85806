"""When a run's training steps start and end: the overhead around them and the training throughput.

`training.py` logs, per run, under `time/`: `startup_s` (run start -> first training step), `teardown_s` (last
training step -> just before the run is closed) and `train_images_per_s` (steady state: training
batches after each epoch's first, whose one-off warm-up would weigh on short epochs; validation
excluded). `make bench` reads them.
"""

from __future__ import annotations

import time
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback


class TrialClock(Callback):
    """Timestamps (`time.perf_counter`) of the first and last training step, and per epoch the
    span and images of its training batches after the first, so that throughput leaves validation
    and warm-up out."""

    def __init__(self, start: float | None = None) -> None:
        self.start = time.perf_counter() if start is None else start
        self.first_step: float | None = None
        self.last_step: float | None = None
        self.images = 0
        # epoch -> [end of its first batch, end of its last batch, images after the first batch]
        self._spans: dict[int, list[float]] = {}

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.first_step is None:
            self.first_step = time.perf_counter()

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self.last_step = time.perf_counter()
        images = len(batch[-1])
        self.images += images
        span = self._spans.get(trainer.current_epoch)
        if span is None:  # the epoch's first batch: the timed span starts where it ends
            self._spans[trainer.current_epoch] = [self.last_step, self.last_step, 0]
        else:
            span[1] = self.last_step
            span[2] += images

    @property
    def startup_s(self) -> float:
        return (self.first_step or time.perf_counter()) - self.start

    def teardown_s(self) -> float:
        """Seconds since the last training step."""
        return time.perf_counter() - (self.last_step or self.start)

    @property
    def images_per_s(self) -> float:
        seconds = sum(end - begin for begin, end, _ in self._spans.values())
        images = sum(n for _, _, n in self._spans.values())
        return images / seconds if seconds > 0 else float("nan")
