"""How the training split is drawn: resampling on indices and class weights  (conf/sampler/).

Each strategy is a function of the training labels (class indices) that returns a
`SamplingPlan`; validation and test splits are never resampled. Resampling picks indices into
the training split (imbalanced-learn on an index column), so no image is ever copied.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from imblearn.over_sampling import RandomOverSampler
from imblearn.under_sampling import RandomUnderSampler

from fashion_sweeps.errors import UserError

log = logging.getLogger(__name__)


class SamplerError(UserError, ValueError):
    """A sampler option that cannot work."""


@dataclass
class SamplingPlan:
    """`indices`: training items to use, in order (repeats allowed); `class_weights`: per-class
    weights for the loss, or None; `weighted_sampler`: per-item weights for a
    WeightedRandomSampler that draws `len(indices)` items each epoch, or None."""

    indices: np.ndarray
    class_weights: torch.Tensor | None = None
    weighted_sampler: np.ndarray | None = None

    @property
    def images_per_epoch(self) -> int:
        return len(self.indices)

    def counts_after(self, labels: np.ndarray, num_classes: int) -> np.ndarray:
        """Training images per class in one epoch; for a weighted sampler, the expected number
        of draws (its draws are random)."""
        if self.weighted_sampler is None:
            return np.bincount(labels[self.indices], minlength=num_classes).astype(float)
        weights = np.asarray(self.weighted_sampler, dtype=float)
        share = np.bincount(labels, weights=weights, minlength=num_classes) / weights.sum()
        return share * self.images_per_epoch


def none(labels: np.ndarray, num_classes: int, seed: int) -> SamplingPlan:
    """Every training item once: the data as it is."""
    return SamplingPlan(indices=np.arange(len(labels)))


def _resample(sampler: Any, labels: np.ndarray, name: str) -> SamplingPlan:
    """Run an imbalanced-learn sampler on the index column; one class means nothing to balance."""
    if len(np.unique(labels)) < 2:
        log.warning("Sampler %s: the training split has one class only; nothing resampled.", name)
        return SamplingPlan(indices=np.arange(len(labels)))
    indices, _ = sampler.fit_resample(np.arange(len(labels)).reshape(-1, 1), labels)
    return SamplingPlan(indices=indices.ravel())


def oversample(labels: np.ndarray, num_classes: int, seed: int) -> SamplingPlan:
    """Repeat random images of every class but the largest until each matches the largest."""
    sampler = RandomOverSampler(sampling_strategy="not majority", random_state=seed)
    return _resample(sampler, labels, "oversample")


def undersample(labels: np.ndarray, num_classes: int, seed: int) -> SamplingPlan:
    """Keep a random subset of every class but the smallest, down to the smallest's count."""
    plan = _resample(
        RandomUnderSampler(sampling_strategy="not minority", random_state=seed),
        labels,
        "undersample",
    )
    smallest = min((int(n) for n in np.bincount(labels) if n), default=0)
    if smallest < 10:  # visible, since it throws most of the training data away
        log.warning(
            "Sampler undersample: the smallest training class has %d image(s), so every class "
            "is cut to %d (%d training images per epoch).",
            smallest,
            smallest,
            plan.images_per_epoch,
        )
    return plan


def over_under(
    labels: np.ndarray, num_classes: int, seed: int, per_class: int | None = None
) -> SamplingPlan:
    """Every class to exactly `per_class` images: smaller classes oversampled, larger ones
    undersampled. `per_class=None` takes the mean class count, so an epoch keeps about the
    size it had."""
    counts = dict(zip(*np.unique(labels, return_counts=True), strict=True))
    if per_class is None:
        per_class = round(len(labels) / max(len(counts), 1))
    if per_class < 1:
        raise SamplerError(f"sampler.per_class={per_class}: use a count of at least 1, or null.")
    up = {c: max(int(n), per_class) for c, n in counts.items()}
    grown = _resample(RandomOverSampler(sampling_strategy=up, random_state=seed), labels, "over")
    down = RandomUnderSampler(sampling_strategy=dict.fromkeys(counts, per_class), random_state=seed)
    kept = _resample(down, labels[grown.indices], "over_under")
    return SamplingPlan(indices=grown.indices[kept.indices])


def class_weight_values(
    labels: np.ndarray, num_classes: int, scheme: str = "inverse_frequency", beta: float = 0.999
) -> np.ndarray:
    """Per-class loss weights.

    `inverse_frequency`: n / (k * n_c), scikit-learn's "balanced" weights (k classes present).
    `effective_number`: (1 - beta) / (1 - beta^n_c), normalised to sum to k (Cui et al. 2019,
    "Class-Balanced Loss Based on Effective Number of Samples"). A class without training
    images gets weight 1. Only ratios matter: the weighted cross-entropy divides by the
    batch's total weight.
    """
    counts = np.bincount(labels, minlength=num_classes).astype(float)
    present = counts > 0
    weights = np.ones(num_classes)
    if scheme == "inverse_frequency":
        weights[present] = len(labels) / (present.sum() * counts[present])
    elif scheme == "effective_number":
        if not 0 <= beta < 1:
            raise SamplerError(f"sampler.beta={beta}: use a value in [0, 1), e.g. 0.999.")
        effective = (1 - beta ** counts[present]) / (1 - beta)
        raw = 1 / effective
        weights[present] = raw * present.sum() / raw.sum()
    else:
        raise SamplerError(f"sampler.scheme={scheme!r}: use inverse_frequency or effective_number.")
    return weights


def class_weights(
    labels: np.ndarray,
    num_classes: int,
    seed: int,
    scheme: str = "inverse_frequency",
    beta: float = 0.999,
) -> SamplingPlan:
    """Every training item once; rare classes weigh more in the cross-entropy loss."""
    weights = class_weight_values(labels, num_classes, scheme, beta)
    return SamplingPlan(
        indices=np.arange(len(labels)),
        class_weights=torch.tensor(weights, dtype=torch.float32),
    )


def weighted(labels: np.ndarray, num_classes: int, seed: int) -> SamplingPlan:
    """Draw `n` training items per epoch with replacement, each class equally likely
    (item weight 1 / its class count); the draws differ every epoch."""
    counts = np.bincount(labels, minlength=num_classes)
    return SamplingPlan(
        indices=np.arange(len(labels)),
        weighted_sampler=1.0 / counts[labels] if len(labels) else np.zeros(0),
    )


def sampling_summary(
    plan: SamplingPlan, labels: np.ndarray, classes: Sequence[str], strategy: str
) -> dict[str, Any]:
    """What a sampler did, per class name: training counts before and (per epoch) after, and
    the loss weights; for the run's MLflow record."""
    before = np.bincount(labels, minlength=len(classes))
    after = plan.counts_after(labels, len(classes))
    weights = plan.class_weights
    return {
        "strategy": strategy,
        "images_per_epoch": plan.images_per_epoch,
        "after_is_expected_value": plan.weighted_sampler is not None,
        "classes": {
            name: {
                "before": int(before[i]),
                "after": round(float(after[i]), 2),
                **({"loss_weight": round(float(weights[i]), 6)} if weights is not None else {}),
            }
            for i, name in enumerate(classes)
        },
    }
