"""The console script as a shell user meets it: each stage's --help, and shell completion."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fashion_sweeps.cli", *args],
        capture_output=True,
        text=True,
        timeout=600,  # a loaded shared machine takes minutes to import torch
        env={**os.environ, **(env or {})},
    )


@pytest.mark.parametrize(
    "stage,says",
    [
        ("screen", "that its Optuna study does not hold yet"),
        ("full", "sweep.full.top_k"),
        ("sweep", "The screen, then the full stage of its winners"),
    ],
)
def test_stage_help_describes_the_stage(stage: str, says: str) -> None:
    result = cli(stage, "--help")
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"usage: fashion-sweeps {stage}" in result.stdout
    assert says in " ".join(result.stdout.split())
    assert "Powered by Hydra" not in result.stdout  # not train's help


def test_completion_installs_for_the_console_script() -> None:
    for args in (["-sc", "install=bash"], ["train", "-sc", "install=bash"]):
        result = cli(*args)
        assert result.returncode == 0, result.stderr[-2000:]
        assert result.stdout.rstrip().endswith("-F hydra_bash_completion fashion-sweeps")


@pytest.mark.parametrize(
    "line,expected",
    [
        ("fashion-sweeps sc", "screen"),
        ("fashion-sweeps train datas", "dataset="),
        ("fashion-sweeps screen dataset=cloth", "dataset=clothing"),
    ],
)
def test_completion_answers_through_bash(tmp_path: Path, line: str, expected: str) -> None:
    """The completion function Hydra installs, run by bash as a shell would on <Tab>."""
    if shutil.which("bash") is None:
        pytest.skip("needs bash")
    script = tmp_path / "fashion-sweeps"  # the console script, running this checkout
    script.write_text(f'#!/bin/sh\nexec {sys.executable} -m fashion_sweeps.cli "$@"\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    words = line.split()
    bash = f"""
        eval "$(fashion-sweeps -sc install=bash)"
        COMP_LINE='{line}'; COMP_POINT={len(line)}; COMP_WORDS=({line}); COMP_CWORD={len(words) - 1}
        hydra_bash_completion
        printf '%s\\n' "${{COMPREPLY[@]}}"
    """
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    result = subprocess.run(
        ["bash", "-c", bash], capture_output=True, text=True, timeout=600, env=env
    )
    assert expected in result.stdout.split(), result.stdout + result.stderr[-2000:]


def test_completing_a_command_name_does_not_load_the_training_code() -> None:
    """<Tab> after `fashion-sweeps sc` answers at once: torch (seconds to import) stays out."""
    probe = (
        "import sys; from fashion_sweeps.cli import complete; complete(['query=bash']); "
        "print('torch loaded' if 'torch' in sys.modules else 'torch not loaded')"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "COMP_LINE": "fashion-sweeps sc"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split("\n")[:2] == ["screen", "torch not loaded"]


def test_hydras_info_prints_each_line_once(tmp_path: Path) -> None:
    """Importing mlflow.pytorch installs a root handler (logging.basicConfig): Hydra's `--info`,
    which sets up no job logging, printed every line twice."""
    done = subprocess.run(
        [sys.executable, "-m", "fashion_sweeps.train", "--info", "plugins"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    printed = done.stdout + done.stderr
    assert done.returncode == 0, printed[-2000:]
    assert printed.count("Installed Hydra Plugins") == 1
    assert "DEBUG:hydra" not in printed


HEAVY = ("torch", "pytorch_lightning", "mlflow", "pandas", "optuna", "matplotlib")


def loaded_after(code: str, env: dict[str, str] | None = None) -> list[str]:
    """The heavy packages (seconds to import at load) a fresh interpreter holds after `code`."""
    probe = (
        f"import sys, contextlib\nwith contextlib.suppress(SystemExit):\n    {code}\n"
        f"print('LOADED', *sorted(m for m in {HEAVY!r} if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **(env or {})},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage" in result.stdout.lower() or "LOADED" in result.stdout, result.stdout
    return result.stdout.rsplit("LOADED", 1)[1].split()


@pytest.mark.parametrize(
    "command",
    ["train", "screen", "sweep", "samplers", "report", "results", "predict", "export",
     "export-backbone"],
)  # fmt: skip
def test_every_help_answers_without_the_training_stack(command: str) -> None:
    """`fashion-sweeps COMMAND --help` took 8-9 s (torch, Lightning and MLflow imported first);
    the help needs none of them."""
    code = f"from fashion_sweeps.cli import main; main([{command!r}, '--help'])"
    assert loaded_after(code) == []


def test_completing_an_override_does_not_load_the_training_stack() -> None:
    """<Tab> on `fashion-sweeps train datas` took ~10 s: Hydra composes, nothing trains."""
    code = "from fashion_sweeps.cli import main; main(['-sc', 'query=bash'])"
    env = {"COMP_LINE": "fashion-sweeps train datas"}
    assert loaded_after(code, env) == []


@pytest.mark.parametrize("command", ["train", "sweep"])
def test_an_output_folder_that_cannot_be_written_is_one_paragraph(command, capsys) -> None:
    """Hydra's own attempt to make it ended in a 30-line traceback."""
    from fashion_sweeps.cli import main

    key = "hydra.run.dir" if command == "train" else "hydra.sweep.dir"
    assert main([command, "dataset=clothing_sample", f"{key}=/proc/no/such/run"]) == 1
    said = capsys.readouterr().err
    assert said.startswith(f"fashion-sweeps {command}: Cannot write the output folder /proc/no/")
    assert f"give {key}=<a folder you can write>" in said and "Traceback" not in said


def test_an_output_folder_is_read_as_hydra_reads_the_override(tmp_path, capsys) -> None:
    """Quoted, as a path with spaces must be: the quotes were taken as part of the path, so a
    folder named `'` was made in the current folder and the real one never checked."""
    from fashion_sweeps.cli import main

    folder = "/proc/no such/run"
    assert main(["train", "dataset=clothing_sample", f"hydra.run.dir='{folder}'"]) == 1
    said = capsys.readouterr().err
    assert said.startswith(f"fashion-sweeps train: Cannot write the output folder {folder} ")
