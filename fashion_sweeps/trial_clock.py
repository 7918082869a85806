"""When a run's training steps start and end: the overhead around them and the training throughput.

`train.py` logs, per run: `startup_s` (run start -> first training step), `teardown_s` (last
training step -> just before the run is closed) and `train_images_per_s` (training batches only,
validation excluded). `make bench` reads them.
"""

from __future__ import annotations

import time
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback


class TrialClock(Callback):
    """Timestamps (`time.perf_counter`) of the first and last training step, and per epoch the
    span of its training batches, so that throughput leaves validation out."""

    def __init__(self, start: float | None = None) -> None:
        self.start = time.perf_counter() if start is None else start
        self.first_step: float | None = None
        self.last_step: float | None = None
        self.images = 0
        self._spans: dict[int, list[float]] = {}  # epoch -> [first batch start, last batch end]

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        now = time.perf_counter()
        if self.first_step is None:
            self.first_step = now
        self._spans.setdefault(trainer.current_epoch, [now, now])

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self.last_step = time.perf_counter()
        self._spans[trainer.current_epoch][1] = self.last_step
        self.images += len(batch[-1])

    @property
    def startup_s(self) -> float:
        return (self.first_step or time.perf_counter()) - self.start

    def teardown_s(self) -> float:
        """Seconds since the last training step."""
        return time.perf_counter() - (self.last_step or self.start)

    @property
    def train_seconds(self) -> float:
        return sum(end - begin for begin, end in self._spans.values())

    @property
    def images_per_s(self) -> float:
        seconds = self.train_seconds
        return self.images / seconds if seconds > 0 else float("nan")
