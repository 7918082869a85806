"""Which study a sweep's results belong to: its name and every setting that changes a result.

A study keeps its conditions' results across invocations, so it must only ever hold results of
one set of settings. Its screen records the settings it was started with (settings.py decides
which count: not where things are, how runs are tracked or shown, nor the devices; the swept keys
are the conditions themselves). An invocation with other settings is another sweep: it trains
as `<sweep.name>.<settings id>`, with its own studies, output folders and MLflow parents, and
says so; the same settings given again find that sweep and resume it. The full stage follows
its screen.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Mapping

import optuna
from omegaconf import DictConfig, OmegaConf, open_dict

from fashion_sweeps.settings import (
    changes_result,
    config_params,
    differences,
    flatten,
    result_settings,
)
from fashion_sweeps.sweeps.study import load_study

log = logging.getLogger(__name__)

SETTINGS = "result_settings"  # the screen study's user attribute


def _under(key: str, swept: Iterable[str]) -> bool:
    return any(key == s or key.startswith(f"{s}.") for s in swept)


def sweep_settings(
    config: DictConfig, swept: Iterable[str], fixed: Iterable[str], stage: str = "screen"
) -> dict[str, str]:
    """The settings of a stage's jobs that change a result, but the swept keys (by default the
    screen's: the full stage belongs to the sweep its screen began). A swept group's keys differ
    from one condition to the next: the fixed overrides under it (`backbone.freeze=true` beside
    `backbone=a,b`) are taken as given."""
    swept = [key.lstrip("+~") for key in swept]
    cfg = config.copy()
    with open_dict(cfg):
        cfg.pop("hydra", None)
        cfg.sweep.stage = stage
    composed = result_settings(config_params(cfg))
    settings = {k: v for k, v in composed.items() if not _under(k, swept)}
    settings.update(_computed_from_swept(cfg, swept))
    for line in fixed:
        key, _, value = line.partition("=")
        key = key.lstrip("+~")
        if _under(key, swept) and key not in swept and changes_result(key):
            settings[key] = value
    return dict(sorted(settings.items()))


def _computed_from_swept(cfg: DictConfig, swept: list[str]) -> dict[str, str]:
    """Settings whose value is an interpolation of a swept key (`dataset.image_size:
    ${fashion_sweeps_native_resolution:${backbone._target_}}`), as their expression: resolved,
    they would show only the base config's condition, the same as a fixed value."""
    raw = dict(flatten(OmegaConf.to_container(cfg, resolve=False)))
    return {
        key: value
        for key, value in raw.items()
        if isinstance(value, str)
        and any(f"${{{s}}}" in value or f"${{{s}." in value for s in swept)
        and changes_result(key)
        and not _under(key, swept)
    }


def settings_id(settings: Mapping[str, str]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]


def sweep_name(storage: str, name: str, settings: Mapping[str, str]) -> str:
    """`name` when its screen study is new, or was started with these settings; otherwise the
    name of the sweep these settings make (`name.<id>`)."""
    screen = load_study(storage, f"{name}/screen")
    before = screen.user_attrs.get(SETTINGS) if screen is not None else None
    if before is None or before == dict(settings):
        return name
    other = f"{name}.{settings_id(settings)}"
    known = load_study(storage, f"{other}/screen") is not None
    log.warning(
        "Sweep %r was run with other settings (%s). Its results do not apply to these: they "
        "%s sweep %r (a new study, with its own output folder and MLflow parent runs; "
        "`sweep.name=%s` names it for `fashion-sweeps report`). The earlier settings still "
        "resume sweep %r.",
        name,
        differences(before, settings),
        "resume" if known else "start a new study, as",
        other,
        other,
        name,
    )
    return other


def record_settings(study: optuna.Study, settings: Mapping[str, str]) -> None:
    """Keep the settings a screen study was started with (a study made before they were kept
    adopts the current ones)."""
    if study.user_attrs.get(SETTINGS) is None:
        study.set_user_attr(SETTINGS, dict(settings))


def check_full_settings(study: optuna.Study, settings: Mapping[str, str]) -> None:
    """The full stage follows its screen's sweep; its own settings (`sweep.full.*`) changed
    between invocations are reported: its finished conditions count as done."""
    before = study.user_attrs.get(SETTINGS)
    if before is None:
        study.set_user_attr(SETTINGS, dict(settings))
    elif before != dict(settings):
        log.warning(
            "The full stage %r was started with other settings (%s): the conditions it holds "
            "count as done although they ran with those. To train them with these, give the "
            "sweep a new `sweep.name`.",
            study.study_name,
            differences(before, settings),
        )
