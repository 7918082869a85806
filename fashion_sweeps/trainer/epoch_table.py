"""`results.csv` in the run folder, as Ultralytics writes it without asking: one row per epoch
(its train and validation metrics, seconds). The table is rewritten whole after every epoch, so
a killed run keeps every finished epoch and a continued run's epoch trained again replaces its
row. Its figure, `results.png`, is the run's learning curves (tracking/plots.py), drawn once.
"""

from __future__ import annotations

import csv
import io
import logging
import time
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback

from fashion_sweeps import run_folder
from fashion_sweeps.atomic_files import atomic_write

log = logging.getLogger(__name__)


class EpochTable(Callback):
    """`results.csv` after each epoch."""

    def __init__(self, folder: Path) -> None:
        self.path = run_folder.results_table(folder)
        self.rows: list[dict[str, float]] = []

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # A continued run: the rows of the epochs its checkpoint holds, not those trained again.
        self.rows = [r for r in read_rows(self.path) if r["epoch"] <= trainer.current_epoch]

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        row = {"epoch": trainer.current_epoch + 1}
        row.update({k: float(v) for k, v in sorted(metrics.items()) if k.startswith(PREFIXES)})
        row["seconds"] = round(time.perf_counter() - self._start, 2)
        self.rows.append(row)
        write_rows(self.path, self.rows)

    def best_of(self, epoch: int) -> dict[str, float]:
        """Epoch `epoch`'s (from 1) train and validation metrics as `best_<name>`: what MLflow's
        runs table and the sweep tables show side by side, under the same names."""
        row = next((r for r in self.rows if r["epoch"] == epoch), {})
        return {f"best_{k}": v for k, v in row.items() if k.startswith(PREFIXES)}


PREFIXES = ("train_", "val_")


def read_rows(path: Path) -> list[dict[str, float]]:
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


def write_rows(path: Path, rows: list[dict[str, float]]) -> None:
    """Written beside and renamed into place: a kill mid-write leaves the previous table."""
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, list(dict.fromkeys(k for row in rows for k in row)))
    writer.writeheader()
    writer.writerows(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: f.write(table.getvalue().encode()))
