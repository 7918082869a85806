"""Ctrl-C (SIGINT) and SIGTERM (`kill`, a scheduler stopping a job): one way to stop, and one way
to say so.

Both end in KeyboardInterrupt, so that every `except KeyboardInterrupt` (the sweep's, and
Lightning's, which stops its other processes) handles them alike, and the signal is remembered:
the run's `failure_reason` names it and the command exits 128 + its number (130, 143), the
shell's convention, so that `make sweep` and scripts stop instead of going on.

Ctrl-C raises at once. A first SIGTERM only asks to stop: `check()` raises at the next safe
point (a batch boundary, a condition's start, a step of a long decode or feature pass). A
scheduler's SIGTERM lands anywhere, often inside an MLflow write; raised there, it cut the write
and left SQLite's write lock held while the process shut down, so the next worker's writes timed
out. SLURM sends SIGKILL after its KillWait (30 s by default), far more than a batch takes here;
a second SIGTERM or Ctrl-C stops at once.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import signal
import threading
from types import FrameType

log = logging.getLogger(__name__)

_received: list[int] = []  # the signals received, first first
_pending: list[int] = []  # a SIGTERM that asked to stop, until check() raises it
_installer: list[int] = []  # the process that installed the handlers


def _defers(signum: int) -> bool:
    """A first SIGTERM in the process that installed the handler waits for check(). Forked
    children (decoding pools, data-loader workers) inherit the handler but never call check():
    they stop at once, as before."""
    return signum == signal.SIGTERM and not _received and _installer == [os.getpid()]


def _raise(signum: int, frame: FrameType | None) -> None:
    defer = _defers(signum)
    _received.append(signum)
    if defer:
        _pending.append(signum)
        log.warning("SIGTERM: stopping at the next batch or condition (again: at once)")
        return
    raise KeyboardInterrupt(signal.Signals(signum).name)


def stop_requested() -> bool:
    """Whether a SIGTERM asked this process to stop and `check()` has not raised it yet."""
    return bool(_pending)


def check() -> None:
    """Raise the KeyboardInterrupt a SIGTERM asked for, here: a point where nothing is half
    written. Called between batches, before a condition starts and in long loops."""
    if _pending:
        signum = _pending.pop()
        raise KeyboardInterrupt(signal.Signals(signum).name)


def install() -> None:
    """Handle SIGINT and SIGTERM as above (main thread only: Python's rule for handlers). A
    handler set by someone else (a launcher, a test harness) is left alone."""
    if threading.current_thread() is not threading.main_thread():
        return
    _installer[:] = [os.getpid()]
    for signum, default in (
        (signal.SIGINT, signal.default_int_handler),
        (signal.SIGTERM, signal.SIG_DFL),
    ):
        if signal.getsignal(signum) in (default, _raise):
            signal.signal(signum, _raise)


def was_interrupted(err: BaseException) -> bool:
    """Whether `err` is an interruption: KeyboardInterrupt, or the SystemExit Lightning raises
    after catching one (its graceful shutdown) or on SIGTERM (SIGTERMException)."""
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    return isinstance(err, KeyboardInterrupt | SIGTERMException) or (
        isinstance(err, SystemExit) and isinstance(err.__context__, KeyboardInterrupt)
    )


def signal_name() -> str:
    """The signal that interrupted this process (SIGINT when none was recorded: a
    KeyboardInterrupt raised without our handler is Python's own Ctrl-C)."""
    return signal.Signals(_received[0]).name if _received else "SIGINT"


def reason() -> str:
    return f"interrupted ({signal_name()})"


def exit_code() -> int:
    """128 + the signal's number: 130 after Ctrl-C, 143 after SIGTERM."""
    return 128 + int(signal.Signals[signal_name()])


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def worker_process(parent: int) -> None:
    """Initializer of this package's worker processes (the decoding pool), forked by `parent`:
    default signal handlers, not the parent's inherited deferring one (Ctrl-C reaches the parent,
    which ends the pool), and death with the parent. A parent killed by `kill -9` or the OOM
    killer leaves no orphan holding the caches and the stores open (Linux's PR_SET_PDEATHSIG)."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError, TypeError):  # not Linux: workers end with their pool
        return
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)
