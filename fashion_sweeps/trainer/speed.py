"""Fine-tuning at the hardware's speed: `trainer.precision: auto` and `trainer.channels_last: auto`
resolved for the run's model and device  (conf/trainer/).

On a CPU that computes bf16 (AVX512_BF16 or AMX), fine-tuning a pretrained convolutional backbone
with bf16 autocast and NHWC weights took 2.1x fewer seconds per step for EfficientNet-Lite0 than
fp32 (docs/caches_and_bench.md). Where the model trains no convolution, or from scratch (its
recipes' figures were measured in fp32), `auto` keeps fp32 and the layout as it is.
"""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import DictConfig
from torch import nn

from fashion_sweeps.inference.engines import cpu_has_bf16
from fashion_sweeps.models.classifier import Classifier


@dataclass(frozen=True)
class Speed:
    """What the run trains with: Lightning's `precision` and whether weights are NHWC."""

    precision: str
    channels_last: bool


def fine_tunes_convolutions(model: Classifier) -> bool:
    """A pretrained backbone with trainable convolutions (a fine-tuning run)."""
    backbone = model.backbone
    return backbone.weights_info is not None and any(
        isinstance(m, nn.Conv2d) and m.weight.requires_grad for m in backbone.modules()
    )


def resolve_speed(cfg: DictConfig, model: Classifier, device: str) -> Speed:
    """`trainer.precision` and `trainer.channels_last`, each `auto` or as given."""
    fast = fine_tunes_convolutions(model)
    precision = str(cfg.get("precision", "32-true"))
    if precision == "auto":
        precision = "bf16-mixed" if fast and device == "cpu" and cpu_has_bf16() else "32-true"
    layout = cfg.get("channels_last", False)
    channels_last = fast if str(layout) == "auto" else bool(layout)
    return Speed(precision, channels_last)
