"""Training-time augmentation of whole batches  (conf/dataset/, key `augment`).

Per-image torchvision transforms cost ~180 µs an image in Python on a CPU, as much as a small
CNN's training step; here every option is one tensor operation over the batch, on the device the
batch is on. Flips, rotation, shifts and zoom are one affine resampling (`grid_sample`); integer
shifts and flips land exactly on pixel centres, so they interpolate nothing.

Options (all off by default; `dataset.augment=null` turns augmentation off):
  flip: true            horizontal flip, probability 0.5
  rotation: 10          degrees, uniform in [-10, 10]
  crop_padding: 4       shift by up to 4 whole pixels each way (a padded random crop)
  scale: [0.6, 1.0]     zoom: the crop's area is this fraction of the image (random resized crop)
  color_jitter: 0.2     brightness, contrast and saturation factors in [0.8, 1.2]
  erasing: 0.5          probability of erasing one random rectangle (2-33% of the area)
  padding: zeros        what fills pixels shifted in from outside: zeros | border | reflection
  mixup: 0.2            blend each image with another of the batch, labels in proportion
  cutmix: 1.0           paste a rectangle of another image, labels by area (both: one of the two
                        per batch); the values are the Beta(alpha, alpha) of the mixing weights
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms import v2

from fashion_sweeps.errors import UserError

OPTIONS = {
    "flip",
    "rotation",
    "crop_padding",
    "scale",
    "color_jitter",
    "erasing",
    "padding",
    "mixup",
    "cutmix",
}
PADDINGS = ("zeros", "border", "reflection")


class AugmentError(UserError, ValueError):
    """`dataset.augment` holds an unknown option or an impossible value."""


class BatchAugment(nn.Module):
    """Random flips, rotation, shifts, zoom, colour jitter and erasing of a float image batch
    (B, C, H, W) in [0, 1]. Draws from torch's global generator, which the run seeds."""

    def __init__(
        self,
        flip: bool = False,
        rotation: float = 0.0,
        crop_padding: int = 0,
        scale: Sequence[float] | None = None,
        color_jitter: float = 0.0,
        erasing: float = 0.0,
        padding: str = "zeros",
        mixup: float = 0.0,
        cutmix: float = 0.0,
    ) -> None:
        super().__init__()
        for name, alpha in (("mixup", mixup), ("cutmix", cutmix)):
            if isinstance(alpha, bool) or not isinstance(alpha, int | float) or alpha < 0:
                raise AugmentError(
                    f"dataset.augment.{name}={alpha!r}: the alpha of the Beta(alpha, alpha) the "
                    "mixing weight is drawn from, > 0 (e.g. mixup 0.2, cutmix 1.0), or 0 for off."
                )
        if padding not in PADDINGS:
            raise AugmentError(f"dataset.augment.padding={padding!r}: use one of {PADDINGS}.")
        if scale is not None and not (
            isinstance(scale, Sequence)
            and not isinstance(scale, str)
            and len(scale) == 2
            and 0 < float(scale[0]) <= float(scale[1]) <= 1
        ):
            raise AugmentError(
                f"dataset.augment.scale={scale!r}: give [min, max] area fractions with "
                "0 < min <= max <= 1, e.g. [0.6, 1.0]."
            )
        if not 0 <= float(erasing or 0) <= 1:
            raise AugmentError(f"dataset.augment.erasing={erasing!r}: a probability in [0, 1].")
        if not 0 <= float(color_jitter or 0) < 1:
            raise AugmentError(
                f"dataset.augment.color_jitter={color_jitter!r}: a strength in [0, 1) (factors "
                "are drawn from [1 - strength, 1 + strength])."
            )
        if int(crop_padding or 0) != (crop_padding or 0) or int(crop_padding or 0) < 0:
            raise AugmentError(
                f"dataset.augment.crop_padding={crop_padding!r}: a whole number of pixels >= 0."
            )
        self.flip = bool(flip)
        self.rotation = float(rotation or 0)
        self.crop_padding = int(crop_padding or 0)
        self.scale = (float(scale[0]), float(scale[1])) if scale is not None else None
        self.color_jitter = float(color_jitter or 0)
        self.erasing = float(erasing or 0)
        self.padding = padding
        self.mixup = float(mixup)
        self.cutmix = float(cutmix)
        # Built once: labels arrive one-hot, so the mixers need no class count.
        mixers = [v2.MixUp(alpha=self.mixup)] if self.mixup else []
        if self.cutmix:
            mixers.append(v2.CutMix(alpha=self.cutmix))
        self.mixer = v2.RandomChoice(mixers) if mixers else None  # one of them per batch

    @property
    def geometric(self) -> bool:
        return self.flip or bool(self.rotation) or bool(self.crop_padding) or self.scale is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.geometric:
            x = self._affine(x)
        if self.color_jitter:
            x = self._jitter(x)
        if self.erasing:
            x = self._erase(x)
        return x

    @property
    def mixes(self) -> bool:
        return self.mixer is not None

    def mix(
        self, x: torch.Tensor, y: torch.Tensor, num_classes: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """MixUp / CutMix of a batch (torchvision's): images and soft targets (B, num_classes);
        without them, the batch as it is with its class indices."""
        if self.mixer is None:
            return x, y
        return self.mixer(x, F.one_hot(y, num_classes).to(x.dtype))

    def _uniform(self, n: int, low: float, high: float, like: torch.Tensor) -> torch.Tensor:
        return torch.rand(n, device=like.device, dtype=like.dtype) * (high - low) + low

    def _affine(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        zoom = torch.ones(b, device=x.device, dtype=x.dtype)
        if self.scale is not None:
            # An area fraction a shows a crop of side sqrt(a): sample the grid sqrt(a) apart.
            zoom = self._uniform(b, *self.scale, x).sqrt()
        angle = self._uniform(b, -self.rotation, self.rotation, x) * (math.pi / 180)
        cos, sin = torch.cos(angle) * zoom, torch.sin(angle) * zoom
        mirror = torch.ones_like(zoom)
        if self.flip:
            mirror = torch.where(torch.rand_like(zoom) < 0.5, -1.0, 1.0).to(x.dtype)
        # Whole-pixel shifts: with align_corners=False one pixel is 2 / size in grid units.
        p = self.crop_padding
        tx = torch.randint(-p, p + 1, (b,), device=x.device).to(x.dtype) * (2 / w)
        ty = torch.randint(-p, p + 1, (b,), device=x.device).to(x.dtype) * (2 / h)
        if self.scale is not None:  # the zoomed crop may sit anywhere inside the image
            tx = tx + (1 - zoom) * self._uniform(b, -1, 1, x)
            ty = ty + (1 - zoom) * self._uniform(b, -1, 1, x)
        theta = torch.stack(
            [torch.stack([cos * mirror, -sin, tx], 1), torch.stack([sin * mirror, cos, ty], 1)], 1
        )
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(
            x, grid, mode="bilinear", padding_mode=self.padding, align_corners=False
        )

    def _jitter(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        j = self.color_jitter

        def factor() -> torch.Tensor:
            return self._uniform(b, 1 - j, 1 + j, x).view(b, 1, 1, 1)

        x = x * factor()  # brightness
        grey = x.mean(dim=1, keepdim=True)
        x = (x - grey.mean(dim=(2, 3), keepdim=True)) * factor() + grey.mean(
            dim=(2, 3), keepdim=True
        )  # contrast
        if c == 3:
            grey = x.mean(dim=1, keepdim=True)
            x = (x - grey) * factor() + grey  # saturation
        return x.clamp(0, 1)

    def _erase(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        area = self._uniform(b, 0.02, 0.33, x)
        aspect = torch.exp(self._uniform(b, math.log(0.3), math.log(1 / 0.3), x))
        eh = (area * aspect).sqrt().mul(h).clamp(1, h).floor()
        ew = (area / aspect).sqrt().mul(w).clamp(1, w).floor()
        top = (torch.rand_like(eh) * (h - eh + 1)).floor()
        left = (torch.rand_like(ew) * (w - ew + 1)).floor()
        rows = torch.arange(h, device=x.device, dtype=x.dtype).view(1, h, 1)
        cols = torch.arange(w, device=x.device, dtype=x.dtype).view(1, 1, w)
        inside = (
            (rows >= top.view(b, 1, 1))
            & (rows < (top + eh).view(b, 1, 1))
            & (cols >= left.view(b, 1, 1))
            & (cols < (left + ew).view(b, 1, 1))
        )
        chosen = (torch.rand(b, device=x.device) < self.erasing).view(b, 1, 1)
        return x.masked_fill((inside & chosen).unsqueeze(1), 0.0)

    def extra_repr(self) -> str:
        return (
            f"flip={self.flip}, rotation={self.rotation}, crop_padding={self.crop_padding}, "
            f"scale={self.scale}, color_jitter={self.color_jitter}, erasing={self.erasing}, "
            f"padding={self.padding!r}, mixup={self.mixup}, cutmix={self.cutmix}"
        )


def batch_augment(options: Mapping[str, Any] | None) -> BatchAugment | None:
    """The augmentation `dataset.augment` describes; None when it is off (null or all off)."""
    if not options:
        return None
    unknown = set(options) - OPTIONS
    if unknown:
        raise AugmentError(
            f"Unknown dataset.augment option(s) {sorted(unknown)}: the options are "
            f"{sorted(OPTIONS)} (see fashion_sweeps/data/augment.py)."
        )
    augment = BatchAugment(**{k: v for k, v in options.items() if v is not None})
    if not (augment.geometric or augment.color_jitter or augment.erasing or augment.mixes):
        return None
    return augment
