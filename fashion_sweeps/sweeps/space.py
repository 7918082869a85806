"""What a sweep explores: Hydra overrides -> Optuna distributions, the fixed overrides every job
gets, and the points of a grid.

Sweep values come from `hydra.sweeper.params` and from the command line (`backbone=a,b,c`);
the command line wins for a key given in both. Parsing reuses the Optuna sweeper plugin's own
override -> distribution conversion, so every syntax it accepts (`a,b`, `choice()`, `range()`,
`interval()`, `tag(log, ...)`) means the same here.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException

# No public API converts a sweep override to a distribution: the plugin's own function keeps every
# syntax meaning what it means to the Optuna sweeper (the plugin is pinned in pyproject.toml).
from hydra_plugins.hydra_optuna_sweeper._impl import (
    OptunaSweeperImpl,
    create_optuna_distribution_from_override,
)
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import Trial

GRID_SAMPLER = "optuna.samplers.GridSampler"


@dataclass
class SearchSpace:
    """Swept keys with their distributions (in the order given) and the fixed override lines."""

    distributions: dict[str, BaseDistribution] = field(default_factory=dict)
    fixed: list[str] = field(default_factory=list)

    def choices(self) -> dict[str, str]:
        """Each swept key's values as text (`0.1,0.01`; a range as Optuna describes it)."""
        return {
            key: ",".join(map(str, d.choices)) if isinstance(d, CategoricalDistribution) else str(d)
            for key, d in self.distributions.items()
        }

    @classmethod
    def parse(
        cls, config_params: Mapping[str, Any] | None, arguments: Iterable[str]
    ) -> SearchSpace:
        lines = [f"{k}={v}" for k, v in (config_params or {}).items()] + list(arguments)
        by_key: dict[str, Any] = {}
        for override in OverridesParser.create().parse_overrides(lines):
            # A later override of the same key replaces an earlier one (the command line wins)
            # and keeps its place in the grid's order.
            by_key[override.get_key_element()] = override
        space = cls()
        for key, override in by_key.items():
            if override.is_sweep_override():
                space.distributions[key] = create_optuna_distribution_from_override(override)
            else:
                space.fixed.append(override.input_line)
        return space

    def grid(self) -> list[dict[str, Any]]:
        """Every combination of the swept values, the first key varying slowest."""
        choices = self._grid_choices()
        return [
            dict(zip(choices, values, strict=True))
            for values in itertools.product(*choices.values())
        ]

    def grid_distributions(self) -> dict[str, CategoricalDistribution]:
        """How a grid's points are recorded as Optuna trial params: each key categorical over
        its values (what `optuna.importance` and optuna-dashboard read)."""
        return categorical_space(self.grid())

    def _grid_choices(self) -> dict[str, list[Any]]:
        choices = {}
        for key, distribution in self.distributions.items():
            try:
                choices[key] = OptunaSweeperImpl._to_grid_sampler_choices(distribution)
            except (ValueError, AssertionError) as err:
                raise ValueError(
                    f"The grid sampler needs a finite list of values, but `{key}` sweeps "
                    f"{distribution}. Give it as values (`{key}=a,b,c`) or use a sampler for "
                    "continuous spaces (`sweep=tpe hydra.sweeper.n_trials=N`)."
                ) from err
        return choices


def override_lines(params: Mapping[str, Any]) -> list[str]:
    """`{"optimizer.lr": 0.01}` -> `["optimizer.lr=0.01"]`, the form Hydra parses back."""
    return [f"{key}={value}" for key, value in params.items()]


def params_id(params: Mapping[str, Any]) -> str:
    """A condition's identity in a study: its swept values, sorted (`backbone=vgg16 head=fc ...`)."""
    return " ".join(sorted(override_lines(params)))


def quoted(value: str) -> str:
    """A string as a Hydra override value: as it is where Hydra reads it back as that same string
    (`clothing-demo`, `mlp/fc/adam/0.01`), else quoted (`=`, `,`, `true`, `0.5`...), so that
    the commands runs record stay readable."""
    try:
        if OverridesParser.create().parse_override(f"k={value}").value() == value:
            return value
    except HydraException:
        pass
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def categorical_space(points: Iterable[Mapping[str, Any]]) -> dict[str, CategoricalDistribution]:
    """Each key of `points` categorical over its values there, in first-seen order."""
    values: dict[str, list[Any]] = {}
    for point in points:
        for key, value in point.items():
            if value not in values.setdefault(key, []):
                values[key].append(value)
    return {key: CategoricalDistribution(choices) for key, choices in values.items()}


def suggest(trial: Trial, name: str, distribution: BaseDistribution) -> Any:
    """A sampler's value for `name` from `distribution`, through Optuna's public suggest API (it
    records the value as a trial param)."""
    if isinstance(distribution, CategoricalDistribution):
        return trial.suggest_categorical(name, distribution.choices)
    if isinstance(distribution, IntDistribution):
        return trial.suggest_int(
            name, distribution.low, distribution.high, step=distribution.step, log=distribution.log
        )
    if isinstance(distribution, FloatDistribution):
        return trial.suggest_float(
            name, distribution.low, distribution.high, step=distribution.step, log=distribution.log
        )
    raise ValueError(f"`{name}`: no Optuna suggestion for {distribution}.")
