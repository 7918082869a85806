"""k-nearest-neighbour head on frozen backbone features  (conf/head/knn.yaml).

A non-parametric baseline, as in the Fashion-MNIST benchmark (kNN on pixels: `backbone=pixels`).
"Training" stores the training split's frozen-backbone features and labels; predicting is a vote
among the `k` nearest stored rows. Both are buffers of the head, so the checkpointed and logged
`Classifier` still predicts from raw images on its own. The output is logits like any head's (the
log of the smoothed vote shares), so evaluation, model logging and the sweeps' objective (the
validation loss, finite thanks to the smoothing) work unchanged.

Written in torch rather than wrapping scikit-learn's KNeighborsClassifier (the tests' reference):
buffers go into state dicts, checkpoints and the pickled MLflow model and follow `.to(device)`, and
the head runs inside Lightning's validation and test loops like any other head.

A run with this head has nothing to optimise: `fit_knn` stores the features (from the feature
cache when it holds them, models/features.py), validates once through Lightning and saves the
checkpoint the test then loads. No optimizer is built and no training step runs.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from fashion_sweeps.data.datamodule import FashionDataModule, train_augmentation
from fashion_sweeps.errors import UserError
from fashion_sweeps.inference.engines import TORCH_F32, Engine
from fashion_sweeps.models.features import pooled_features
from fashion_sweeps.models.module import ClassifierModule

log = logging.getLogger(__name__)

METRICS = ("euclidean", "cosine")
WEIGHTS = ("uniform", "distance")
# Distances are computed block by block: at most QUERY_CHUNK x ROW_CHUNK floats (32 MB) at once,
# however many rows are stored or queries asked.
QUERY_CHUNK = 1024
ROW_CHUNK = 8192


class KnnConfigError(UserError, ValueError):
    """head=knn on a run whose backbone features are not fixed."""


class KnnHead(nn.Module):
    """Features (B, in_features) in, logits (B, num_classes) out: log((1 - s) * share + s / C),
    where `share` is each class's (weighted) share of the votes of the k nearest stored rows."""

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        k: int = 5,
        metric: str = "euclidean",
        weights: str = "uniform",
        smoothing: float = 0.01,
    ) -> None:
        super().__init__()
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"head.k={k!r}: use a whole number of neighbours, 1 or more.")
        if metric not in METRICS:
            raise ValueError(f"head.metric={metric!r}: use one of {', '.join(METRICS)}.")
        if weights not in WEIGHTS:
            raise ValueError(f"head.weights={weights!r}: use one of {', '.join(WEIGHTS)}.")
        if not 0 < smoothing < 1:
            # 0 would give log(0) = -inf logits and an infinite validation loss.
            raise ValueError(f"head.smoothing={smoothing!r}: use a value between 0 and 1.")
        self.in_features = in_features
        self.num_classes = num_classes
        self.k = k
        self.metric = metric
        self.weights = weights
        self.smoothing = smoothing
        # Empty until `fit`; a loaded state dict brings its own number of rows.
        self.register_buffer("features", torch.zeros(0, in_features))
        self.register_buffer("labels", torch.zeros(0, dtype=torch.long))

    def extra_repr(self) -> str:
        return (
            f"k={self.k}, metric={self.metric}, weights={self.weights}, "
            f"stored={len(self.features)}x{self.in_features}"
        )

    @torch.no_grad()
    def fit(self, features: torch.Tensor, labels: torch.Tensor) -> KnnHead:
        """Store the training rows (N, in_features) and their class indices (N,)."""
        if features.ndim != 2 or features.shape[1] != self.in_features:
            raise ValueError(
                f"kNN head expects (N, {self.in_features}) features, got {tuple(features.shape)}"
            )
        if len(features) != len(labels) or len(features) == 0:
            raise ValueError(f"{len(features)} feature rows for {len(labels)} labels")
        features = features.float()
        if self.metric == "cosine":  # stored at unit length: one product per row at query time
            features = F.normalize(features, dim=1)
        self.features = features.to(self.features.device).contiguous()
        self.labels = labels.long().to(self.labels.device)
        if self.k > len(features):
            log.warning(
                "head.k=%d but only %d training rows: all of them vote.", self.k, len(features)
            )
        return self

    def _distances(self, queries: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """(Q, R) distances used for ranking: squared euclidean, or 1 - cosine similarity."""
        if self.metric == "cosine":
            # Clipped as scikit-learn does: rounding takes a duplicate's distance below 0, and
            # a negative distance would turn a `distance`-weighted vote negative.
            return (1 - queries @ rows.T).clamp_(0, 2)
        squared = queries.pow(2).sum(1, keepdim=True) - 2 * queries @ rows.T + rows.pow(2).sum(1)
        return squared.clamp_min_(0)  # rounding can take a zero distance below 0

    def neighbours(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Distances (B, k) and class indices (B, k) of each query's k nearest stored rows,
        nearest first (k capped at the number of stored rows)."""
        x = x.float()
        if self.metric == "cosine":
            x = F.normalize(x, dim=1)
        k = min(self.k, len(self.features))
        distances, indices = [], []
        for queries in x.split(QUERY_CHUNK):
            # A running top-k over blocks of stored rows keeps memory bounded.
            best_d = queries.new_zeros(len(queries), 0)
            best_i = torch.zeros(len(queries), 0, dtype=torch.long, device=x.device)
            for start in range(0, len(self.features), ROW_CHUNK):
                rows = self.features[start : start + ROW_CHUNK]
                d = torch.cat([best_d, self._distances(queries, rows)], dim=1)
                block = torch.arange(start, start + len(rows), device=x.device)
                i = torch.cat([best_i, block.expand(len(queries), -1)], dim=1)
                best_d, pick = d.topk(min(k, d.shape[1]), dim=1, largest=False)
                best_i = i.gather(1, pick)
            distances.append(best_d)
            indices.append(best_i)
        d = torch.cat(distances)
        if self.metric == "euclidean":
            d = d.sqrt()
        return d, self.labels[torch.cat(indices)]

    def vote_shares(self, x: torch.Tensor) -> torch.Tensor:
        """(B, num_classes): each class's share of the votes of the k nearest stored rows
        (scikit-learn's KNeighborsClassifier.predict_proba)."""
        if len(self.features) == 0:  # not fitted: no evidence, every class equally likely
            return x.new_full((len(x), self.num_classes), 1 / self.num_classes).float()
        distances, labels = self.neighbours(x)
        if self.weights == "uniform":
            votes = torch.ones_like(distances)
        else:
            # As scikit-learn: 1 / distance, except that a query equal to stored rows (distance
            # 0) takes their votes only.
            exact = distances == 0
            votes = torch.where(exact.any(1, keepdim=True), exact.float(), 1 / distances)
        shares = torch.zeros(len(x), self.num_classes, device=x.device)
        shares.scatter_add_(1, labels, votes)
        return shares / shares.sum(1, keepdim=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shares = self.vote_shares(x)
        # Smoothed so that a class without votes costs a finite loss; the ranking is unchanged.
        return torch.log((1 - self.smoothing) * shares + self.smoothing / self.num_classes)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        # A state dict holds as many stored rows as its training split had: take its shapes.
        for name in ("features", "labels"):
            value = state_dict.get(prefix + name)
            if value is not None:
                current = getattr(self, name)
                setattr(self, name, torch.empty_like(value, device=current.device))
        super()._load_from_state_dict(state_dict, prefix, *args)


def knn(**options: Any) -> KnnHead:
    """k nearest neighbours among the stored training features (fitted by `fit_knn`, not
    trained); `options` are KnnHead's. A builder, so that the head's name in tables and
    condition keys is `knn`."""
    return KnnHead(**options)


KNN_TARGET = f"{__name__}.{knn.__name__}"


def is_knn(head_cfg: DictConfig) -> bool:
    return head_cfg.get("_target_") == KNN_TARGET


def _not_fixed(problems: list[str]) -> KnnConfigError:
    return KnnConfigError(
        "head=knn is a k-nearest-neighbour baseline on frozen backbone features: it stores the "
        "training split's features once and votes among the nearest, with no gradient training, "
        f"so the features must stay fixed, but {' and '.join(problems)}. Set "
        "backbone.freeze=true (the whole backbone) and dataset.augment=null, e.g. "
        "`fashion-sweeps train backbone=mlp backbone.freeze=true head=knn head.k=5`, or "
        "`backbone=pixels head=knn` for kNN on raw pixels; to train the backbone, choose a "
        "trainable head (head=fc, batchnorm or mlp) instead."
    )


def check_knn_config(cfg: DictConfig) -> None:
    """Before anything is read or trained: a kNN head needs a fully frozen backbone and no
    training-time augmentation (KnnConfigError otherwise). Other heads pass."""
    if not is_knn(cfg.head):
        return
    problems = []
    freeze = cfg.backbone.get("freeze")
    if freeze is not True:
        problems.append(f"backbone.freeze={freeze} leaves backbone weights to train")
    # The same rule the feature cache applies (no data is read to answer it).
    if train_augmentation(cfg.dataset) is not None:
        problems.append("dataset.augment changes the training images every epoch")
    if problems:
        raise _not_fixed(problems)


def fit_knn(
    trainer: pl.Trainer,
    module: ClassifierModule,
    data: FashionDataModule,
    checkpoint: Path,
    engine: Engine = TORCH_F32,
) -> float:
    """Store the training split's features in the kNN head of `module.model`, validate once
    through `trainer` (val_* metrics go to its logger, as every epoch's do in other runs), and
    save the checkpoint `checkpoint` for the test. Returns the validation loss."""
    model = module.model
    head: KnnHead = model.head
    if not model.backbone.fully_frozen:
        raise _not_fixed(["the backbone has trainable weights"])
    assert data.data is not None and data.plan is not None, "call data.setup() first"
    prepared, plan = data.data, data.plan
    # The training split as the sampler's plan indexes it: oversampled items repeat (and so
    # vote more), undersampled ones are left out.
    rows = prepared.indices("train")[plan.indices]
    if plan.weighted_sampler is not None:
        log.warning("head=knn stores every training image once: sampler=weighted has no effect.")
    start = time.perf_counter()
    if data.features is not None:  # the frozen backbone's features, from the feature cache
        features = data.features[rows]
    else:  # each image once, however often oversampling repeats it
        unique, repeats = np.unique(rows, return_inverse=True)
        pooled, _ = pooled_features(model, prepared.pixels[unique], data.cfg.batch_size, engine)
        features = torch.from_numpy(pooled[repeats])
    head.fit(features, torch.from_numpy(prepared.targets[rows]))
    log.info(
        "kNN head: %d training rows x %d features stored in %.1fs (k=%d, %s, %s weights)",
        len(features),
        head.in_features,
        time.perf_counter() - start,
        head.k,
        head.metric,
        head.weights,
    )
    [metrics] = trainer.validate(module, datamodule=data, verbose=False)
    trainer.save_checkpoint(checkpoint)
    log.info(
        "kNN validation: val_loss=%.4f val_acc=%.4f val_f1_weighted=%.4f",
        *(float(metrics[k]) for k in ("val_loss", "val_acc", "val_f1_weighted")),
    )
    return float(metrics["val_loss"])
