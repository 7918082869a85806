"""Backbones: the `Backbone` every builder returns, and the torchvision ImageNet models
(conf/backbone/). The from-scratch baselines are in `scratch_backbones.py`, timm's in
`timm_backbones.py`.

Every builder has the same signature and returns a `Backbone`: an image batch in, pooled features
(B, out_features) out. The config's `_target_` names the builder; its last segment is the
backbone's name in tables and condition keys (`backbone.name` for `timm`). A backbone built with
ImageNet weights carries what those weights expect (`WeightsInfo`: normalisation and native
resolution), as torchvision's weight enums do.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn

from fashion_sweeps.errors import UserError

log = logging.getLogger(__name__)


class WeightsUnavailableError(UserError, RuntimeError):
    """Pretrained weights were asked for and cannot be had."""


@dataclass(frozen=True)
class WeightsInfo:
    """What pretrained weights expect of their input: the normalisation they were trained with
    and their native resolution (pixels a side)."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    resolution: int


class ImageSizeError(UserError, ValueError):
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


def builder(
    name: str, make: Make, doc: str, pretrained: bool = False, resolution: int | None = None
) -> Callable[..., Backbone]:
    """The function a conf/backbone/ file names (`_target_: <module>.<name>`) for a network of
    fixed shape: `make(pretrained, weights_path, freeze)`. Like every builder it accepts the sizes
    given to all of them (`in_channels`, `image_size`), which such a network does not need.
    `resolution`: its weights' native one, which a config can ask for before anything is built
    (`${fashion_sweeps_native_resolution:${backbone._target_}}`)."""

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
    build.native_resolution = resolution  # type: ignore[attr-defined]
    return build


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

    return builder(name, make, doc, resolution=torchvision_weights_info(name).resolution)


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
