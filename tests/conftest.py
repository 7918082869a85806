"""Fixtures: tiny data sets written in each format's real on-disk layout, and composed configs."""

from __future__ import annotations

import contextlib
import csv
import gzip
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict
from PIL import Image

from fashion_sweeps.config import CONF_DIR

CLASSES = ["Dress", "Pants", "Shoes"]


def class_image(label_index: int, rng: np.random.Generator, size: int = 24) -> Image.Image:
    """An RGB image whose colour depends on its class, so tiny models can learn something."""
    base = np.zeros((size, size, 3), dtype=np.uint8)
    base[..., label_index % 3] = 200
    noise = rng.integers(0, 40, size=base.shape, dtype=np.uint8)
    return Image.fromarray(base + noise)


def write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    header += b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def fashion_sweeps(
    cwd: Path, *args: str, check: bool = True, module: str = "fashion_sweeps.cli"
) -> subprocess.CompletedProcess:
    """`fashion-sweeps ARGS` as a user runs it (or `python -m <module> ARGS`: Hydra's own entry
    point is `fashion_sweeps.train`), in a subprocess from `cwd`, never reporting to a tracking
    server of the user's; with `check`, a non-zero exit fails with its output."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    result = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"exit {result.returncode}\n{result.stdout}\n{result.stderr[-6000:]}")
    return result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_healthy(url: str, proc: subprocess.Popen, seconds: float) -> None:
    """Poll the server at `url` until its /health answers. A server not listening yet, or too
    busy starting to answer in time, is waited for; one that exits or misses the deadline is
    stopped (its process group) and fails the test with what it printed."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            if requests.get(f"{url}/health", timeout=10).ok:
                return
        except requests.RequestException:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            printed = proc.stderr.read().decode()[-2000:] if proc.stderr else ""
            pytest.fail(f"the server at {url} did not come up: {printed}")
        time.sleep(0.5)


def output(result: subprocess.CompletedProcess) -> str:
    """Everything a command printed (Hydra logs to stdout, Python to stderr)."""
    return result.stdout + result.stderr


def write_fmnist(root: Path) -> Path:
    """Four IDX gz files: 60 train and 30 test 28x28 images over the 10 classes."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    for prefix, n in (("train", 60), ("t10k", 30)):
        labels = np.arange(n) % 10
        images = rng.integers(0, 50, size=(n, 28, 28)).astype(np.uint8)
        for i, label in enumerate(labels):  # a bright band whose row depends on the class
            images[i, 2 * label : 2 * label + 3, :] = 250
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return root


def write_clothing(root: Path, per_class: int, seed: int) -> Path:
    """images.csv + images/<id>.jpg in the clothing data set's layout: `per_class` photos of
    each of CLASSES, every one with its row (clothing_root has the faulty ones)."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    rows = []
    for c, label in enumerate(CLASSES):
        for i in range(per_class):
            image_id = f"{label.lower()}-{i:02d}"
            class_image(c, rng).save(root / "images" / f"{image_id}.jpg")
            rows.append((image_id, i, label, "False"))
    with (root / "images.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "sender_id", "label", "kids"])
        writer.writerows(rows)
    return root


@pytest.fixture(scope="session")
def tiny_clothing() -> tuple[str, ...]:
    """Overrides for a clothing run a test can afford: 16 px images in batches of 8, a CNN 4
    channels wide (add `dataset.root=...`)."""
    return (
        "dataset=clothing",
        "dataset.image_size=16",
        "dataset.decode_workers=1",
        "dataset.batch_size=8",
        "backbone=simple_cnn",
        "backbone.width=4",
    )


@pytest.fixture
def fmnist_root(tmp_path: Path) -> Path:
    """Four IDX gz files: 60 train and 30 test 28x28 images over the 10 classes."""
    return write_fmnist(tmp_path / "fashion_mnist")


@pytest.fixture
def clothing_root(tmp_path: Path) -> Path:
    """images.csv + images/<id>.jpg: 3 classes x 8 photos, one excluded label ('Skip'), one row
    whose image is missing, one corrupt JPEG and one photo without a row."""
    rng = np.random.default_rng(1)
    root = tmp_path / "clothing"
    (root / "images").mkdir(parents=True)
    rows = []
    for c, label in enumerate(CLASSES):
        for i in range(8):
            image_id = f"{label.lower()}-{i:02d}"
            class_image(c, rng).save(root / "images" / f"{image_id}.jpg")
            rows.append((image_id, 100 + i, label, "False"))
    class_image(0, rng).save(root / "images" / "skip-00.jpg")
    rows.append(("skip-00", 1, "Skip", "False"))
    rows.append(("gone-00", 2, "Dress", "False"))  # no such image
    (root / "images" / "broken-00.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    rows.append(("broken-00", 3, "Pants", "False"))
    class_image(1, rng).save(root / "images" / "orphan-00.jpg")  # no row
    with (root / "images.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "sender_id", "label", "kids"])
        writer.writerows(rows)
    return root


@pytest.fixture
def product_root(tmp_path: Path) -> Path:
    """styles.csv + images/<id>.jpg, with unquoted commas inside productDisplayName as in the
    real file, and one rare article type below min_count."""
    rng = np.random.default_rng(2)
    root = tmp_path / "fashion_product"
    (root / "images").mkdir(parents=True)
    header = "id,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,productDisplayName"
    lines = [header]
    kinds = [("Apparel", "Topwear", "Tshirts"), ("Footwear", "Shoes", "Casual Shoes")]
    image_id = 1000
    for c, (master, sub, article) in enumerate(kinds):
        for i in range(8):
            image_id += 1
            class_image(c, rng).save(root / "images" / f"{image_id}.jpg")
            name = f"Brand Men, Style {i}, Blue" if i % 2 else f"Brand Men Style {i}"
            lines.append(f"{image_id},Men,{master},{sub},{article},Blue,Fall,2012,Casual,{name}")
    image_id += 1
    class_image(2, rng).save(root / "images" / f"{image_id}.jpg")
    lines.append(f"{image_id},Women,Accessories,Bags,Waist Pouch,Black,Fall,2012,Casual,Pouch")
    (root / "styles.csv").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture
def folder_root(tmp_path: Path) -> Path:
    """root/{train,validation,test}/<class>/*.png."""
    rng = np.random.default_rng(3)
    root = tmp_path / "folder"
    for split, n in (("train", 6), ("validation", 2), ("test", 2)):
        for c, label in enumerate(CLASSES):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(n):
                class_image(c, rng).save(folder / f"{i}.png")
    return root


@pytest.fixture
def make_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    """Compose the real config tree with overrides; tracking and outputs go to tmp_path."""

    def _make(*overrides: str) -> DictConfig:
        with initialize_config_dir(str(CONF_DIR)):
            cfg = compose(
                "config",
                overrides=[
                    f"tracking.dir={tmp_path / 'mlruns'}",
                    "trainer.progress=lines",
                    *overrides,
                ],
            )
        with open_dict(cfg):
            cfg.output_dir = str(tmp_path / "out")
        return cfg

    return _make


@pytest.fixture(autouse=True)
def _isolated_tracking(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never write to a user's tracking server or the project's own mlruns/, and a
    registry URI one test made global (predict, the report) does not reach the next."""
    from mlflow.tracking._model_registry import utils as registry

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    monkeypatch.setattr(registry, "_registry_uri", None)


@pytest.fixture(autouse=True)
def _isolated_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Each test gets an empty disk cache (conf/cache/), subprocesses included."""
    monkeypatch.setenv("FASHION_SWEEPS_CACHE", str(tmp_path / "cache"))


@contextlib.contextmanager
def mounted(target: Path, *options: str) -> Iterator[Path]:
    """`target` as a mount point (`mount options...`), unmounted after; skips the test where
    this user may not mount (root ignores file modes, so only a mount makes a folder read-only
    or small for it)."""
    target.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", *options, str(target)], capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount here ({done.stderr.strip()})")
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False)


@pytest.fixture
def read_only_copy(tmp_path: Path) -> Callable[[Path], Path]:
    """A read-only view of a folder: `read_only_copy(folder)` is the same files, unwritable
    even for root (a read-only bind mount)."""
    with contextlib.ExitStack() as stack:

        def _view(folder: Path) -> Path:
            view = tmp_path / f"read_only_{folder.name}"
            stack.enter_context(mounted(view, "--bind", str(folder)))
            remount = ["mount", "-o", "remount,bind,ro", str(view)]
            if subprocess.run(remount, capture_output=True).returncode:
                pytest.skip("cannot remount read-only here")
            return view

        yield _view


@pytest.fixture
def small_disk(tmp_path: Path) -> Path:
    """A 2 MB file system (tmpfs) to fill: a full disk without filling the machine's."""
    with mounted(tmp_path / "small_disk", "-t", "tmpfs", "-o", "size=2m", "tmpfs") as disk:
        yield disk
