"""The deployable model: preprocessing + backbone + head in one `nn.Module`.

It takes raw images (uint8 0-255 or float 0-1, grey or RGB, already at the run's image size)
and returns logits, so the same object serves training, evaluation and tagging.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from fashion_sweeps.config import build, component_name
from fashion_sweeps.models.backbones import Backbone

# Builders in models/backbones.py whose weights files are torchvision's ImageNet-style ones.
TORCHVISION_BACKBONES = ("mobilenet_v2", "vgg16", "resnet18", "resnet50")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """Images as floats in [0, 1]: uint8 pixels scaled, floats taken as they are."""
    return x.float() / 255.0 if x.dtype == torch.uint8 else x.float()


class Preprocess(nn.Module):
    """Scale to [0, 1], match the backbone's channels (grey -> RGB), normalise."""

    def __init__(self, channels: int, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.channels = channels
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = to_unit(x)
        if x.shape[1] == 1 and self.channels == 3:
            x = x.expand(-1, 3, -1, -1)
        elif x.shape[1] == 3 and self.channels == 1:
            x = x.mean(dim=1, keepdim=True)
        return (x - self.mean) / self.std


class Classifier(nn.Module):
    """Images in, logits out. `classes` and `image_size` travel with the weights.

    With `test_time_flip`, evaluation (not training) averages the logits of each image and its
    mirror image: a cheap ensemble for models trained with flips, carried by the logged model.
    """

    def __init__(
        self,
        preprocess: Preprocess,
        backbone: Backbone,
        head: nn.Module,
        classes: Sequence[str],
        image_size: int,
        test_time_flip: bool = False,
    ) -> None:
        super().__init__()
        self.preprocess = preprocess
        self.backbone = backbone
        self.head = head
        self.classes = list(classes)
        self.image_size = image_size
        self.test_time_flip = test_time_flip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.head(self.backbone(self.preprocess(x)))
        # getattr: models pickled before this option existed lack the attribute.
        if getattr(self, "test_time_flip", False) and not self.training:
            mirrored = self.head(self.backbone(self.preprocess(x.flip(-1))))
            logits = (logits + mirrored) / 2
        return logits


def build_classifier(
    backbone_cfg,
    head_cfg,
    classes: Sequence[str],
    channels: int,
    image_size: int,
    channel_stats: tuple[Sequence[float], Sequence[float]],
    test_time_flip: bool = False,
) -> Classifier:
    """Backbone and head from their configs (Hydra `_target_`), with derived sizes filled in.

    Pretrained backbones get ImageNet normalisation; others the training split's statistics.
    """
    backbone: Backbone = build(backbone_cfg, in_channels=channels, image_size=image_size)
    head = build(head_cfg, in_features=backbone.out_features, num_classes=len(classes))
    # ImageNet weights expect ImageNet's statistics; a scratch backbone's own weights file (e.g.
    # from `fashion-sweeps export-backbone`) was trained on the data's own.
    imagenet = backbone_cfg.get("pretrained") or (
        backbone_cfg.get("weights_path") and component_name(backbone_cfg) in TORCHVISION_BACKBONES
    )
    if imagenet:
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    else:
        mean, std = channel_stats
        if backbone.in_channels != channels:  # grey data into an RGB backbone, or back
            mean = [sum(mean) / len(mean)] * backbone.in_channels
            std = [sum(std) / len(std)] * backbone.in_channels
    return Classifier(
        Preprocess(backbone.in_channels, mean, std),
        backbone,
        head,
        classes,
        image_size,
        test_time_flip,
    )


def classifier_for(cfg: DictConfig, prepared: Any) -> Classifier:
    """The run's Classifier from its composed config and a `PreparedData` (sizes derived)."""
    return build_classifier(
        cfg.backbone,
        cfg.head,
        prepared.classes,
        prepared.channels,
        cfg.dataset.image_size,
        prepared.channel_stats(),
        bool(cfg.get("test_time_flip", False)),
    )
