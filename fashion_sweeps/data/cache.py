"""Decode-once image cache  (conf/cache/): decoded uint8 arrays on disk, shared by runs.

Decoding and resizing JPEGs happens once per (file list, image size, colour mode); later runs,
sweep conditions and processes memory-map the stored array. The key is a fingerprint of every
file's path, size and modification time plus the preprocessing, so changed data or a changed
image size builds a new entry instead of reusing a stale one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fashion_sweeps.data.array_store import ArrayStore, array_sha256
from fashion_sweeps.data.decode import decode_files, decoded_shape

log = logging.getLogger(__name__)

# Bump when `decode.load_image` changes what it produces: old entries then stop matching.
DECODE_VERSION = 2  # 2: 16-bit greyscale scaled to 8 bits, not clipped


@dataclass
class DecodedImages:
    """Pixels of the decodable files, per file None or why it was skipped, and the cache's part:
    `fingerprint` of the inputs, `status` hit / miss / off, `seconds` spent decoding or loading."""

    pixels: np.ndarray
    reasons: list[str | None]
    fingerprint: str
    status: str
    seconds: float


def files_fingerprint(paths: list[Path], size: int, mode: str) -> str:
    """SHA-256 over each file's absolute path, size and mtime, in order, and the preprocessing."""
    digest = hashlib.sha256(json.dumps([DECODE_VERSION, size, mode]).encode())
    for path in paths:
        try:
            stat = os.stat(path)
            facts = f"{stat.st_size}:{stat.st_mtime_ns}"
        except OSError:
            facts = "missing"
        digest.update(f"{os.path.abspath(path)}\0{facts}\n".encode())
    return digest.hexdigest()


def pixels_fingerprint(pixels: np.ndarray) -> str:
    """The fingerprint of a data set already in memory (e.g. Fashion-MNIST): its bytes."""
    return array_sha256(pixels)


def decode_cached(
    paths: list[Path],
    size: int,
    mode: str = "RGB",
    workers: int | None = None,
    cache_dir: str | Path | None = None,
) -> DecodedImages:
    """`decode.decode_files`, through the on-disk cache under `cache_dir/images` (None: off)."""
    start = time.perf_counter()
    fingerprint = files_fingerprint(paths, size, mode)
    store = ArrayStore(Path(cache_dir) / "images") if cache_dir else None
    if store is not None:
        entry = store.load(fingerprint)
        if entry is not None:
            pixels, meta = entry
            seconds = time.perf_counter() - start
            log.info(
                "Image cache hit: %d images from %s in %.1fs", len(pixels), store.folder, seconds
            )
            return DecodedImages(pixels, meta["reasons"], fingerprint, "hit", seconds)
    # Decoded straight into the new entry's file: memory holds a slice, not the data set.
    pending = (
        store.create(fingerprint, decoded_shape(len(paths), size, mode), np.uint8)
        if store
        else None
    )
    pixels, reasons = decode_files(paths, size, mode, workers, pending.array if pending else None)
    if pending is not None:
        meta = {"reasons": reasons, "size": size, "mode": mode}
        pixels = pending.commit(meta, rows=len(pixels))
    seconds = time.perf_counter() - start
    status = "miss" if store is not None else "off"
    log.info("Decoded %d images in %.1fs (image cache %s)", len(paths), seconds, status)
    return DecodedImages(pixels, reasons, fingerprint, status, seconds)
