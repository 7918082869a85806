"""Heads: the last layer(s) that map backbone features to class logits  (conf/head/).

Each builder takes the derived `in_features` and `num_classes` plus its own options.
"""

from __future__ import annotations

from torch import nn


def fc(in_features: int, num_classes: int) -> nn.Module:
    """One Linear layer: the studies' plain last layer."""
    return nn.Linear(in_features, num_classes)


def batchnorm(in_features: int, num_classes: int, dropout: float = 0.5) -> nn.Module:
    """BatchNorm1d -> Dropout -> Linear: the 2019 report's 'batch normalisation' last layer."""
    return nn.Sequential(
        nn.BatchNorm1d(in_features), nn.Dropout(dropout), nn.Linear(in_features, num_classes)
    )


def mlp(in_features: int, num_classes: int, hidden: int = 256, dropout: float = 0.5) -> nn.Module:
    """A hidden layer with ReLU and dropout before the classifier."""
    return nn.Sequential(
        nn.Linear(in_features, hidden),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(hidden, num_classes),
    )
