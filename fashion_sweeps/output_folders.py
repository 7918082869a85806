"""The output folder a Hydra app's command line names (`hydra.run.dir`, `hydra.sweep.dir`), or the
default `multirun/` under the current folder, checked before Hydra makes it: one that cannot be
written stops the command in one paragraph (Hydra's own attempt ends in a traceback).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from fashion_sweeps.errors import UserError

KEYS = ("hydra.run.dir", "hydra.sweep.dir")
DEFAULT = Path("multirun")  # conf/config.yaml and conf/sweep/protocol.yaml write under it


class OutputFolderError(UserError, OSError):
    """An output folder that cannot be created or written."""


def check_output_folder(overrides: Sequence[str]) -> None:
    """The last output folder `overrides` name, else the default, can be written (made if need
    be): or OutputFolderError. A folder given through an interpolation is left to Hydra."""
    given = [(k, v) for k, _, v in (o.lstrip("+").partition("=") for o in overrides) if k in KEYS]
    key, folder = given[-1] if given else ("hydra.run.dir", str(DEFAULT))
    if "${" not in folder:
        check_writable(Path(folder).expanduser(), key)


def check_writable(folder: Path, key: str) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
            pass
    except OSError as err:
        reason = os.strerror(err.errno) if err.errno else str(err)
        raise OutputFolderError(
            f"Cannot write the output folder {folder} ({reason}): give {key}=<a folder you can "
            "write>, or run from a folder where multirun/ can be made."
        ) from None
