"""Where the config tree lives and the names derived from a composed config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig

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


def condition(cfg: DictConfig) -> dict[str, str]:
    """What a sweep condition is: backbone, head, optimizer, learning rate, sampler."""
    return {
        "backbone": backbone_name(cfg.backbone),
        "head": component_name(cfg.head),
        "optimizer": component_name(cfg.optimizer),
        "lr": f"{float(cfg.optimizer.lr):g}",
        "sampler": component_name(cfg.sampler),
    }


def condition_key(cfg: DictConfig) -> str:
    """`mobilenet_v2/fc/sgd/0.01`, with `/<sampler>` appended when one is used."""
    parts = condition(cfg)
    key = "/".join(parts[k] for k in ("backbone", "head", "optimizer", "lr"))
    return key if parts["sampler"] == "none" else f"{key}/{parts['sampler']}"


# Config-selected `_target_`s we execute. Hydra 1.4 asks for an explicit list, and also checks
# callable results (an nn.Module is one); a target outside it fails with Hydra's error naming it.
TRUSTED_TARGETS = ["fashion_sweeps.*", "torch.optim.*", "torch.nn.*"]


def build(node: DictConfig, **kwargs: Any) -> Any:
    """`hydra.utils.instantiate` restricted to our trusted targets."""
    return instantiate(node, _execution_whitelist_=TRUSTED_TARGETS, **kwargs)
