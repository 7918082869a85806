"""The LightningDataModule: read, filter, decode, split and sample one data set  (conf/dataset/).

Data is prepared once per process and configuration (`prepare_arrays`), so a sweep's trials
reuse it instead of decoding every image again.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Dataset, TensorDataset, WeightedRandomSampler

from fashion_sweeps.config import build
from fashion_sweeps.data.augment import BatchAugment, batch_augment
from fashion_sweeps.data.cache import DecodedImages, decode_cached, pixels_fingerprint
from fashion_sweeps.data.decode import resize_pixels
from fashion_sweeps.data.sampling import SamplingPlan
from fashion_sweeps.data.sources import DataError, Source
from fashion_sweeps.data.splits import class_counts, label_filter, label_map, stratified_split

log = logging.getLogger(__name__)


class Rows:
    """Rows `indices` of `array`, as an array-like: `len`, and indexing by a slice or an index
    array, which copies just the rows it names."""

    def __init__(self, array: np.ndarray, indices: np.ndarray) -> None:
        self.array, self.indices = array, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key: Any) -> np.ndarray:
        return self.array[self.indices[key]]


@dataclass
class PreparedData:
    """A decoded data set: pixels (N, H, W, C) uint8, label indices, split names, class names."""

    pixels: np.ndarray
    targets: np.ndarray
    split: np.ndarray
    classes: list[str]
    skipped: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    # What the pixels are made of (data/cache.py): keys the frozen-backbone feature cache.
    fingerprint: str = ""
    image_cache: str = "off"  # decode-once cache: hit, miss, off; memory when memoised
    # Shared by the memoised copies of one process: every trial of a sweep reuses the statistics.
    _stats: dict[str, tuple[list[float], list[float]]] = field(
        default_factory=dict, repr=False, compare=False
    )

    @property
    def channels(self) -> int:
        return int(self.pixels.shape[-1])

    def counts(self) -> dict[str, dict[str, int]]:
        names = np.asarray(self.classes, dtype=object)[self.targets]
        return class_counts(names, self.split)

    def indices(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.split == split)

    def images(self, split: str) -> Rows:
        """The split's images, read only where indexed: a gallery of 10 copies 10 images, not
        the split (1.3 GB for the product photos' test split at 224 px)."""
        return Rows(self.pixels, self.indices(split))

    def channel_stats(self) -> tuple[list[float], list[float]]:
        """Per-channel mean and std of the training images, in [0, 1] units (computed once, in
        chunks: memory stays that of one chunk whatever the data set's size)."""
        if "train" not in self._stats:
            self._stats["train"] = channel_stats(self.pixels, self.indices("train"))
        return self._stats["train"]


STATS_CHUNK = 1024  # images per step of `channel_stats`


def channel_stats(pixels: np.ndarray, rows: np.ndarray) -> tuple[list[float], list[float]]:
    """Mean and std per channel of `pixels[rows]` (N, H, W, C uint8), in [0, 1] units, summed
    chunk by chunk in float64."""
    channels = pixels.shape[-1]
    total, squares, count = np.zeros(channels), np.zeros(channels), 0
    for start in range(0, len(rows), STATS_CHUNK):
        chunk = pixels[rows[start : start + STATS_CHUNK]].reshape(-1, channels).astype(np.float64)
        total += chunk.sum(axis=0)
        squares += np.square(chunk).sum(axis=0)
        count += len(chunk)
    mean = total / max(count, 1)
    std = np.sqrt(np.maximum(squares / max(count, 1) - mean**2, 0.0))
    return [float(m) / 255 for m in mean], [max(float(s) / 255, 1e-3) for s in std]


_PREPARED: dict[str, PreparedData] = {}
# Sources listed by `read_source` for the `_prepare` that follows in this process (used once).
_SOURCES: dict[str, Source] = {}


def _source_key(dataset: DictConfig) -> str:
    return json.dumps(OmegaConf.to_container(dataset.reader, resolve=True), sort_keys=True)


def read_source(dataset: DictConfig, keep: bool = True) -> Source:
    """The items the data set's reader lists, or a DataError saying why its files cannot be read
    (missing or unreadable root, a damaged index file). Called before any MLflow run or sweep
    condition starts, so a wrong `dataset.root` leaves nothing behind; `keep` holds the listing
    for this process's next `_prepare`, so checking first costs no second read."""
    key = _source_key(dataset)
    if key in _SOURCES:
        return _SOURCES[key]
    try:
        source: Source = build(dataset.reader)
    except Exception as err:  # Hydra wraps what the reader raises
        cause: BaseException | None = err
        while cause is not None and not isinstance(cause, DataError | OSError):
            cause = cause.__cause__
        if isinstance(cause, DataError):
            raise cause from None
        if isinstance(cause, OSError):
            raise DataError(
                f"Data set {dataset.name!r} cannot be read ({cause}). Check "
                f"dataset.root={dataset.get('root')!r} and its permissions."
            ) from None
        raise
    if keep:
        _SOURCES[key] = source
    return source


def _prepared_key(dataset: DictConfig, split_seed: int, cache_dir: str | Path | None) -> str:
    options = OmegaConf.to_container(dataset, resolve=True)
    return json.dumps([options, split_seed, str(cache_dir)], sort_keys=True)


def _split_seed(dataset: DictConfig, seed: int) -> int:
    # A fixed split seed keeps one test set while the run seed varies training alone; runs of
    # several seeds in one process then share the prepared arrays.
    split_seed = dataset.get("split_seed")
    return seed if split_seed is None else split_seed


def check_readable(dataset: DictConfig, seed: int, cache_dir: str | Path | None = None) -> None:
    """`read_source` unless this process has prepared the data set already."""
    if _prepared_key(dataset, _split_seed(dataset, seed), cache_dir) not in _PREPARED:
        read_source(dataset)


def prepare_arrays(
    dataset: DictConfig, seed: int, cache_dir: str | Path | None = None
) -> PreparedData:
    """Read, filter, decode and split the data set a config describes (memoised per process;
    decoded images also on disk under `cache_dir`, see data/cache.py). The run's `seed` draws the
    split unless `dataset.split_seed` fixes it."""
    split_seed = _split_seed(dataset, seed)
    key = _prepared_key(dataset, split_seed, cache_dir)
    if key in _PREPARED:
        # Prepared earlier in this process: nothing read or decoded for this run.
        return replace(_PREPARED[key], image_cache="memory", seconds=0.0)
    _PREPARED[key] = _prepare(dataset, split_seed, cache_dir)
    return _PREPARED[key]


def _prepare(
    dataset: DictConfig, split_seed: int, cache_dir: str | Path | None = None
) -> PreparedData:
    start = time.perf_counter()
    source = read_source(dataset, keep=False)
    _SOURCES.pop(_source_key(dataset), None)
    skipped = source.skipped_counts()
    keep, dropped = label_filter(
        source.labels,
        dataset.include,
        dataset.exclude,
        dataset.min_count,
        dataset.get("class_ranks"),
    )
    skipped.update(dropped)
    source, decoded = _decode(source.select(keep), dataset, cache_dir, skipped)
    classes, targets, split = _labels_and_split(source, dataset, split_seed)
    if skipped:
        log.info("Skipped items of %s: %s", dataset.name, skipped)
    prepared = PreparedData(
        decoded.pixels,
        targets,
        split,
        classes,
        skipped,
        time.perf_counter() - start,
        decoded.fingerprint,
        decoded.status,
    )
    log.info(
        "Data %s: %d images, %d classes, %s in %.1fs",
        dataset.name,
        len(targets),
        len(classes),
        {s: int((split == s).sum()) for s in ("train", "val", "test")},
        prepared.seconds,
    )
    return prepared


def _decode(
    source: Source, dataset: DictConfig, cache_dir: str | Path | None, skipped: dict[str, int]
) -> tuple[Source, DecodedImages]:
    """The items' pixels at `dataset.image_size`: files decoded through the image cache (data/
    cache.py), in-memory pixels resized (cache `off`). Returns the source narrowed to the items
    that decoded; why the others could not is counted in `skipped`."""
    if source.pixels is not None:
        pixels = resize_pixels(source.pixels, dataset.image_size)
        fingerprint = pixels_fingerprint(pixels)
        return source, DecodedImages(pixels, [None] * len(pixels), fingerprint, "off", 0.0)
    mode = "L" if dataset.get("grayscale", False) else "RGB"
    decoded = decode_cached(
        source.paths, dataset.image_size, mode, dataset.get("decode_workers"), cache_dir
    )
    for path, reason in zip(source.paths, decoded.reasons, strict=True):
        if reason:
            log.warning("Skipping %s: %s", path, reason)
            skipped[reason] = skipped.get(reason, 0) + 1
    return source.select(np.array([r is None for r in decoded.reasons], dtype=bool)), decoded


def _labels_and_split(
    source: Source, dataset: DictConfig, split_seed: int
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Class names, each item's class index and split name; a DataError when no image, a single
    class or an empty split is left."""
    if len(source) == 0:
        raise DataError(f"No image of data set {dataset.name!r} could be decoded.")
    classes = label_map(source.labels)
    if len(classes) < 2:
        raise DataError(
            f"Only one class ({', '.join(classes)}) is left in data set {dataset.name!r}: a "
            "classifier needs two or more. Check dataset.include / dataset.exclude / "
            "dataset.min_count / dataset.class_ranks, or the labels of the data set."
        )
    index = {name: i for i, name in enumerate(classes)}
    targets = np.array([index[label] for label in source.labels], dtype=np.int64)
    split = stratified_split(
        source.labels, dataset.val_fraction, dataset.test_fraction, split_seed, source.splits
    )
    for name in ("train", "val", "test"):
        if not (split == name).any():
            raise DataError(
                f"The {name} split of {dataset.name!r} is empty ({len(source)} images in all). "
                "Use more data or change dataset.val_fraction / dataset.test_fraction."
            )
    return classes, targets, split


class ImageArrayDataset(Dataset):
    """(C, H, W) uint8 tensors and labels of the items `indices` picks from the decoded array.
    Items are looked up, not copied: an oversampled split repeats indices, never images.
    The DataLoader fetches a whole batch with one indexing operation (`__getitems__`)."""

    def __init__(self, pixels: np.ndarray, targets: np.ndarray, indices: np.ndarray) -> None:
        self.pixels = torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2)
        self.targets = torch.from_numpy(targets)
        self.indices = torch.as_tensor(indices, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        item = self.indices[i]
        return self.pixels[item], self.targets[item]

    def __getitems__(self, batch: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        items = self.indices[torch.as_tensor(batch, dtype=torch.long)]
        return self.pixels[items], self.targets[items]


def _whole_batch(batch: Any) -> Any:
    """collate_fn for datasets whose `__getitems__` already returns the stacked batch."""
    return batch


def check_loader_options(dataset: DictConfig) -> None:
    """Checked before a run opens: a DataLoader, or the resize, would fail only once the data is
    read or training starts."""
    size = dataset.get("batch_size")
    if not isinstance(size, int) or size < 1:
        raise DataError(
            f"dataset.batch_size={size!r}: give the images per batch, 1 or more (e.g. 32)."
        )
    side = dataset.get("image_size")
    if not isinstance(side, int) or isinstance(side, bool) or side < 1:
        raise DataError(
            f"dataset.image_size={side!r}: give the pixels per side images are resized to, 1 or "
            "more (e.g. 224, an ImageNet backbone's own; 28 for Fashion-MNIST)."
        )


def train_augmentation(dataset: DictConfig) -> BatchAugment | None:
    """The training batches' augmentation (data/augment.py), applied by the LightningModule on
    the device: the loaders serve images as they are. An AugmentError for impossible options."""
    augment = dataset.get("augment")
    return batch_augment(OmegaConf.to_container(augment, resolve=True) if augment else None)


class FashionDataModule(pl.LightningDataModule):
    """Serves the prepared arrays: train (sampled), val and test, as they are.

    After `use_features`, it serves a frozen backbone's stored features in place of the images
    (models/features.py), split and sampled the same way.
    """

    def __init__(
        self,
        dataset: DictConfig,
        sampler: DictConfig,
        seed: int,
        cache_dir: str | Path | None = None,
    ) -> None:
        super().__init__()
        check_loader_options(dataset)
        self.cfg = dataset
        self.sampler_cfg = sampler
        self.seed = seed
        self.cache_dir = cache_dir
        self.data: PreparedData | None = None
        self.plan: SamplingPlan | None = None
        self.features: torch.Tensor | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.data is not None:
            return
        self.data = prepare_arrays(self.cfg, self.seed, self.cache_dir)
        train_targets = self.data.targets[self.data.indices("train")]
        self.plan = build(
            self.sampler_cfg,
            labels=train_targets,
            num_classes=len(self.data.classes),
            seed=self.seed,
        )

    @property
    def classes(self) -> list[str]:
        assert self.data is not None, "call setup() first"
        return self.data.classes

    def use_features(self, features: torch.Tensor) -> None:
        """Serve `features` (N, F), one row per prepared image, instead of the images."""
        assert self.data is not None, "call setup() first"
        if len(features) != len(self.data.targets):
            raise ValueError(f"{len(features)} feature rows for {len(self.data.targets)} images")
        self.features = features

    def train_augmentation(self) -> BatchAugment | None:
        """This data set's `train_augmentation`."""
        return train_augmentation(self.cfg)

    def _dataset(self, split: str) -> Dataset:
        assert self.data is not None and self.plan is not None, "call setup() first"
        idx = self.data.indices(split)
        if split == "train":
            idx = idx[self.plan.indices]
        if self.features is not None:
            return TensorDataset(self.features[idx], torch.from_numpy(self.data.targets[idx]))
        return ImageArrayDataset(self.data.pixels, self.data.targets, idx)

    def _loader(self, dataset: Dataset, shuffle: bool, sampler: Any = None) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.cfg.batch_size,
            shuffle=shuffle and sampler is None,
            sampler=sampler,
            num_workers=self.cfg.num_workers,
            persistent_workers=self.cfg.num_workers > 0,
            generator=torch.Generator().manual_seed(self.seed),
            collate_fn=_whole_batch if isinstance(dataset, ImageArrayDataset) else None,
        )

    def train_dataloader(self) -> DataLoader:
        dataset = self._dataset("train")
        sampler = None
        if self.plan.weighted_sampler is not None:
            sampler = WeightedRandomSampler(
                torch.as_tensor(self.plan.weighted_sampler, dtype=torch.double),
                num_samples=len(dataset),
                replacement=True,
                generator=torch.Generator().manual_seed(self.seed),
            )
        return self._loader(dataset, shuffle=True, sampler=sampler)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self._dataset("val"), shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self._dataset("test"), shuffle=False)
