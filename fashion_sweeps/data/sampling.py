"""How the training split is drawn: resampling on indices and class weights  (conf/sampler/).

Each strategy is a function of the training labels (class indices) that returns a
`SamplingPlan`; validation and test splits are never resampled.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class SamplingPlan:
    """`indices`: training items to use, in order (repeats allowed); `class_weights`: per-class
    weights for the loss, or None; `weighted_sampler`: per-item weights for a
    WeightedRandomSampler that draws `len(indices)` items each epoch, or None."""

    indices: np.ndarray
    class_weights: torch.Tensor | None = None
    weighted_sampler: np.ndarray | None = None


def none(labels: np.ndarray, num_classes: int, seed: int) -> SamplingPlan:
    """Every training item once: the data as it is."""
    return SamplingPlan(indices=np.arange(len(labels)))
