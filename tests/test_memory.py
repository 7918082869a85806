"""Memory that does not grow with the data set: a frozen run streams its images from the
memory-mapped image cache through the backbone, so ten times the photos cost next to nothing."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import CLASSES, class_image

SIZE = 128


def write_photos(root: Path, count: int) -> Path:
    """`count` photos in the clothing data set's layout (images.csv + images/<id>.jpg)."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    rows = []
    for i in range(count):
        label = i % len(CLASSES)
        class_image(label, rng, size=SIZE).save(root / "images" / f"{i}.jpg", quality=80)
        rows.append((str(i), i, CLASSES[label], "False"))
    with (root / "images.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "sender_id", "label", "kids"])
        writer.writerows(rows)
    return root


def peak_rss_bytes(args: list[str], cwd: Path) -> int:
    """Peak resident memory of one `fashion-sweeps` process (its own, as `time -v` gives it)."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "fashion_sweeps.cli", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, proc.stderr.read().decode()[-3000:]
    proc.stderr.close()
    return usage.ru_maxrss * 1024


@pytest.mark.slow  # two whole runs in their own processes, about a minute: `make test-slow`
def test_a_frozen_runs_peak_memory_does_not_grow_with_the_image_count(tmp_path: Path) -> None:
    peaks = {}
    for count in (200, 2000):
        root = write_photos(tmp_path / f"photos-{count}", count)
        peaks[count] = peak_rss_bytes(
            [
                "train",
                "dataset=clothing",
                f"dataset.root={root}",
                f"dataset.image_size={SIZE}",
                "dataset.batch_size=64",
                "backbone=efficientnet_lite0",
                "backbone.freeze=true",
                "trainer.max_epochs=1",
                "tracking.log_model=false",
                "tracking.plots=false",
                "tracking.system_metrics_s=null",
                f"tracking.dir={tmp_path / 'mlruns'}",
                f"hydra.run.dir={tmp_path / f'run-{count}'}",
            ],
            tmp_path,
        )
    images_bytes = (2000 - 200) * SIZE * SIZE * 3  # 88 MB more decoded pixels
    grown = peaks[2000] - peaks[200]
    assert grown < 0.25 * images_bytes, f"peak RSS grew {grown / 2**20:.0f} MiB: {peaks}"
