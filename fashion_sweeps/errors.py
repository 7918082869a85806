"""The one base of every mistake in a user's command, config or data.

A `UserError`'s message says what is wrong and what to do, in one paragraph: a single run
prints just that (no traceback) and exits 1; in a sweep the condition is recorded as refused
and the others run (docs/sweeps.md, "Failed conditions"). Errors of the code or the machine
are not `UserError`s: they keep their traceback.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path


class UserError(Exception):
    """A mistake the user can fix from the message alone."""


class DiskFullError(UserError, OSError):
    """A write failed for want of space: every later condition of a sweep would fail alike."""


def user_error(err: BaseException | None) -> UserError | None:
    """The `UserError` behind `err`, if any (Hydra wraps errors raised while instantiating); a
    full disk, wherever it was met, as a `DiskFullError`."""
    first = err
    while err is not None:
        if isinstance(err, UserError):
            return err
        err = err.__cause__
    return disk_full(first)


# How a full disk reads when no OSError carries it: torch.save, SQLite.
_FULL_DISK_TEXTS = ("no space left on device", "file write failed", "database or disk is full")


def disk_full(err: BaseException | None) -> DiskFullError | None:
    """A `DiskFullError` saying where, when `err` (or what caused it) is a write that found no
    space: ENOSPC/EDQUOT, or the messages torch and SQLite give for it."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, DiskFullError):
            return err
        full = isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)
        if full or any(text in str(err).lower() for text in _FULL_DISK_TEXTS):
            path = getattr(err, "filename", None)
            return DiskFullError(_full_disk_message(path, err))
        err = err.__cause__ or err.__context__
    return None


def _full_disk_message(path: str | None, err: BaseException) -> str:
    where = f"writing {path} ({_free(Path(path))} free there)" if path else f"({err})"
    return (
        f"No space left on the disk {where}. Free some space, or write elsewhere: the run "
        "folder with hydra.run.dir= (hydra.sweep.dir= for sweeps), the MLflow store with "
        "tracking.dir=, the caches with cache.dir=. Runs that were open are closed as FAILED "
        "where the store could still be written (else by the next command); run the same "
        "command again to go on from the last checkpoint."
    )


def _free(path: Path) -> str:
    for folder in (path, *path.parents):
        try:
            return f"{shutil.disk_usage(folder).free / 1e6:.0f} MB"
        except OSError:
            continue
    return "unknown"
