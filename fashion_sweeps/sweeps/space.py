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
from hydra_plugins.hydra_optuna_sweeper._impl import (
    OptunaSweeperImpl,
    create_optuna_distribution_from_override,
)
from optuna.distributions import BaseDistribution

GRID_SAMPLER = "optuna.samplers.GridSampler"


@dataclass
class SearchSpace:
    """Swept keys with their distributions (in the order given) and the fixed override lines."""

    distributions: dict[str, BaseDistribution] = field(default_factory=dict)
    fixed: list[str] = field(default_factory=list)

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
        return [
            dict(zip(choices, values, strict=True))
            for values in itertools.product(*choices.values())
        ]


def override_lines(params: Mapping[str, Any]) -> list[str]:
    """`{"optimizer.lr": 0.01}` -> `["optimizer.lr=0.01"]`, the form Hydra parses back."""
    return [f"{key}={value}" for key, value in params.items()]


def params_id(params: Mapping[str, Any]) -> str:
    """A condition's identity in a study: its swept values, sorted (`backbone=vgg16 head=fc ...`)."""
    return " ".join(sorted(override_lines(params)))


def quoted(value: str) -> str:
    """A string as a quoted Hydra override value (keeps `/`, `=`, `,` literal)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
