"""Decode images once: files or in-memory pixels -> one (N, H, W, C) uint8 array at the run's size.

Every epoch, run and sweep condition then reads that array instead of decoding JPEGs again.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from fashion_sweeps import interrupts
from fashion_sweeps.data.array_store import release
from fashion_sweeps.progress import ProgressLines

log = logging.getLogger(__name__)

# Decoding in worker processes pays off only past a few hundred images.
PARALLEL_MIN_IMAGES = 256


def load_image(path: Path | BinaryIO, size: int, mode: str = "RGB") -> np.ndarray:
    """One image file (a path, or its bytes as a file object) as an (size, size, C) uint8 array,
    resized with bicubic filtering: the one decode of training, `predict` and the served model."""
    with Image.open(path) as img:
        # JPEG draft mode decodes at a reduced scale directly: much faster for small targets.
        img.draft(mode, (size, size))
        return as_array(resize_image(eight_bit(img).convert(mode), size))


def resize_image(img: Image.Image, size: int) -> Image.Image:
    return img.resize((size, size), Image.Resampling.BICUBIC)


def as_array(img: Image.Image) -> np.ndarray:
    array = np.asarray(img, dtype=np.uint8)
    return array[..., None] if array.ndim == 2 else array


def resize_like_files(images: np.ndarray, size: int) -> np.ndarray:
    """(N, H, W, C) uint8 images resized as `load_image` resizes a decoded file (PIL bicubic),
    for the served model's array inputs."""
    if images.shape[1:3] == (size, size):
        return images
    out = np.empty((len(images), size, size, images.shape[3]), dtype=np.uint8)
    for i, image in enumerate(images):
        grey = image.shape[2] == 1
        img = Image.fromarray(image[..., 0] if grey else image, "L" if grey else "RGB")
        out[i] = as_array(resize_image(img, size))
    return out


# Greyscale modes of more than 8 bits (16-bit PNGs open as I;16*, some as 32-bit I): PIL's
# convert() clips them at 255, which turned a 16-bit photo near-white.
WIDE_GREY_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def eight_bit(img: Image.Image) -> Image.Image:
    """`img` with a 16-bit greyscale range scaled to 8 bits (other modes as they are)."""
    if img.mode not in WIDE_GREY_MODES:
        return img
    wide = np.asarray(img, dtype=np.float64)
    return Image.fromarray(np.clip(np.rint(wide * (255 / 65535)), 0, 255).astype(np.uint8), "L")


def _decode_chunk(args: tuple[list[Path], int, str]) -> list[np.ndarray | str]:
    paths, size, mode = args
    out: list[np.ndarray | str] = []
    for path in paths:
        try:
            out.append(load_image(path, size, mode))
        except Image.DecompressionBombError as err:
            # Above Pillow's pixel limit: a damaged header or a hostile file, not a photo to train on.
            out.append("too_large_image")
            log.debug("cannot decode %s: %s", path, err)
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
            # Reason strings are short and stable: they are counted and logged per run.
            out.append("corrupt_image" if Path(path).exists() else "missing_image")
            log.debug("cannot decode %s: %s", path, err)
    return out


def _gather(
    parts: Iterable[list[np.ndarray | str]], total: int, out: np.ndarray
) -> tuple[np.ndarray, list[str | None]]:
    """The decoded chunks in order, each image written into the next free row of `out` as it
    arrives (never a list of images and then a stacked copy: one array's memory, not two), with
    a progress line every 30 s of a long decode. Returns the filled rows and, per path, None or
    why it was skipped."""
    progress = ProgressLines(log)
    reasons: list[str | None] = []
    filled = 0
    for part in parts:
        interrupts.check()
        before = filled
        for result in part:
            if isinstance(result, str):
                reasons.append(result)
            else:
                out[filled] = result
                filled += 1
                reasons.append(None)
        release(out[before:filled])  # written to a memory-mapped file: out of resident memory
        left = (time.perf_counter() - progress.start) / len(reasons) * (total - len(reasons))
        progress.update(f"Decoding images: {len(reasons)}/{total}", len(reasons), left)
    return out[:filled], reasons


def decoded_shape(images: int, size: int, mode: str) -> tuple[int, int, int, int]:
    return images, size, size, 1 if mode == "L" else 3


def decode_files(
    paths: list[Path],
    size: int,
    mode: str = "RGB",
    workers: int | None = None,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, list[str | None]]:
    """Decode files to one array (into `out`, (len(paths), size, size, C), when given: e.g. a
    memory-mapped cache entry). Returns the decodable images (in order: `out`'s leading rows)
    and, per input path, None when decoded or the reason it was skipped."""
    workers = workers if workers is not None else (os.cpu_count() or 1)
    chunk = max(1, min(512, len(paths) // (4 * max(1, workers)) or 1))
    jobs = [(paths[i : i + chunk], size, mode) for i in range(0, len(paths), chunk)]
    if out is None:
        out = np.empty(decoded_shape(len(paths), size, mode), dtype=np.uint8)
    if workers > 1 and len(paths) >= PARALLEL_MIN_IMAGES:
        with ProcessPoolExecutor(
            max_workers=workers,
            initializer=interrupts.worker_process,
            initargs=(os.getpid(),),
        ) as pool:
            return _gather(pool.map(_decode_chunk, jobs), len(paths), out)
    return _gather(map(_decode_chunk, jobs), len(paths), out)


def resize_pixels(pixels: np.ndarray, size: int) -> np.ndarray:
    """Resize an (N, H, W, C) uint8 array to (N, size, size, C), bicubic with antialiasing."""
    if pixels.shape[1] == size and pixels.shape[2] == size:
        return pixels
    import torch  # here, not at the top: `fashion-sweeps predict --help` needs no torch
    import torch.nn.functional as F

    out = np.empty((len(pixels), size, size, pixels.shape[3]), dtype=np.uint8)
    for start in range(0, len(pixels), 4096):
        # A copy: torch.from_numpy warns on a read-only array (a memory map, a request).
        batch = torch.from_numpy(np.array(pixels[start : start + 4096])).permute(0, 3, 1, 2).float()
        resized = F.interpolate(batch, size=(size, size), mode="bicubic", antialias=True)
        out[start : start + 4096] = resized.round().clamp(0, 255).byte().permute(0, 2, 3, 1)
    return out
