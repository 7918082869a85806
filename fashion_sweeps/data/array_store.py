"""Arrays kept on disk between runs: written atomically, verified on load, rebuilt when damaged.

An entry is `<key>.npy` (the array, memory-mapped on load) and `<key>.json` (its shape, dtype,
SHA-256 and the caller's metadata). Writers fill a private temporary file and rename it into
place, so two processes building the same entry at once never expose a half-written file; the
last rename wins, with identical content.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

_HASH_CHUNK = 64 << 20  # hash memory maps in slices: no full copy in RAM


def array_sha256(array: np.ndarray) -> str:
    """SHA-256 of an array's bytes (C order), with its dtype and shape."""
    digest = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    flat = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
    for start in range(0, len(flat), _HASH_CHUNK):
        digest.update(memoryview(flat[start : start + _HASH_CHUNK]))
    return digest.hexdigest()


class DamagedEntryError(ValueError):
    """A stored array does not match its recorded shape, dtype or checksum."""


class ArrayStore:
    """A folder of verified arrays addressed by key (a hex fingerprint)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder).expanduser()

    def paths(self, key: str) -> tuple[Path, Path]:
        return self.folder / f"{key}.npy", self.folder / f"{key}.json"

    def load(self, key: str) -> tuple[np.ndarray, dict[str, Any]] | None:
        """The array (a copy-on-write memory map) and its metadata; None when absent or damaged
        (a damaged entry is deleted, so the caller rebuilds it)."""
        array_path, meta_path = self.paths(key)
        if not (array_path.is_file() and meta_path.is_file()):
            return None
        try:
            info = json.loads(meta_path.read_text())
            # Copy-on-write: callers (torch.from_numpy) get a writable array; the file never changes.
            array = np.load(array_path, mmap_mode="c", allow_pickle=False)
            if list(array.shape) != info["shape"] or array.dtype.str != info["dtype"]:
                raise DamagedEntryError(
                    f"shape {array.shape} {array.dtype.str}, recorded {info['shape']} "
                    f"{info['dtype']}"
                )
            if array_sha256(array) != info["sha256"]:
                raise DamagedEntryError("checksum mismatch")
        # JSONDecodeError is a ValueError; a 0-byte array file raises EOFError.
        except (OSError, EOFError, ValueError, KeyError, TypeError) as err:
            log.warning("Cache entry %s is damaged (%s): rebuilding it.", array_path, err)
            self.discard(key)
            return None
        return array, info.get("meta", {})

    def save(self, key: str, array: np.ndarray, meta: dict[str, Any] | None = None) -> None:
        """Store `array` under `key`, atomically. A cache that cannot be written (read-only or
        full disk) is logged and skipped: the run goes on with the array in memory."""
        array_path, meta_path = self.paths(key)
        info = {
            "shape": list(array.shape),
            "dtype": array.dtype.str,
            "sha256": array_sha256(array),
            "meta": meta or {},
        }
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            # The array first: a reader needs both files, so it never pairs new metadata
            # with a missing array.
            _atomic_write(array_path, lambda f: np.save(f, np.ascontiguousarray(array)))
            _atomic_write(meta_path, lambda f: f.write(json.dumps(info).encode()))
        except OSError as err:
            log.warning(
                "Cannot write the cache entry %s (%s): continuing without caching it. Point "
                "`cache.dir` at a writable folder to cache.",
                array_path,
                err,
            )

    def discard(self, key: str) -> None:
        for path in self.paths(key):
            path.unlink(missing_ok=True)


def _atomic_write(path: Path, write: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
