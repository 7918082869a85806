"""Where the config tree lives and the names derived from a composed config."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from fashion_sweeps.errors import UserError

PACKAGE_DIR = Path(__file__).resolve().parent
# A source checkout (this package beside pyproject.toml): the repository's folder; else None.
CHECKOUT_DIR: Path | None = (
    PACKAGE_DIR.parent if (PACKAGE_DIR.parent / "pyproject.toml").is_file() else None
)
# The config tree: `conf/` of the checkout, or the copy a wheel ships inside the package (setup.py).
CONF_DIR = CHECKOUT_DIR / "conf" if CHECKOUT_DIR else PACKAGE_DIR / "conf"


def project_dir() -> Path:
    """Where a tool writes its default outputs (docs/results.md): the checkout it runs from,
    wherever the shell is; for an installed package, the current folder (never the install
    folder)."""
    return CHECKOUT_DIR or Path.cwd()


def component_name(node: DictConfig) -> str:
    """A component's name is the last segment of its `_target_`, lower-cased:
    `torch.optim.SGD` -> `sgd`, `fashion_sweeps.models.heads.batchnorm` -> `batchnorm`."""
    return str(node._target_).rsplit(".", 1)[-1].lower()


def backbone_name(node: DictConfig) -> str:
    """The builder's name, or the model's for builders of many (`backbone=timm`: its `name`)."""
    return str(node.get("name") or component_name(node))


@dataclass(frozen=True)
class Condition:
    """What a sweep condition is, the one definition: its parts (each run's tags and the sweep
    tables' columns, in this order), its key and its label."""

    backbone: str
    head: str
    optimizer: str
    lr: str  # as written: 0.01, 1e-05
    sampler: str = "none"

    PARTS: ClassVar[tuple[str, ...]] = ("backbone", "head", "optimizer", "lr", "sampler")
    # The config keys a sweep overrides to set each part (the others a condition key appends).
    CONFIG_KEYS: ClassVar[frozenset[str]] = frozenset(
        {"backbone", "head", "optimizer", "optimizer.lr", "sampler"}
    )

    @classmethod
    def of(cls, cfg: DictConfig) -> Condition:
        """The condition a composed run config trains."""
        return cls(
            backbone_name(cfg.backbone),
            component_name(cfg.head),
            component_name(cfg.optimizer),
            f"{float(cfg.optimizer.lr):g}",
            component_name(cfg.sampler),
        )

    @classmethod
    def from_tags(cls, tags: Mapping[str, Any]) -> Condition:
        """The condition of a run's tags, or of a row of the sweep tables."""
        lr = tags.get("lr", "")
        return cls(
            str(tags.get("backbone", "")),
            str(tags.get("head", "")),
            str(tags.get("optimizer", "")),
            f"{float(lr):g}" if lr not in ("", None) else "",
            str(tags.get("sampler") or "none"),
        )

    def tags(self) -> dict[str, str]:
        return {part: getattr(self, part) for part in self.PARTS}

    def cells(self) -> dict[str, object]:
        """The tables' columns: the learning rate as a number."""
        return {**self.tags(), "lr": float(self.lr) if self.lr else math.nan}

    @property
    def key(self) -> str:
        """`mobilenet_v2/fc/sgd/0.01`, with `/<sampler>` appended when one is used."""
        key = "/".join((self.backbone, self.head, self.optimizer, self.lr))
        return key if self.sampler == "none" else f"{key}/{self.sampler}"

    @property
    def group(self) -> str:
        """`backbone × head × optimizer` (× sampler): the conditions a learning rate varies."""
        name = f"{self.backbone} × {self.head} × {self.optimizer}"
        return name if self.sampler == "none" else f"{name} × {self.sampler}"


def condition_key(cfg: DictConfig) -> str:
    """`Condition.of(cfg).key`."""
    return Condition.of(cfg).key


# Config-selected `_target_`s we execute. Hydra 1.4 asks for an explicit list, and also checks
# callable results (an nn.Module is one); a target outside it fails with Hydra's error naming it.
TRUSTED_TARGETS = ["fashion_sweeps.*", "torch.optim.*", "torch.nn.*"]


class UntrustedTargetError(UserError, ValueError):
    """A config names a `_target_` that Hydra refuses to build (outside TRUSTED_TARGETS, or not
    found); the message is Hydra's, naming the key."""


def check_targets(cfg: DictConfig) -> None:
    """Every `_target_` of a run's config is one this project builds: an untrusted one is refused
    before a run opens or data is read (`build` refuses it again, as the authority)."""
    stack: list[Any] = [OmegaConf.to_container(cfg, resolve=False)]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            target = node.get("_target_")
            if isinstance(target, str) and "${" not in target and not trusted(target):
                raise UntrustedTargetError(_refused(f"_target_={target!r} is refused."))
            stack += node.values()
        elif isinstance(node, list):
            stack += node


def trusted(target: str) -> bool:
    """As Hydra matches its execution whitelist: `a.b.*` allows every target under `a.b.`."""
    return any(target.startswith(pattern.removesuffix("*")) for pattern in TRUSTED_TARGETS)


def _refused(what: str) -> str:
    return (
        f"{what} This project builds only {', '.join(TRUSTED_TARGETS)}: name one of its options "
        "(`fashion-sweeps train --help` lists them) or a module of your own under fashion_sweeps."
    )


def build(node: DictConfig, **kwargs: Any) -> Any:
    """`hydra.utils.instantiate` restricted to our trusted targets. Hydra's own refusals (no
    cause: an untrusted or unknown target) are user errors; errors raised while building stay
    as they are (ours are already `UserError`s)."""
    try:
        return instantiate(node, _execution_whitelist_=TRUSTED_TARGETS, **kwargs)
    except InstantiationException as err:
        if err.__cause__ is not None:
            raise
        raise UntrustedTargetError(_refused(" ".join(str(err).split()))) from err


def image_cache_dir(cfg: DictConfig) -> str | None:
    """Where decoded images are kept between runs (conf/cache/), None when that cache is off."""
    cache = cfg.get("cache") or {}
    return cache.get("dir") if cache.get("images") else None
