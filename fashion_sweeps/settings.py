"""Which settings change a result: the one policy behind every "are these runs comparable?".

Three places ask it: a run folder continued by a relaunched job (tracking/job_run.py), a sweep's
study, which keeps its conditions' results across invocations (sweeps/identity.py), and the
results page, which compares runs with a recipe (recipes/catalogue.py, same_recipe) and a sweep's
command line with a sweep recipe (changes_sweep_result). A setting changes a result unless it
only says where things are (data, outputs, caches, the tracking store), how a run is shown or
tracked, or which devices run it. Keys are flattened config keys
(`dataset.image_size`) or the keys of command-line overrides (`trainer=gpu`,
`+tracking.tags.x=1`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

from fashion_sweeps.redact import redact

# Every key under these: where runs are tracked and logged (tracking, hydra), the caches (their
# entries are keyed by what they hold), a sweep's bookkeeping (its epochs reach each run as
# trainer.*), a recipe's study facts (what it reported, not what it trains).
NOT_A_RESULT_GROUPS = ("tracking", "hydra", "cache", "sweep", "recipe")
NOT_A_RESULT_KEYS = frozenset(
    {
        "output_dir",
        # where the data is and how fast it is read
        "dataset.root",
        "dataset.reader.root",
        "dataset.reader.download",
        "dataset.num_workers",
        "dataset.decode_workers",
        "backbone.weights_path",  # where the weights file is; which weights: `pretrained`
        # which devices run it, how progress is shown
        "trainer",  # the option as a whole (trainer=gpu); its precision is compared as a key
        "trainer.accelerator",
        "trainer.devices",
        "trainer.num_nodes",
        "trainer.strategy",
        "trainer.sync_batchnorm",
        "trainer.progress",
        "trainer.log_every_n_steps",
    }
)
# A continued run may train for longer than its first attempt planned: nothing computed changes.
CONTINUABLE_KEYS = frozenset({"trainer.max_epochs", "trainer.patience"})


def changes_result(key: str) -> bool:
    """Whether a config key (or an override's key, `+`/`~` prefixes allowed) changes a result."""
    key = key.lstrip("+~")
    if key in NOT_A_RESULT_KEYS:
        return False
    return not any(key == group or key.startswith(f"{group}.") for group in NOT_A_RESULT_GROUPS)


# A sweep's command sets its protocol by the `sweep` option and keys, and the sweeper's: they
# change what the sweep finds (its sampler, its grid, the screen's epochs, the full stage's top k,
# epochs and fine-tuning), though in a run's config they only show through what they set. Not
# these: the sweep's name and stage, whether it logs models, where its studies live and how many
# conditions run at once.
SWEEP_PROTOCOL_GROUPS = ("sweep", "hydra.sweeper", "hydra/sweeper")
SWEEP_BOOKKEEPING_KEYS = frozenset(
    {
        "sweep.name",
        "sweep.stage",
        "sweep.screen.log_model",
        "sweep.full.log_model",
        "sweep.screen.plots",
        "sweep.full.plots",
        "hydra.sweeper.storage",
        "hydra.sweeper.study_name",
        "hydra.sweeper.n_jobs",
    }
)


def changes_sweep_result(key: str) -> bool:
    """Whether an override of a sweep's command line (its key, `+`/`~` prefixes allowed) changes
    what the sweep finds: as changes_result, and the sweep's protocol (SWEEP_PROTOCOL_GROUPS)
    but its bookkeeping."""
    key = key.lstrip("+~")
    if any(key == g or key.startswith((f"{g}.", f"{g}/")) for g in SWEEP_PROTOCOL_GROUPS):
        return key not in SWEEP_BOOKKEEPING_KEYS
    return changes_result(key)


def result_settings(params: Mapping[str, str]) -> dict[str, str]:
    """The flattened settings (as `config_params` gives them) that change a result."""
    return {key: value for key, value in params.items() if changes_result(key)}


def differences(before: Mapping[str, str], now: Mapping[str, str], shown: int = 8) -> str:
    """`key: 'a' -> 'b'; ...` for the keys whose values differ ('' when none do)."""
    keys = sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))
    text = "; ".join(f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in keys[:shown])
    return text + (" ..." if len(keys) > shown else "")


def flatten(config: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Nested config -> ("a.b.c", value) pairs; lists stay whole values."""
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from flatten(value, f"{name}.")
        else:
            yield name, value


def config_params(cfg: DictConfig) -> dict[str, str]:
    """The resolved config as a run's MLflow params: flattened keys, values as text (MLflow keeps
    at most 6,000 characters of one), credentials in URIs masked."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    return {k: redact(str(v))[:6000] for k, v in flatten(resolved)}
