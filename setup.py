"""Packaging beyond pyproject.toml: the config tree `conf/` ships inside the package.

`conf/` stays at the top of the repository (Hydra's and the README's place for it); wheels (and
installs from the sdist) copy it to `fashion_sweeps/conf/`, where `fashion_sweeps.config` finds
it when no source checkout is around.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


class BuildWithConfig(build_py):
    def run(self) -> None:
        super().run()
        target = Path(self.build_lib) / "fashion_sweeps" / "conf"
        shutil.copytree(HERE / "conf", target, dirs_exist_ok=True, ignore=_not_yaml)


def _not_yaml(folder: str, names: list[str]) -> list[str]:
    return [n for n in names if not n.endswith(".yaml") and not (Path(folder) / n).is_dir()]


setup(cmdclass={"build_py": BuildWithConfig})
