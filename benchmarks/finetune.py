"""Bench 3: images/s of one fine-tuning epoch through the framework (`train`: Lightning,
torchmetrics, MLflow) vs a bare PyTorch loop on the same decoded tensors, batches and model.

Both are timed the same way: from the end of the first training batch (its one-off kernel and
allocator warm-up would weigh on a short epoch; Lightning's sanity check already pre-warms the
framework's) to the end of the last one, validation excluded. Attempts alternate which side goes
first, and the best of `repeats` counts for each, so that load from other processes on the
machine hurts neither side more.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import pytorch_lightning as pl
import torch.nn.functional as F
from omegaconf import DictConfig

from fashion_sweeps.config import build
from fashion_sweeps.data.datamodule import FashionDataModule
from fashion_sweeps.models.classifier import classifier_for
from fashion_sweeps.train import train
from fashion_sweeps.trainer.clock import TrialClock

log = logging.getLogger(__name__)


def bare_loop(cfg: DictConfig) -> float:
    """One epoch of the plainest loop over the datamodule's training batches; images/s."""
    pl.seed_everything(cfg.seed)
    data = FashionDataModule(cfg.dataset, cfg.sampler, cfg.seed, cfg.cache.dir)
    data.setup()
    prepared = data.data
    model = classifier_for(cfg, prepared)
    optimizer = build(cfg.optimizer)([p for p in model.parameters() if p.requires_grad])
    model.train()
    images, first_end, last_end = 0, None, None
    for x, y in data.train_dataloader():
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        if first_end is None:  # timed from the end of the first batch, as TrialClock does
            first_end = time.perf_counter()
            continue
        images += len(y)
        last_end = time.perf_counter()
    if last_end is None:
        raise ValueError(
            f"The fine-tuning bench times the batches after the first, and the training split "
            f"makes only one batch of {cfg.dataset.batch_size}: give more images (--images) "
            "or leave the fine-tuning bench out (--only data,screen)."
        )
    return images / (last_end - first_end)


def framework(cfg: DictConfig) -> float:
    """One epoch through `train` (the same clock the run logs as train_images_per_s); images/s."""
    clock = TrialClock()
    train(cfg, callbacks=[clock])
    return clock.images_per_s


def finetune_bench(make_cfg: Any, repeats: int) -> dict[str, Any]:
    """`make_cfg(run_name)` gives the fine-tuning config of one attempt."""
    bare, full = [], []
    for attempt in range(repeats):
        # Alternating which side goes first: the first run of a process also warms it up.
        sides = [(bare, bare_loop, "bare"), (full, framework, "framework")]
        for rates, measure, name in sides[:: 1 if attempt % 2 == 0 else -1]:
            rates.append(measure(make_cfg(f"{name}-{attempt}")))
        log.info(
            "Fine-tuning attempt %d: bare %.1f, framework %.1f images/s",
            attempt,
            bare[-1],
            full[-1],
        )
    return {
        "bare_images_per_s": bare,
        "framework_images_per_s": full,
        "bare_best": max(bare),
        "framework_best": max(full),
        "ratio": max(full) / max(bare),
    }
