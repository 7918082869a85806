"""A wheel install works on its own: the config tree and the Hydra plugin ship inside it, and
nothing is looked up in a source checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOT_SOURCES = (".*", "mlruns", "multirun", "build", "*.egg-info", "__pycache__", "docs", "bench")


def run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, f"{args}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A fresh virtual environment holding the built wheel. Its dependencies (torch...) come from
    this interpreter's site-packages through a .pth line, which loads no editable install."""
    tmp = tmp_path_factory.mktemp("wheel")
    # Built from a copy: the build leaves build/ and *.egg-info/ beside its sources.
    source = tmp / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*NOT_SOURCES))
    run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "-w",
        tmp,
        source,
        cwd=tmp,
    )
    (wheel,) = tmp.glob("fashion_sweeps-*.whl")
    venv = tmp / "venv"
    run(Path(sys._base_executable), "-m", "venv", "--without-pip", venv, cwd=tmp)
    purelib = Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))
    (purelib / "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    run(
        sys.executable,
        "-m",
        "pip",
        "--python",
        venv / "bin" / "python",
        "install",
        "--no-deps",
        "--no-index",
        wheel,
        cwd=tmp,
        env=env,
    )
    return venv, env


def test_the_installed_package_runs_from_its_install_folder(installed, tmp_path: Path) -> None:
    venv, env = installed
    where = run(
        venv / "bin/python",
        "-c",
        "import fashion_sweeps; print(fashion_sweeps.__file__)",
        cwd=tmp_path,
        env=env,
    )
    assert where.strip().startswith(str(venv))


def test_the_wheel_ships_the_config_tree(installed, tmp_path: Path) -> None:
    venv, env = installed
    job = run(
        venv / "bin/fashion-sweeps",
        "train",
        "dataset=clothing_sample",
        "--cfg",
        "job",
        cwd=tmp_path,
        env=env,
    )
    assert "name: clothing_sample" in job
    hydra = run(
        venv / "bin/fashion-sweeps", "train", "sweep=grid", "--cfg", "hydra", cwd=tmp_path, env=env
    )
    assert "hydra_plugins.fashion_sweeps_stages" in hydra


def test_results_page_defaults_to_the_current_folder_outside_a_checkout(
    installed, tmp_path
) -> None:
    venv, env = installed
    help_ = run(venv / "bin/fashion-sweeps", "results", "--help", cwd=tmp_path, env=env)
    assert str(tmp_path / "docs" / "results.md") in "".join(
        help_.split()
    )  # argparse wraps long paths


def test_results_page_defaults_to_the_checkouts_docs_from_any_folder(tmp_path: Path) -> None:
    help_ = run(sys.executable, "-m", "fashion_sweeps.cli", "results", "--help", cwd=tmp_path)
    assert str(ROOT / "docs" / "results.md") in "".join(help_.split())  # argparse wraps long paths
