"""Ctrl-C (SIGINT) and SIGTERM (`kill`, a scheduler stopping a job): one way to stop, and one way
to say so.

Both signals raise KeyboardInterrupt, so that every `except KeyboardInterrupt` (the sweep's, and
Lightning's, which stops its other processes) handles them alike, and the signal is remembered:
the run's `failure_reason` names it and the command exits 128 + its number (130, 143), the
shell's convention, so that `make sweep` and scripts stop instead of going on.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

log = logging.getLogger(__name__)

_received: list[int] = []  # the signals received, first first


def _raise(signum: int, frame: FrameType | None) -> None:
    _received.append(signum)
    raise KeyboardInterrupt(signal.Signals(signum).name)


def install() -> None:
    """Handle SIGINT and SIGTERM as above (main thread only: Python's rule for handlers). A
    handler set by someone else (a launcher, a test harness) is left alone."""
    if threading.current_thread() is not threading.main_thread():
        return
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
