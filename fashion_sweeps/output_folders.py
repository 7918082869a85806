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
    be): or OutputFolderError. A folder given through an interpolation is left to Hydra, and so
    are overrides Hydra cannot parse (it says why)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except OverrideParseException:
        return
    given = [(o.key_or_group, o.value()) for o in parsed if o.key_or_group in KEYS]
    key, folder = given[-1] if given else ("hydra.run.dir", str(DEFAULT))
    if isinstance(folder, str) and "${" not in folder:
        check_writable(Path(folder).expanduser(), key)


def check_writable(folder: Path, key: str) -> None:
    reason = why_unwritable(folder)
    if reason:
        raise OutputFolderError(
            f"Cannot write the output folder {folder} ({reason}): give {key}=<a folder you can "
            "write>, or run from a folder where multirun/ can be made."
        )


def why_unwritable(folder: Path) -> str | None:
    """Why files cannot be made in `folder` (made if need be), None when they can. Writing one is
    the only test that holds for root (file modes do not stop it) and read-only mounts; a page of
    data in it, that also finds a full disk (an empty file takes no space)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-") as probe:
            probe.write(b"\0" * 4096)
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as err:
        return os.strerror(err.errno) if err.errno else str(err)
    return None


def why_file_unwritable(path: Path) -> str | None:
    """Why the file `path` cannot be written (its folder, or the file itself where it exists:
    a read-only file for users other than root), None when it can. Nothing is changed."""
    reason = why_unwritable(path.parent)
    if reason is None and path.exists():
        try:
            path.open("ab").close()
        except OSError as err:
            reason = err.strerror or str(err)
    return reason
