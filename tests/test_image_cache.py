"""The decode-once image cache: later runs read the stored arrays; changed data, a changed image
size or a damaged entry is rebuilt, never trusted; concurrent builders do not corrupt it."""

from __future__ import annotations

import logging
import multiprocessing
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fashion_sweeps.data.array_store import file_backed, release
from fashion_sweeps.data.cache import decode_cached
from fashion_sweeps.data.datamodule import _prepare
from fashion_sweeps.data.sources import read_clothing


@pytest.fixture
def paths(clothing_root: Path) -> list[Path]:
    # The reader lists one corrupt JPEG: its skip reason is cached with the pixels.
    return read_clothing(clothing_root).paths


def entry_files(cache: Path) -> list[Path]:
    return sorted((cache / "images").glob("*.npy"))


def test_second_decode_reads_the_cache(paths: list[Path], tmp_path: Path) -> None:
    cache = tmp_path / "c"
    first = decode_cached(paths, 16, "RGB", workers=1, cache_dir=cache)
    second = decode_cached(paths, 16, "RGB", workers=1, cache_dir=cache)
    assert (first.status, second.status) == ("miss", "hit")
    np.testing.assert_array_equal(first.pixels, second.pixels)
    assert second.reasons == first.reasons
    assert second.reasons.count("corrupt_image") == 1
    assert second.pixels.shape == (len(paths) - 1, 16, 16, 3)
    assert len(entry_files(cache)) == 1


def test_changed_file_or_size_builds_a_new_entry(paths: list[Path], tmp_path: Path) -> None:
    cache = tmp_path / "c"
    before = decode_cached(paths, 16, "RGB", workers=1, cache_dir=cache)
    assert decode_cached(paths, 20, "RGB", workers=1, cache_dir=cache).status == "miss"
    assert decode_cached(paths, 16, "L", workers=1, cache_dir=cache).status == "miss"

    Image.new("RGB", (24, 24), (255, 255, 255)).save(paths[0])  # new content, size, mtime
    stat = os.stat(paths[0])
    os.utime(paths[0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    after = decode_cached(paths, 16, "RGB", workers=1, cache_dir=cache)
    assert after.status == "miss"
    assert after.pixels[0].min() > 240  # the new white image, not the stale one
    np.testing.assert_array_equal(after.pixels[1:], before.pixels[1:])


@pytest.mark.parametrize("damage", ["truncate", "empty", "flip_byte", "bad_metadata"])
def test_damaged_entry_is_detected_and_rebuilt(
    paths: list[Path], tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    cache = tmp_path / "c"
    # A copy in memory: the entry is memory-mapped, and the damage below rewrites its file.
    good = np.array(decode_cached(paths, 16, "RGB", workers=1, cache_dir=cache).pixels)
    [array_file] = entry_files(cache)
    data = bytearray(array_file.read_bytes())
    if damage == "truncate":
        array_file.write_bytes(data[: len(data) // 2])
    elif damage == "empty":  # a 0-byte file: a full disk, or a copy that stopped at once
        array_file.write_bytes(b"")
    elif damage == "flip_byte":
        data[-100] ^= 0xFF  # same size, same header: only the checksum can tell
        array_file.write_bytes(bytes(data))
    else:
        array_file.with_suffix(".json").write_text("{not json")
    with caplog.at_level(logging.WARNING):
        rebuilt = decode_cached(paths, 16, "RGB", workers=1, cache_dir=cache)
    assert rebuilt.status == "miss"
    assert "damaged" in caplog.text
    np.testing.assert_array_equal(rebuilt.pixels, good)
    assert decode_cached(paths, 16, "RGB", workers=1, cache_dir=cache).status == "hit"


def test_a_process_checks_an_entry_once_and_a_rewritten_entry_again(
    paths: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every trial of a screen loads the same image entry: hashing all of it (6.5 GB at product
    scale) each time cost seconds a trial. Checked when written or first loaded, then trusted
    until the file changes."""
    from fashion_sweeps.data import array_store

    hashed: list[int] = []
    real = array_store.array_sha256
    monkeypatch.setattr(array_store, "array_sha256", lambda a: hashed.append(a.nbytes) or real(a))
    cache = tmp_path / "c"
    assert decode_cached(paths, 16, "RGB", workers=1, cache_dir=cache).status == "miss"
    assert len(hashed) == 1  # the entry's checksum, computed as it was written
    for _ in range(2):
        assert decode_cached(paths, 16, "RGB", workers=1, cache_dir=cache).status == "hit"
    assert len(hashed) == 1
    [array_file] = entry_files(cache)
    data = bytearray(array_file.read_bytes())
    data[-100] ^= 0xFF
    array_file.write_bytes(bytes(data))
    assert decode_cached(paths, 16, "RGB", workers=1, cache_dir=cache).status == "miss"


def test_the_unfinished_file_of_a_killed_decode_is_removed(
    paths: list[Path], tmp_path: Path
) -> None:
    """kill -9 or the OOM killer during a decode left its unfinished entry file (as large as
    the images: 6.5 GB at product scale) for good. The next writer of that entry removes it;
    the file of a live writer is left alone."""
    import socket
    import subprocess
    import sys

    from fashion_sweeps.data.cache import files_fingerprint

    folder = tmp_path / "c" / "images"
    folder.mkdir(parents=True)
    name = f"{files_fingerprint(paths, 16, 'RGB')}.npy"
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    host = socket.gethostname()
    killed = folder / f".{name}.{host}.{int(gone.stdout)}.abc123.tmp"
    live = folder / f".{name}.{host}.{os.getpid()}.def456.tmp"
    for path in (killed, live):
        path.write_bytes(b"\0" * 1000)
    decoded = decode_cached(paths, 16, "RGB", workers=1, cache_dir=tmp_path / "c")
    assert decoded.status == "miss"
    assert not killed.exists() and live.exists()
    assert decode_cached(paths, 16, "RGB", workers=1, cache_dir=tmp_path / "c").status == "hit"


def test_unwritable_cache_still_returns_the_images(
    paths: list[Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    with caplog.at_level(logging.WARNING):
        result = decode_cached(paths, 16, "RGB", workers=1, cache_dir=blocked)
    assert result.pixels.shape[0] == len(paths) - 1
    assert "Cannot write the cache entry" in caplog.text


def _build(args: tuple[list[Path], Path, object]) -> bytes:
    paths, cache, barrier = args
    barrier.wait()  # both processes decode and publish the same entry at the same moment
    return decode_cached(paths, 16, "RGB", workers=1, cache_dir=cache).pixels.tobytes()


def test_two_processes_building_at_once_leave_one_valid_entry(
    paths: list[Path], tmp_path: Path
) -> None:
    cache = tmp_path / "c"
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Manager().Barrier(2)
    with ctx.Pool(2) as pool:
        results = pool.map(_build, [(paths, cache, barrier)] * 2)
    assert results[0] == results[1]
    assert len(entry_files(cache)) == 1
    assert not list((cache / "images").glob(".*tmp"))  # no temporary file left behind
    reread = decode_cached(paths, 16, "RGB", workers=1, cache_dir=cache)
    assert reread.status == "hit" and reread.pixels.tobytes() == results[0]


def test_prepared_data_from_the_cache_is_the_same(make_cfg, clothing_root: Path, tmp_path) -> None:
    cfg = make_cfg(
        "dataset=clothing", f"dataset.root={clothing_root}", "dataset.image_size=16"
    ).dataset
    first = _prepare(cfg, split_seed=0, cache_dir=tmp_path / "c")
    second = _prepare(cfg, split_seed=0, cache_dir=tmp_path / "c")
    assert (first.image_cache, second.image_cache) == ("miss", "hit")
    np.testing.assert_array_equal(first.pixels, second.pixels)
    np.testing.assert_array_equal(first.targets, second.targets)
    np.testing.assert_array_equal(first.split, second.split)
    assert first.skipped == second.skipped and first.skipped["corrupt_image"] == 1
    assert first.fingerprint == second.fingerprint


def test_a_miss_is_decoded_into_the_entry_it_becomes(paths: list[Path], tmp_path: Path) -> None:
    """The pixels a miss returns are the stored entry, memory-mapped (not a copy in memory), with
    the undecodable files' rows left out; a hit returns the same rows."""
    cache = tmp_path / "c"
    in_memory = decode_cached(paths, 16, "RGB", workers=1, cache_dir=None)
    miss = decode_cached(paths, 16, "RGB", workers=1, cache_dir=cache)
    hit = decode_cached(paths, 16, "RGB", workers=1, cache_dir=cache)
    assert file_backed(miss.pixels) and file_backed(hit.pixels)
    assert not file_backed(in_memory.pixels)
    for decoded in (miss, hit):
        assert decoded.pixels.shape == in_memory.pixels.shape == (len(paths) - 1, 16, 16, 3)
        np.testing.assert_array_equal(decoded.pixels, in_memory.pixels)
    assert not list((cache / "images").glob(".*.tmp"))  # no temporary file left behind


def test_released_pages_of_a_mapped_file_read_back_unchanged(tmp_path: Path) -> None:
    stored = np.lib.format.open_memmap(tmp_path / "a.npy", "w+", np.uint8, (64, 4096))
    stored[:] = np.arange(64, dtype=np.uint8)[:, None]
    stored.flush()
    array = np.load(tmp_path / "a.npy", mmap_mode="c")
    release(array[:32])
    np.testing.assert_array_equal(array[:, 0], np.arange(64))
    in_memory = np.ones((64, 4096), np.uint8)
    release(in_memory)  # anonymous memory is never dropped: that would zero it
    assert in_memory.min() == 1
