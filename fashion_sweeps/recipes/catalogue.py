"""The recipes: the `recipe:` block of each `conf/experiment/<name>.yaml` (its study, the
figures the study reports, our target, what it needs that a machine may lack), read by composing
`experiment=<name>` as training composes it, and what the recipe trains, so that runs of an
earlier version of the file can be told apart."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from omegaconf import DictConfig

from fashion_sweeps.config import CONF_DIR
from fashion_sweeps.errors import UserError
from fashion_sweeps.settings import changes_result, changes_sweep_result, config_params

# The figures of a recipe: MLflow metric -> column title.
METRICS = {"test_acc": "test acc", "test_f1_weighted": "weighted F1", "test_f1_macro": "macro F1"}
# The page's own axes: one row per seed, one table per recipe. Any other override that changes a
# result (settings.py: not where the data is, tracking, outputs, devices) sets a run apart.
PAGE_AXES = frozenset({"experiment", "seed"})


PROG = "fashion-sweeps results"  # the command that writes the page (command.py)


class ResultsError(UserError, RuntimeError):
    """The page cannot be written: the message says why and what to do."""


@dataclass(frozen=True)
class Recipe:
    """A `recipe:` block: figures are fractions keyed by MLflow metric (0.9258 = 92.58%)."""

    name: str
    dataset: str
    study: str | None = None
    reported: Mapping[str, float] = field(default_factory=dict)
    target: Mapping[str, float] = field(default_factory=dict)
    needs: str | None = None
    sweep: str | None = None  # a sweep recipe's `sweep.name`: its trials are in its sweep report
    # A sweep recipe's `hydra.sweeper.params` as written (key -> values): a sweep's command
    # carries the recipe's single-valued ones among its own overrides.
    sweep_params: Mapping[str, str] = field(default_factory=dict)
    problem: str | None = None  # what is wrong with the file's block, shown on the page
    # What the recipe trains as MLflow params (flattened config, same-recipe keys left out): a
    # run whose params differ was made with an earlier version of the file.
    settings: Mapping[str, str] = field(default_factory=dict)
    # The same keys as the chosen config groups' own files set them, without the recipe: what a
    # run made before an option existed did (its params lack the key).
    defaults: Mapping[str, str] = field(default_factory=dict)


def recipe_names() -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))


def _figures(block: Mapping | None, what: str, path: str) -> dict[str, float]:
    figures = dict(block or {})
    unknown = sorted(set(figures) - set(METRICS))
    if unknown:
        raise ResultsError(
            f"{path}: recipe.{what} names {', '.join(unknown)}; use MLflow metric names "
            f"({', '.join(METRICS)})."
        )
    for key, value in figures.items():
        if not isinstance(value, int | float) or not 0 <= value <= 1:
            raise ResultsError(
                f"{path}: recipe.{what}.{key} = {value!r}; give a fraction (0.9258 for 92.58%)."
            )
    return {k: float(v) for k, v in figures.items()}


def load_recipes(names: Iterable[str] | None = None) -> dict[str, Recipe]:
    """Every recipe of conf/experiment/ (or those named), composed as training composes them."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf, open_dict

    recipes = {}
    with initialize_config_dir(str(CONF_DIR)):
        for name in names or recipe_names():
            path = f"conf/experiment/{name}.yaml"
            cfg = compose("config", overrides=[f"experiment={name}"], return_hydra_config=True)
            choices = dict(cfg.hydra.runtime.choices)  # the groups the recipe chose
            params = OmegaConf.select(cfg, "hydra.sweeper.params", default=None) or {}
            with open_dict(cfg):
                del cfg.hydra  # as training sees it
            block = cfg.get("recipe")
            sweep = OmegaConf.select(cfg, "sweep.name", default=None)
            sweep = None if sweep is None else str(sweep)
            if block is None:
                recipes[name] = Recipe(
                    name, cfg.dataset.name, sweep=sweep, problem=f"{path} has no `recipe:` block."
                )
                continue
            block = OmegaConf.to_container(block, resolve=True)
            if block.get("name") != name:
                raise ResultsError(
                    f"{path}: recipe.name is {block.get('name')!r}; it must be the file's name "
                    f"({name!r}), which `experiment={name}` selects and runs are tagged with."
                )
            recipes[name] = Recipe(
                name=name,
                dataset=str(cfg.dataset.name),
                study=block.get("study"),
                reported=_figures(block.get("reported"), "reported", path),
                target=_figures(block.get("target"), "target", path),
                needs=block.get("needs"),
                sweep=sweep,
                sweep_params={str(k): str(v) for k, v in params.items()},
                settings=training_settings(cfg),
                defaults=training_settings(_group_defaults(choices)),
            )
    return recipes


def _group_defaults(choices: Mapping[str, str | None]) -> DictConfig:
    """The config composed from the groups a recipe chose, without the recipe's own values
    (inside load_recipes' Hydra context)."""
    from hydra import compose

    overrides = [
        f"{group}={choice}"
        for group, choice in choices.items()
        if choice is not None and group != "experiment" and not group.startswith("hydra")
    ]
    return compose("config", overrides)


def same_recipe(override: str) -> bool:
    """Whether a config key or a `key=value` override leaves what a recipe trains as it is: the
    page's own axes, and whatever does not change a result (settings.py)."""
    key = override.split("=", 1)[0].lstrip("+~")
    return key in PAGE_AXES or not changes_result(key)


def same_sweep(override: str) -> bool:
    """Whether an override of a sweep's command line leaves what a sweep recipe finds as it is:
    same_recipe's, but the sweep's protocol counts (settings.py, changes_sweep_result)."""
    key = override.split("=", 1)[0].lstrip("+~")
    return key in PAGE_AXES or not changes_sweep_result(key)


def training_settings(cfg: DictConfig) -> dict[str, str]:
    """The composed config as a run logs it, but the keys that leave what a recipe trains as it
    is and the `recipe:` block."""
    return {k: v for k, v in config_params(cfg).items() if not same_recipe(k)}
