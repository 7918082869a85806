"""Arrays kept on disk between runs: written atomically, verified on load, rebuilt when damaged.

An entry is `<key>.npy` (the array, memory-mapped on load) and `<key>.json` (its shape, dtype,
SHA-256 and the caller's metadata). Writers fill a private temporary file and rename it into
place, so two processes building the same entry at once never expose a half-written file; the
last rename wins, with identical content.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import mmap
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from fashion_sweeps.atomic_files import WRITER, atomic_write
from fashion_sweeps.tracking.provenance import process_gone

log = logging.getLogger(__name__)

_HASH_CHUNK = 64 << 20  # hash memory maps in slices: no full copy in RAM
_LIBC = ctypes.CDLL(None, use_errno=True)
_MADV_DONTNEED = 4  # Linux <sys/mman.h>


def file_backed(array: np.ndarray) -> bool:
    """Whether `array` is (a view of) a memory-mapped file."""
    obj: Any = array
    while obj is not None:
        if isinstance(obj, mmap.mmap) or getattr(obj, "_mmap", None) is not None:
            return True
        obj = getattr(obj, "base", None)
    return False


def release(view: np.ndarray) -> None:
    """Drop the pages of `view`, a contiguous slice of a memory-mapped file, from this process's
    resident memory once a pass has read or written them: the file (and the page cache) keeps
    them, a later read maps them again. A pass over a 6.5 GB array then holds one slice at a
    time. Arrays in anonymous memory are left alone (dropping their pages would zero them)."""
    if view.nbytes == 0 or not view.flags.c_contiguous or not file_backed(view):
        return
    start, page = view.ctypes.data, mmap.PAGESIZE
    first = -(-start // page) * page  # whole pages inside the view only
    last = (start + view.nbytes) // page * page
    if last > first:
        _LIBC.madvise(ctypes.c_void_p(first), ctypes.c_size_t(last - first), _MADV_DONTNEED)


def array_sha256(array: np.ndarray) -> str:
    """SHA-256 of an array's bytes (C order), with its dtype and shape."""
    digest = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    flat = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
    for start in range(0, len(flat), _HASH_CHUNK):
        digest.update(memoryview(flat[start : start + _HASH_CHUNK]))
        release(flat[start : start + _HASH_CHUNK])
    return digest.hexdigest()


# Entry files this process has checked, by identity: a screen loads the same image entry in every
# trial, and hashing a 6.5 GB array took seconds each time. A file written since (another inode,
# size or modification time) is checked again.
_verified: set[tuple[int, int, int, int]] = set()


def _identity(path: Path) -> tuple[int, int, int, int]:
    stat = path.stat()
    return stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns


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
            identity = _identity(array_path)
            if identity not in _verified:
                if array_sha256(array) != info["sha256"]:
                    raise DamagedEntryError("checksum mismatch")
                _verified.add(identity)
        # JSONDecodeError is a ValueError; a 0-byte array file raises EOFError.
        except (OSError, EOFError, ValueError, KeyError, TypeError) as err:
            log.warning("Cache entry %s is damaged (%s): rebuilding it.", array_path, err)
            self.discard(key)
            return None
        meta = info.get("meta", {})
        return array[: meta.get("rows", len(array))], meta

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
            self._remove_orphans(array_path)
            # The array first: a reader needs both files, so it never pairs new metadata
            # with a missing array.
            atomic_write(array_path, lambda f: np.save(f, np.ascontiguousarray(array)))
            atomic_write(meta_path, lambda f: f.write(json.dumps(info).encode()))
        except OSError as err:
            log.warning(
                "Cannot write the cache entry %s (%s): continuing without caching it. Point "
                "`cache.dir` at a writable folder to cache.",
                array_path,
                err,
            )

    def create(self, key: str, shape: tuple[int, ...], dtype: Any) -> PendingEntry | None:
        """A new entry the caller fills in place (a memory map of a private temporary file, so an
        array larger than memory never sits in it), then commits; None when the folder cannot
        be written (the caller keeps its array in memory instead)."""
        array_path, _ = self.paths(key)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._remove_orphans(array_path)
            fd, tmp = tempfile.mkstemp(
                dir=self.folder, prefix=f".{array_path.name}.{WRITER}.", suffix=".tmp"
            )
            os.close(fd)
            array = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)
        except OSError as err:
            log.warning(
                "Cannot write the cache entry %s (%s): keeping it in memory.", array_path, err
            )
            return None
        return PendingEntry(self, key, Path(tmp), array)

    def _remove_orphans(self, array_path: Path) -> None:
        """Delete the unfinished files of `array_path` whose writer on this host is gone: a
        decode killed by `kill -9` or the OOM killer left one as large as the entry (6.5 GB at
        product scale). Files of live writers, and of other hosts sharing the folder, stay."""
        for tmp in self.folder.glob(f".{array_path.name}.*.tmp"):
            # .<entry>.<host>.<pid>.<random>.tmp; a host name may hold dots, the rest never.
            parts = tmp.name[len(array_path.name) + 2 : -len(".tmp")].rsplit(".", 2)
            if len(parts) == 3 and process_gone(parts[0], parts[1]):
                log.info("Removing %s, left by a writer that was killed", tmp.name)
                tmp.unlink(missing_ok=True)

    def discard(self, key: str) -> None:
        for path in self.paths(key):
            path.unlink(missing_ok=True)


class PendingEntry:
    """An entry being filled: `array` (a writable memory map), then `commit` or `abandon`."""

    def __init__(self, store: ArrayStore, key: str, tmp: Path, array: np.memmap) -> None:
        self.store, self.key, self.tmp, self.array = store, key, tmp, array

    def commit(self, meta: dict[str, Any], rows: int | None = None) -> np.ndarray:
        """Make the filled array the entry under `key` (its first `rows` rows count, when the
        caller filled fewer than it made room for) and return it, memory-mapped copy-on-write
        as `load` returns entries. A failure to write leaves the entry absent (logged)."""
        array_path, meta_path = self.store.paths(self.key)
        if rows is not None:
            meta = {**meta, "rows": rows}
        self.array.flush()
        info = {
            "shape": list(self.array.shape),
            "dtype": self.array.dtype.str,
            "sha256": array_sha256(self.array),
            "meta": meta,
        }
        try:
            os.replace(self.tmp, array_path)
            _verified.add(_identity(array_path))  # hashed just above, from what was written
            atomic_write(meta_path, lambda f: f.write(json.dumps(info).encode()))
        except OSError as err:
            log.warning("Cannot write the cache entry %s (%s).", array_path, err)
            self.abandon()
            return self.array[: meta.get("rows", len(self.array))]
        array = np.load(array_path, mmap_mode="c", allow_pickle=False)
        return array[: meta.get("rows", len(array))]

    def abandon(self) -> None:
        self.tmp.unlink(missing_ok=True)
