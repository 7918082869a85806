"""Backbones: ImageNet transfer-learning models and from-scratch baselines  (conf/backbone/).

Every builder has the same signature and returns a `Backbone`: an image batch in, pooled features
(B, out_features) out. The config's `_target_` names the builder; its last segment is the
backbone's name in tables and condition keys (`backbone.name` for `timm`). A backbone built with
ImageNet weights carries what those weights expect (`WeightsInfo`: normalisation and native
resolution), as torchvision's weight enums do.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

log = logging.getLogger(__name__)


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights were asked for and cannot be had."""


@dataclass(frozen=True)
class WeightsInfo:
    """What pretrained weights expect of their input: the normalisation they were trained with
    and their native resolution (pixels a side)."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    resolution: int


class ImageSizeError(ValueError):
    """`dataset.image_size` is too small for the backbone's downsampling."""


def check_image_size(backbone: Backbone, name: str, image_size: int) -> None:
    """One blank image through the backbone (eval mode: no BatchNorm statistics change): a size
    its pooling layers shrink to nothing fails here, in one sentence, not mid-epoch."""
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            backbone(torch.zeros(1, backbone.in_channels, image_size, image_size))
    except RuntimeError as err:
        raise ImageSizeError(
            f"dataset.image_size={image_size} is too small for backbone {name}: its layers "
            f"shrink the image to nothing ({str(err).splitlines()[0][:160]}). Use a larger "
            "dataset.image_size (32 or more for the ImageNet backbones) or a smaller backbone."
        ) from None
    finally:
        backbone.train(was_training)


class Backbone(nn.Module):
    """Feature extractor made of ordered `blocks` (input side first), so that the leading ones
    can be frozen. Frozen blocks stay in eval mode: their BatchNorm statistics never drift."""

    def __init__(
        self, blocks: list[nn.Module], tail: nn.Module, out_features: int, in_channels: int
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.tail = tail
        self.out_features = out_features
        self.in_channels = in_channels
        self.frozen_blocks = 0
        # None: no pretrained weights; the classifier normalises with the data's statistics.
        self.weights_info: WeightsInfo | None = None

    def finish(self, freeze: bool | int, weights_info: WeightsInfo | None = None) -> Backbone:
        """The builders' last step: record the weights' expectations, freeze as asked."""
        self.weights_info = weights_info
        self.freeze(freeze)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.tail(x)

    def freeze(self, freeze: bool | int) -> None:
        """`True`: every block and the tail; `False`: none; an int n: the n leading blocks."""
        if freeze is True:
            n = len(self.blocks)
        elif freeze is False or freeze is None:
            n = 0
        elif isinstance(freeze, int) and 0 <= freeze <= len(self.blocks):
            n = freeze
        else:
            raise ValueError(
                f"backbone.freeze={freeze!r}: use true, false, or a number of leading blocks "
                f"from 0 to {len(self.blocks)}."
            )
        self.frozen_blocks = n
        whole = n == len(self.blocks) and freeze is True
        for i, block in enumerate(self.blocks):
            block.requires_grad_(i >= n)
        self.tail.requires_grad_(not whole)
        self.train(self.training)

    @property
    def fully_frozen(self) -> bool:
        return not any(p.requires_grad for p in self.parameters())

    def train(self, mode: bool = True) -> Backbone:
        super().train(mode)
        for block in self.blocks[: self.frozen_blocks]:
            block.eval()
        if self.fully_frozen:
            self.tail.eval()
        return self


# --- Builders -----------------------------------------------------------------------------------

# A network of fixed shape, built: make(pretrained, weights_path, freeze).
Make = Callable[[bool, str | None, bool | int], Backbone]


def builder(name: str, make: Make, doc: str, pretrained: bool = False) -> Callable[..., Backbone]:
    """The function a conf/backbone/ file names (`_target_: <module>.<name>`) for a network of
    fixed shape: `make(pretrained, weights_path, freeze)`. Like every builder it accepts the sizes
    given to all of them (`in_channels`, `image_size`), which such a network does not need."""

    def build(
        pretrained: bool = pretrained,
        weights_path: str | None = None,
        freeze: bool | int = False,
        **_: object,
    ) -> Backbone:
        return make(pretrained, weights_path, freeze)

    # Found by Hydra, pickled and shown under its own name, in the module that defines `make`.
    build.__module__, build.__name__, build.__qualname__ = make.__module__, name, name
    build.__doc__ = doc
    return build


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


# --- Pretrained weights -------------------------------------------------------------------------


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict saved with `torch.save` (a bare dict or one wrapped under "state_dict")."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsUnavailableError(
            f"backbone.weights_path={str(path)!r} does not exist. Save the weights there with "
            "`torch.save(model.state_dict(), path)` or drop the option."
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("state_dict", state) if isinstance(state, dict) else state


def imagenet_state_dict(name: str) -> dict[str, torch.Tensor]:
    """torchvision's default ImageNet weights for `name`: from the offline cache under
    `$TORCH_HOME/hub/checkpoints` when present, else downloaded into it."""
    weights = torchvision.models.get_model_weights(name).DEFAULT
    cache = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)
    if not cache.is_file():
        log.info("Downloading %s weights to %s", name, cache)
    try:
        return weights.get_state_dict(progress=False)
    except Exception as err:  # URLError, HTTPError, OSError, hash mismatch...
        raise WeightsUnavailableError(
            f"Pretrained ImageNet weights for {name} are not in the offline cache {str(cache)!r} "
            f"and could not be downloaded ({err}). Either copy the file {cache.name!r} there "
            "(set TORCH_HOME to use another cache), give an explicit file with "
            "`backbone.weights_path=/path/to/state_dict.pth`, or train without them: "
            "`backbone.pretrained=false`."
        ) from err


def _torchvision_model(name: str, pretrained: bool, weights_path: str | None) -> nn.Module:
    model = torchvision.models.get_model(name, weights=None)
    if weights_path:
        state = load_state_dict_file(weights_path)
    elif pretrained:
        state = imagenet_state_dict(name)
    else:
        return model
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing:
        raise WeightsUnavailableError(
            f"The weights given for {name} lack {len(missing)} tensors (e.g. {missing[:3]}): "
            "they are not a torchvision state dict of this architecture."
        )
    if unexpected:
        log.warning("Ignoring %d unexpected tensors in %s weights", len(unexpected), name)
    return model


def _pooled() -> nn.Module:
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())


# --- torchvision builders -----------------------------------------------------------------------


def torchvision_weights_info(name: str) -> WeightsInfo:
    """What torchvision's ImageNet weights of `name` expect, as its weight enum describes them
    (the preprocessing preset: mean, std, crop size)."""
    preset = torchvision.models.get_model_weights(name).DEFAULT.transforms()
    return WeightsInfo(tuple(preset.mean), tuple(preset.std), int(preset.crop_size[0]))


def _torchvision(
    name: str, features: int, blocks: Callable[[nn.Module], list[nn.Module]], doc: str
) -> Callable[..., Backbone]:
    """The builder of torchvision's `name`: `blocks(model)` in order, average pooled to
    `features`. Its weights files (downloaded or given) are torchvision's ImageNet ones."""

    def make(pretrained: bool, weights_path: str | None, freeze: bool | int) -> Backbone:
        model = _torchvision_model(name, pretrained, weights_path)
        backbone = Backbone(blocks(model), _pooled(), features, in_channels=3)
        info = torchvision_weights_info(name) if pretrained or weights_path else None
        return backbone.finish(freeze, info)

    return builder(name, make, doc)


def _vgg_stages(model: nn.Module) -> list[nn.Module]:
    """VGG's convolutional base, cut after each max-pool."""
    stages, current = [], []
    for layer in model.features:
        current.append(layer)
        if isinstance(layer, nn.MaxPool2d):
            stages.append(nn.Sequential(*current))
            current = []
    return stages


def _resnet_stages(m: nn.Module) -> list[nn.Module]:
    """The stem (convolution, BatchNorm, ReLU, max-pool), then ResNet's 4 stages."""
    return [
        nn.Sequential(m.conv1, m.bn1, m.relu, m.maxpool),
        m.layer1,
        m.layer2,
        m.layer3,
        m.layer4,
    ]


mobilenet_v2 = _torchvision(
    "mobilenet_v2",
    1280,
    lambda model: list(model.features),
    "MobileNetV2: 19 feature blocks, global average pooled to 1280 features.",
)
vgg16 = _torchvision(
    "vgg16",
    512,
    _vgg_stages,
    "VGG16 convolutional base (5 stages), global average pooled to 512 features.",
)
resnet18 = _torchvision("resnet18", 512, _resnet_stages, "ResNet18: stem + 4 stages, 512 features.")
resnet50 = _torchvision(
    "resnet50", 2048, _resnet_stages, "ResNet50: stem + 4 stages, 2048 features."
)


# --- From-scratch baselines ---------------------------------------------------------------------


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
