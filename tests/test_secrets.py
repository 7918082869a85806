"""Credentials in a tracking URI never reach the console, the run's folder or MLflow."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import fashion_sweeps, output

from fashion_sweeps.redact import redact

SECRET = "s3cret-pw"


@pytest.mark.parametrize(
    "text,expected",
    [
        ("http://user:pw@host:5000", "http://user:***@host:5000"),
        ("tracking.uri=https://me:p%40ss@h/x y", "tracking.uri=https://me:***@h/x y"),
        ("postgresql://u:a@b@db:5432/optuna", "postgresql://u:***@db:5432/optuna"),
        ("http://token@host", "http://***@host"),
        ("http://127.0.0.1:5000 and sqlite:////tmp/mlflow.db", None),
        ("mail me@example.com", None),
    ],
)
def test_credentials_in_uris_are_redacted(text: str, expected: str | None) -> None:
    assert redact(text) == (text if expected is None else expected)


def files_holding(folder: Path, needle: str) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and needle.encode() in p.read_bytes()]


def test_unreachable_server_with_credentials_is_reported_without_them(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = fashion_sweeps(
        tmp_path,
        "train",
        "dataset=clothing_sample",
        f"tracking.uri=http://user:{SECRET}@127.0.0.1:9",
        f"hydra.run.dir={out}",
        check=False,
    )
    printed = output(result)
    assert result.returncode == 1 and "does not answer" in printed
    assert "http://user:***@127.0.0.1:9" in printed
    assert SECRET not in printed
    assert (out / ".hydra" / "overrides.yaml").is_file()
    assert files_holding(out, SECRET) == []


def test_a_sweep_storage_that_cannot_be_opened_is_reported_without_its_password(
    tmp_path: Path,
) -> None:
    result = fashion_sweeps(
        tmp_path,
        "screen",
        "sweep=tiny",
        "dataset=clothing_sample",
        f"hydra.sweeper.storage=postgresql://u:{SECRET}@127.0.0.1:9/optuna",
        f"tracking.dir={tmp_path / 'mlruns'}",
        check=False,
    )
    printed = output(result)
    assert result.returncode != 0 and "cannot be opened" in printed
    assert "postgresql://u:***@127.0.0.1:9/optuna" in printed
    assert SECRET not in printed


def test_configs_that_launchers_pickle_hold_references_not_credentials(monkeypatch) -> None:
    """submitit and SLURM pickle the sweep's config for each job into world-readable files: the
    credentials move to the environment the jobs inherit; the config resolves to the same URIs."""
    import os
    import pickle

    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from fashion_sweeps.config import CONF_DIR
    from fashion_sweeps.redact import CREDENTIAL_ENV_PREFIX, credentials_to_environment

    for name in [k for k in os.environ if k.startswith(CREDENTIAL_ENV_PREFIX)]:
        monkeypatch.delenv(name)
    storage = f"postgresql://u:{SECRET}@db:5432/optuna"
    overrides = [f"tracking.uri=http://me:{SECRET}@host:5000", f"+storage={storage}"]
    with initialize_config_dir(str(CONF_DIR), version_base=None):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    cfg.hydra.overrides.task = overrides
    credentials_to_environment(cfg)
    assert SECRET.encode() not in pickle.dumps(cfg)
    assert SECRET not in OmegaConf.to_yaml(cfg)
    assert cfg.tracking.uri == f"http://me:{SECRET}@host:5000"  # resolved from the environment
    assert cfg.storage == storage
    assert [k for k in os.environ if k.startswith(CREDENTIAL_ENV_PREFIX)]
    assert OmegaConf.to_container(cfg.hydra.overrides, resolve=True)["task"] == overrides
    credentials_to_environment(cfg)  # a second pass (the sweep's next stage) changes nothing
    assert cfg.tracking.uri == f"http://me:{SECRET}@host:5000"
