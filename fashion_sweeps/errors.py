"""The one base of every mistake in a user's command, config or data.

A `UserError`'s message says what is wrong and what to do, in one paragraph: a single run
prints just that (no traceback) and exits 1; in a sweep the condition is recorded as refused
and the others run (docs/sweeps.md, "Failed conditions"). Errors of the code or the machine
are not `UserError`s: they keep their traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix from the message alone."""


def user_error(err: BaseException | None) -> UserError | None:
    """The `UserError` behind `err`, if any (Hydra wraps errors raised while instantiating)."""
    while err is not None:
        if isinstance(err, UserError):
            return err
        err = err.__cause__
    return None
