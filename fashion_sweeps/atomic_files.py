"""Files written whole or not at all: written beside their place under a name that says which
process on which host writes them, then renamed into place; a kill mid-write leaves the previous
file (and a temporary one that `data/array_store.py` removes once its writer is gone)."""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

# Names an unfinished file: `.<name>.<host>.<pid>.<random>.tmp`.
WRITER = f"{socket.gethostname()}.{os.getpid()}"


def atomic_write(path: Path, write: Callable[[IO[bytes]], Any]) -> None:
    """`write(f)` into a temporary file beside `path`, then renamed to `path`."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{WRITER}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)  # half written: a kill, a full disk
        raise
