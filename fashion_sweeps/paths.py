"""Folder names made from user values (swept values, `sweep.name`): the one policy that keeps
every such path inside its output root.

A value is a name, never a path: separators, `..`, a leading `.` or characters a shell or
filesystem treats specially are percent-encoded, so `note=../../tmp/x` becomes one folder named
`note=..%2F..%2Ftmp%2Fx` under the stage, and two different values never share a folder.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import quote

from fashion_sweeps.errors import UserError

# Characters kept as they are in a folder name (condition keys use `=`, `,`, `.`, `-`, `+`).
_SAFE = "=,.+-_@"
# Names accepted where a value names a folder as a whole (sweep.name): no encoding, a clear error.
NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")


class UnsafePathError(UserError, ValueError):
    """A user value would name a folder outside its output root."""


def folder_name(value: str) -> str:
    """`value` as one folder name: never empty, never `.`/`..`, no separators."""
    name = quote(str(value), safe=_SAFE)
    if name.startswith("."):  # `.`, `..` and hidden names
        name = "%2E" + name[1:]
    return name or "%00"


def subfolder(parts: Iterable[str]) -> str:
    """Relative folder `a/b/c` from parts that are each one folder name."""
    return "/".join(folder_name(part) for part in parts)


def check_name(value: str, key: str, names: str) -> str:
    """A user value used whole as a folder name (e.g. `sweep.name`): returned, or refused."""
    if not NAME.match(str(value)):
        raise UnsafePathError(
            f"{key}={value!r}: use letters, digits, '_', '-' and '.', starting with a letter, a "
            f"digit or '_' (it names {names})."
        )
    return str(value)
