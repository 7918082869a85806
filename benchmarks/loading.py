"""Bench 2: images/s of training epochs 2+ served from the decode-once cache (the real
datamodule) vs decoding every JPEG again each epoch, same items, batch size and workers; the
best epoch after the first counts on each side."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset

from fashion_sweeps.config import build
from fashion_sweeps.data.cache import decode_cached
from fashion_sweeps.data.datamodule import FashionDataModule
from fashion_sweeps.data.decode import load_image

log = logging.getLogger(__name__)


class JpegDataset(Dataset):
    """The baseline: every item decoded and resized from its file when asked for."""

    def __init__(self, paths: list[Path], targets: np.ndarray, size: int) -> None:
        self.paths, self.targets, self.size = paths, torch.from_numpy(targets), size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        pixels = load_image(self.paths[i], self.size)
        # A writable copy, as a DataLoader expects (PIL hands out read-only buffers).
        return torch.from_numpy(np.array(pixels)).permute(2, 0, 1), self.targets[i]


def epoch_rates(loader: DataLoader, epochs: int) -> list[float]:
    """Images/s of each pass over `loader`."""
    rates = []
    for _ in range(epochs):
        start, images = time.perf_counter(), 0
        for _, y in loader:
            images += len(y)
        rates.append(images / (time.perf_counter() - start))
    return rates


def loading_bench(cfg: DictConfig, epochs: int) -> dict[str, Any]:
    """Build the image cache (timed), then time `epochs` passes over the training split both
    ways. The cache is left warm for the other benches."""
    paths = build(cfg.dataset.reader).paths
    size, cache_dir = cfg.dataset.image_size, cfg.cache.dir
    built = decode_cached(paths, size, "RGB", cfg.dataset.decode_workers, cache_dir)
    reread = decode_cached(paths, size, "RGB", cfg.dataset.decode_workers, cache_dir)
    if any(built.reasons):
        raise RuntimeError("The bench data holds undecodable images; use another --images count.")

    data = FashionDataModule(cfg.dataset, cfg.sampler, cfg.seed, cache_dir)
    data.setup()
    cached = data.train_dataloader()
    # The same items in the same split: prepared items are the reader's paths, none skipped.
    prepared = data.data
    train = prepared.indices("train")
    jpeg = DataLoader(
        JpegDataset([paths[i] for i in train], prepared.targets[train], size),
        batch_size=cfg.dataset.batch_size,
        shuffle=True,
        num_workers=cfg.dataset.num_workers,
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    log.info("Data: %d training images per epoch, %d epochs each way", len(train), epochs)
    jpeg_rates = epoch_rates(jpeg, epochs)
    cached_rates = epoch_rates(cached, epochs)
    # The best of epochs 2+: other processes' load only ever slows an epoch down.
    jpeg_later = max(jpeg_rates[1:])
    cached_later = max(cached_rates[1:])
    return {
        "images": len(paths),
        "train_images": len(train),
        "epochs": epochs,
        "cache_build_s": built.seconds,
        "cache_load_s": reread.seconds,
        "cache_status": [built.status, reread.status],
        "jpeg_images_per_s": jpeg_rates,
        "cached_images_per_s": cached_rates,
        "jpeg_epoch2plus": jpeg_later,
        "cached_epoch2plus": cached_later,
        "ratio": cached_later / jpeg_later,
    }
