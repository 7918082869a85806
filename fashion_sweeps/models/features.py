"""Frozen-backbone feature cache  (conf/cache/, key `features`).

With a fully frozen backbone and no training-time augmentation, every epoch of every condition
that shares the backbone runs the same images through the same weights. Instead, the pooled
features of all prepared images are computed once, stored on disk (data/array_store.py), and the
head trains on them; the datamodule serves feature rows where it served images.

The entry's key covers all the features depend on: the data (files, image size: the prepared
data's fingerprint), the preprocessing (normalisation statistics), the backbone (architecture
and every weight and buffer) and the inference engine and precision that computed them
(inference/engines.py: OpenVINO's bf16 features differ from PyTorch's fp32 ones). Pretrained backbones therefore share one entry across seeds and
conditions; a randomly initialised one shares it across the conditions of one seed.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fashion_sweeps import interrupts
from fashion_sweeps.data.array_store import ArrayStore
from fashion_sweeps.data.datamodule import FashionDataModule
from fashion_sweeps.errors import UserError
from fashion_sweeps.inference.engines import TORCH_F32, Engine, compile_images
from fashion_sweeps.models.classifier import Classifier
from fashion_sweeps.progress import ProgressLines

log = logging.getLogger(__name__)

# Bump when what `pooled_features` computes changes: old entries then stop matching.
FEATURES_VERSION = 1
MODES = {"auto": "auto", "true": True, "false": False}


class FeatureCacheError(UserError, ValueError):
    """`cache.features=true` on a run where cached features would not be the same training."""


@dataclass
class FeatureUse:
    """What the feature cache did for a run: `status` hit / miss (computed, then stored) / off /
    not_applicable, why, the seconds spent loading or computing, and the engine whose features
    the run trains on (None: no features)."""

    status: str
    reason: str = ""
    seconds: float = 0.0
    engine: Engine | None = None

    @property
    def active(self) -> bool:
        return self.status in ("hit", "miss")


def feature_cache_blockers(model: Classifier, data: FashionDataModule) -> list[str]:
    """Why training on stored features would differ from training on the images (empty: it
    would not)."""
    blockers = []
    if not model.backbone.fully_frozen:
        blockers.append("the backbone is trained (backbone.freeze is not true)")
    if data.train_augmentation() is not None:
        blockers.append("training-time augmentation is on (dataset.augment)")
    if model.test_time_flip:  # mirrored images' features are not stored
        blockers.append("test-time flipping is on (test_time_flip)")
    if model.test_time_crops != [1.0]:  # nor the crops' features
        blockers.append("test-time crops are on (test_time_crops)")
    return blockers


def features_key(model: Classifier, data_fingerprint: str, engine: Engine) -> str:
    """SHA-256 of the data fingerprint, the preprocessing, the backbone (structure and every
    weight and buffer) and the engine with its precision."""
    digest = hashlib.sha256(
        f"{FEATURES_VERSION}\0{data_fingerprint}\0{model.preprocess.channels}\0"
        f"{engine.name}\0{engine.precision}\0{model.backbone!r}".encode()
    )
    for prefix, part in (("preprocess", model.preprocess), ("backbone", model.backbone)):
        for name, tensor in part.state_dict().items():
            digest.update(f"{prefix}.{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def pooled_features(
    model: Classifier, pixels: np.ndarray, batch_size: int, engine: Engine = TORCH_F32
) -> tuple[np.ndarray, Engine]:
    """`backbone(preprocess(images))` for every image, (N, out_features) float32, in eval mode
    (BatchNorm uses its running statistics, dropout is off, exactly as in frozen training), run
    by `engine`. Returns the features and the engine that ran (PyTorch after a fallback)."""
    network = nn.Sequential(model.preprocess, model.backbone)
    compiled = compile_images(network, engine, tuple(pixels.shape[1:]))
    out = np.empty((len(pixels), model.backbone.out_features), dtype=np.float32)
    progress = ProgressLines(log)

    def on_batch(done: int) -> None:
        interrupts.check()
        left = (time.perf_counter() - progress.start) / done * (len(pixels) - done)
        progress.update(
            f"Frozen features ({compiled.engine}): {done}/{len(pixels)} images", done, left
        )

    return compiled.map(pixels, batch_size, out, on_batch), compiled.engine


def parse_mode(value: object) -> str | bool:
    mode = MODES.get(str(value).lower())
    if mode is None:
        raise FeatureCacheError(f"cache.features={value!r}: use auto, true or false.")
    return mode


def apply_feature_cache(
    mode: object,
    cache_dir: str | Path | None,
    model: Classifier,
    data: FashionDataModule,
    engine: Engine = TORCH_F32,
) -> FeatureUse:
    """Make `data` serve the frozen backbone's features when `mode` (auto / true / false) and
    the run allow it; load them from `cache_dir/features` or compute them with `engine` and
    store them there."""
    mode = parse_mode(mode)
    if mode is False:
        return FeatureUse("off", "cache.features=false")
    blockers = feature_cache_blockers(model, data)
    if blockers:
        if mode is True:
            raise FeatureCacheError(
                "cache.features=true needs a run whose head sees the same inputs every epoch, "
                f"but {' and '.join(blockers)}. Set backbone.freeze=true and dataset.augment=null "
                "to train on cached features, or cache.features=auto to use them only when a "
                "run allows it."
            )
        log.info("Feature cache not used: %s", "; ".join(blockers))
        return FeatureUse("not_applicable", "; ".join(blockers))
    assert data.data is not None, "call data.setup() first"
    start = time.perf_counter()
    fingerprint = data.data.fingerprint
    # Without a data fingerprint the entry could not be told apart from another data set's.
    store = ArrayStore(Path(cache_dir) / "features") if cache_dir and fingerprint else None
    key = features_key(model, fingerprint, engine) if store is not None else ""
    entry = store.load(key) if store is not None else None
    if entry is not None:
        features, status = np.array(entry[0]), "hit"  # a private, writable copy in memory
    else:
        features, engine = pooled_features(model, data.data.pixels, data.cfg.batch_size, engine)
        if store is not None:  # under the engine that ran: a fallback's features are PyTorch's
            store.save(
                features_key(model, fingerprint, engine), features, {"images": len(features)}
            )
        status = "miss"
    data.use_features(torch.from_numpy(features))
    seconds = time.perf_counter() - start
    log.info(
        "Feature cache %s: %d x %d features (%s) in %.1fs%s",
        status,
        *features.shape,
        engine,
        seconds,
        f" ({store.folder})" if store is not None else " (not stored: no cache.dir)",
    )
    return FeatureUse(status, "", seconds, engine)
