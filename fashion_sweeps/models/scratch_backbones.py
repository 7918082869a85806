"""From-scratch baselines (conf/backbone/simple_cnn.yaml, fmnist_cnn, mlp, pixels): small CNNs,
plain or residual, flattened or globally pooled, an MLP, and raw pixels for the kNN head. Same
signature as every builder (`backbones.py`); no pretrained weights, their own exported ones load.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from fashion_sweeps.models.backbones import (
    Backbone,
    ImageSizeError,
    WeightsUnavailableError,
    load_state_dict_file,
)


def scratch(
    freeze: bool | int = False,
) -> Callable[[Callable[..., Backbone]], Callable[..., Backbone]]:
    """Decorates a from-scratch builder, which makes a Backbone of the given sizes and options:
    `pretrained=true` fails (there are none), `weights_path` loads a file of this backbone's own
    (`fashion-sweeps export-backbone`'s), then it is frozen as asked (default `freeze`)."""
    default_freeze = freeze

    def wrap(make: Callable[..., Backbone]) -> Callable[..., Backbone]:
        @functools.wraps(make)
        def build(
            *sizes: Any,
            pretrained: bool = False,
            weights_path: str | None = None,
            freeze: bool | int = default_freeze,
            **options: Any,
        ) -> Backbone:
            if pretrained:
                raise WeightsUnavailableError(
                    f"{make.__name__} is a from-scratch baseline: there are no pretrained weights "
                    "for it. Set `backbone.pretrained=false`."
                )
            backbone = make(*sizes, **options)
            if weights_path:
                backbone.load_state_dict(load_state_dict_file(weights_path))
            return backbone.finish(freeze)

        return build

    return wrap


def _flat_size(blocks: list[nn.Module], in_channels: int, image_size: int) -> int:
    # In eval mode: training-mode BatchNorm refuses one value a channel (a 1x1 map of one image).
    probe = nn.Sequential(*blocks).eval()
    with torch.no_grad():
        x = probe(torch.zeros(1, in_channels, image_size, image_size))
    probe.train()
    return x.flatten(1).shape[1]


def _convs(c_in: int, c_out: int, n: int = 1, batchnorm: bool = False) -> list[nn.Module]:
    """n 3x3 convolutions (padding 1) with ReLU, BatchNorm after each when asked."""
    layers: list[nn.Module] = []
    for i in range(n):
        # With BatchNorm right after, a convolution's bias is redundant.
        layers.append(nn.Conv2d(c_in if i == 0 else c_out, c_out, 3, padding=1, bias=not batchnorm))
        if batchnorm:
            layers.append(nn.BatchNorm2d(c_out))
        layers.append(nn.ReLU(inplace=True))
    return layers


class Residual(nn.Module):
    """`x + body(x)`: a skip connection around layers that keep the shape (ResNet's idea)."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def _block(c_in: int, c_out: int, n: int, batchnorm: bool, residual: bool) -> nn.Sequential:
    """n convolutions and a 2x2 max-pool. Residual: the first convolution, the pool, then the
    other n - 1 around a skip connection, at the halved size (ResNet-9's layout, 2018)."""
    if not residual or n == 1:
        return nn.Sequential(*_convs(c_in, c_out, n, batchnorm), nn.MaxPool2d(2))
    return nn.Sequential(
        *_convs(c_in, c_out, 1, batchnorm),
        nn.MaxPool2d(2),
        Residual(nn.Sequential(*_convs(c_out, c_out, n - 1, batchnorm))),
    )


GLOBAL_POOLS = {"avg": nn.AdaptiveAvgPool2d, "max": nn.AdaptiveMaxPool2d}


def _per_block(value: int | list[int], blocks: int, name: str) -> list[int]:
    values = [value] * blocks if isinstance(value, int) else list(value)
    if len(values) != blocks or min(values) < 1:
        raise ValueError(f"backbone.{name}={value!r}: give one number >= 1 or {blocks} of them.")
    return values


@scratch()
def simple_cnn(
    in_channels: int = 3,
    image_size: int = 64,
    width: int = 32,
    widths: list[int] | None = None,
    dropout: float = 0.5,
    batchnorm: bool = False,
    convs: int | list[int] = 1,
    residual: bool = False,
    pool: str = "flatten",
    **_: object,
) -> Backbone:
    """The 2019 report's benchmark: four conv+pool blocks (width, 2w, 4w, 4w), a 512-unit dense
    layer, dropout. `batchnorm` and `convs` (per block) make the stronger from-scratch variant;
    `widths` sets every block's width, and its length the number of blocks (one more, narrow,
    block halves a larger image cheaply). `residual` puts a block's later convolutions around a
    skip connection; `pool` reduces the last feature maps before the dense layer: `flatten`
    (the report's: every position its own weights), global `avg` or `max`."""
    if pool != "flatten" and pool not in GLOBAL_POOLS:
        raise ValueError(f"backbone.pool={pool!r}: use flatten, avg or max.")
    widths = list(widths) if widths else [width, 2 * width, 4 * width, 4 * width]
    if min(widths) < 1:
        raise ValueError(f"backbone.widths={widths!r}: give positive widths.")
    if image_size >> len(widths) < 1:
        raise ImageSizeError(
            f"dataset.image_size={image_size} is too small for backbone simple_cnn: each of its "
            f"{len(widths)} blocks halves the image. Use dataset.image_size={2 ** len(widths)} "
            "or more, or fewer blocks (backbone.widths=[...])."
        )
    chans = [in_channels, *widths]
    per_block = _per_block(convs, len(widths), "convs")
    blocks: list[nn.Module] = [
        _block(chans[i], chans[i + 1], per_block[i], batchnorm, residual)
        for i in range(len(widths))
    ]
    if pool == "flatten":  # no layer before Flatten: the report's weight files still load
        reduce, flat = [], _flat_size(blocks, in_channels, image_size)
    else:
        reduce, flat = [GLOBAL_POOLS[pool](1)], widths[-1]
    tail = nn.Sequential(
        *reduce,
        nn.Flatten(),
        nn.Linear(flat, 512),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
    )
    return Backbone(blocks, tail, 512, in_channels)


@scratch()
def fmnist_cnn(
    in_channels: int = 1,
    image_size: int = 28,
    widths: tuple[int, int, int] = (32, 64, 128),
    dropouts: tuple[float, float, float, float] = (0.25, 0.25, 0.4, 0.3),
    dense: int = 128,
    batchnorm: bool = False,
    convs: int | list[int] = 1,
    **_: object,
) -> Backbone:
    """The Fashion-MNIST study's CNN: 3x3 convs 32/64/128 with padding, max-pool after the first
    two, dropout 0.25/0.25/0.4, dense 128 with dropout 0.3. `batchnorm` adds BatchNorm after each
    conv and `convs` stacks more convolutions per block (the stronger recipe uses both)."""
    widths, dropouts = list(widths), list(dropouts)
    per_block = _per_block(convs, 3, "convs")
    c_in = [in_channels, widths[0], widths[1]]
    pools = [nn.MaxPool2d(2), nn.MaxPool2d(2), nn.Identity()]
    blocks: list[nn.Module] = [
        nn.Sequential(
            *_convs(c_in[i], widths[i], per_block[i], batchnorm), pools[i], nn.Dropout(dropouts[i])
        )
        for i in range(3)
    ]
    flat = _flat_size(blocks, in_channels, image_size)
    tail = nn.Sequential(
        nn.Flatten(), nn.Linear(flat, dense), nn.ReLU(inplace=True), nn.Dropout(dropouts[3])
    )
    return Backbone(blocks, tail, dense, in_channels)


@scratch()
def mlp(
    in_channels: int = 1,
    image_size: int = 28,
    hidden: int = 256,
    dropout: float = 0.2,
    **_: object,
) -> Backbone:
    """A multi-layer perceptron on raw pixels: the simplest baseline."""
    blocks: list[nn.Module] = [
        nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_channels * image_size * image_size, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
        )
    ]
    return Backbone(blocks, nn.Identity(), hidden, in_channels)


@scratch(freeze=True)  # nothing to train: lets head=knn run as it is
def pixels(in_channels: int = 1, image_size: int = 28, **_: object) -> Backbone:
    """No weights: the normalised pixels, flattened. Under head=knn it is the Fashion-MNIST
    benchmark's kNN on pixels; under a trainable head, a linear model on pixels."""
    features = in_channels * image_size * image_size
    return Backbone([nn.Flatten()], nn.Identity(), features, in_channels)
