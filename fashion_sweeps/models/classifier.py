"""The deployable model: preprocessing + backbone + head in one `nn.Module`.

It takes raw images (uint8 0-255 or float 0-1, grey or RGB, already at the run's image size)
and returns logits, so the same object serves training, evaluation and tagging.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from fashion_sweeps.config import build, component_name
from fashion_sweeps.errors import UserError
from fashion_sweeps.models.backbones import Backbone, check_image_size


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


class TestTimeError(UserError, ValueError):
    """`test_time_crops` holds an impossible value."""

    __test__ = False  # a name pytest would otherwise try to collect where tests import it


def center_crop(x: torch.Tensor, area: float) -> torch.Tensor:
    """The centred crop of `area` (a fraction of the image) resized back to the image's size:
    torchvision's CenterCrop + Resize, on a batch."""
    h, w = (int(s) for s in x.shape[-2:])  # plain ints: a traced graph (OpenVINO, ONNX) too
    ch, cw = max(1, round(h * area**0.5)), max(1, round(w * area**0.5))
    if (ch, cw) == (h, w):
        return x
    top, left = (h - ch) // 2, (w - cw) // 2
    crop = x[..., top : top + ch, left : left + cw]
    return F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False)


def crop_areas(test_time_crops: Sequence[float] | float | None) -> list[float]:
    """`test_time_crops` as a list of area fractions in (0, 1]; none given: the whole image."""
    if test_time_crops is None:
        return [1.0]
    areas = [test_time_crops] if isinstance(test_time_crops, int | float) else test_time_crops
    try:
        areas = [float(a) for a in areas]
    except (TypeError, ValueError):
        areas = []
    if not areas or not all(0 < a <= 1 for a in areas):
        raise TestTimeError(
            f"test_time_crops={test_time_crops!r}: give area fractions in (0, 1] of centred "
            "crops whose logits are averaged, e.g. [1.0, 0.8], or null for the whole image only."
        )
    return areas


class Classifier(nn.Module):
    """Images in, logits out. `classes` and `image_size` travel with the weights.

    Evaluation (not training) may average the logits of several views of each image, a cheap
    ensemble carried by the logged model: with `test_time_flip` each image and its mirror image;
    with `test_time_crops`, centred crops of those area fractions resized back. Crops suit models
    trained on zoomed random crops (`dataset.augment.scale`), to which objects looked larger
    than in the whole image (the "FixRes" train/test discrepancy).
    """

    def __init__(
        self,
        preprocess: Preprocess,
        backbone: Backbone,
        head: nn.Module,
        classes: Sequence[str],
        image_size: int,
        test_time_flip: bool = False,
        test_time_crops: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.test_time_crops = crop_areas(test_time_crops)
        self.preprocess = preprocess
        self.backbone = backbone
        self.head = head
        self.classes = list(classes)
        self.image_size = image_size
        self.test_time_flip = test_time_flip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.preprocess(x)
        if self.training:
            return self.head(self.backbone(x))
        # getattr: models pickled before these options existed lack the attributes.
        views = [center_crop(x, a) for a in getattr(self, "test_time_crops", [1.0])]
        if getattr(self, "test_time_flip", False):
            views += [v.flip(-1) for v in views]
        if len(views) == 1:
            return self.head(self.backbone(views[0]))
        # One pass over every view (eval-mode BatchNorm treats images independently).
        logits = self.head(self.backbone(torch.cat(views)))
        # -1: any batch size in a converted graph (its batch dimension stays dynamic).
        return logits.reshape(len(views), -1, logits.shape[-1]).mean(0)


def build_classifier(
    backbone_cfg,
    head_cfg,
    classes: Sequence[str],
    channels: int,
    image_size: int,
    channel_stats: Callable[[], tuple[Sequence[float], Sequence[float]]],
    test_time_flip: bool = False,
    test_time_crops: Sequence[float] | None = None,
) -> Classifier:
    """Backbone and head from their configs (Hydra `_target_`), with derived sizes filled in.

    Pretrained backbones get the normalisation their weights carry (`Backbone.weights_info`);
    others, and a scratch backbone's own weights file, the training split's statistics, which
    `channel_stats()` computes only then (a pass over every training image).
    """
    backbone: Backbone = build(backbone_cfg, in_channels=channels, image_size=image_size)
    check_image_size(backbone, component_name(backbone_cfg), image_size)
    head = build(head_cfg, in_features=backbone.out_features, num_classes=len(classes))
    if backbone.weights_info is not None:
        mean, std = backbone.weights_info.mean, backbone.weights_info.std
    else:
        mean, std = channel_stats()
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
        test_time_crops,
    )


def classifier_for(cfg: DictConfig, prepared: Any) -> Classifier:
    """The run's Classifier from its composed config and a `PreparedData` (sizes derived)."""
    return build_classifier(
        cfg.backbone,
        cfg.head,
        prepared.classes,
        prepared.channels,
        cfg.dataset.image_size,
        prepared.channel_stats,
        bool(cfg.get("test_time_flip", False)),
        cfg.get("test_time_crops"),
    )
