"""The benchmark's workspace: its data (a subset of the real clothing photos when they are here,
else a synthetic set in the same on-disk format, read by the real readers) and its configs.
"""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path

import numpy as np
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict
from PIL import Image

from fashion_sweeps.config import CONF_DIR, project_dir

log = logging.getLogger(__name__)

# Labels the clothing config leaves out (conf/dataset/clothing.yaml `exclude`).
EXCLUDED = {"Not sure", "Other", "Skip", "Blouse"}
SYNTHETIC_CLASSES = ["Dress", "Hat", "Pants", "Shoes", "Shorts", "T-Shirt"]


def real_clothing() -> Path | None:
    """`$FASHION_SWEEPS_BENCH_DATA`, else the shared `../shared/data/clothing` beside the project."""
    candidates = [
        os.environ.get("FASHION_SWEEPS_BENCH_DATA"),
        project_dir().parent / "shared" / "data" / "clothing",
    ]
    for candidate in candidates:
        if candidate and (Path(candidate) / "images.csv").is_file():
            return Path(candidate).resolve()
    return None


def clothing_subset(source: Path, target: Path, images: int) -> tuple[int, int]:
    """The first `images` usable rows of `source` (labelled, not excluded, photo present; 0:
    all of them), as `target/images.csv` + symlinks in `target/images`. Returns (rows written,
    usable rows)."""
    limit = images or float("inf")
    (target / "images").mkdir(parents=True, exist_ok=True)
    rows, usable = [], 0
    with (source / "images.csv").open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            photo = source / "images" / f"{row['image']}.jpg"
            if not (row["label"] and row["label"] not in EXCLUDED and photo.is_file()):
                continue
            usable += 1
            if len(rows) < limit:
                rows.append(row)
                link = target / "images" / photo.name
                if not link.exists():
                    link.symlink_to(photo)
    _write_csv(target, rows)
    return len(rows), usable


def synthetic_clothing(target: Path, images: int, seed: int = 0) -> int:
    """`images` JPEG photos of about the real size (400x533), whose colour and stripes depend on
    the class, so that a frozen random backbone still separates them a little."""
    rng = np.random.default_rng(seed)
    (target / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(images):
        label = i % len(SYNTHETIC_CLASSES)
        pixels = rng.integers(0, 60, size=(533, 400, 3), dtype=np.uint8)
        pixels[..., label % 3] += 120
        pixels[:, :: 8 + 4 * label] = 250
        image_id = f"synthetic-{i:05d}"
        Image.fromarray(pixels).save(target / "images" / f"{image_id}.jpg", quality=90)
        rows.append(
            {
                "image": image_id,
                "sender_id": "0",
                "label": SYNTHETIC_CLASSES[label],
                "kids": "False",
            }
        )
    _write_csv(target, rows)
    return len(rows)


def _write_csv(target: Path, rows: list[dict[str, str]]) -> None:
    with (target / "images.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(
            f, fieldnames=["image", "sender_id", "label", "kids"], extrasaction="ignore"
        )
        writer.writeheader()
        writer.writerows(rows)


def bench_data(target: Path, images: int, synthetic: bool = False) -> tuple[Path, str, int, int]:
    """A clothing-format folder of `images` photos (0: all the real ones) under `target`, what
    it is made of, how many photos it holds and how many the whole data set has (for
    projections)."""
    real = None if synthetic else real_clothing()
    if real is not None:
        n, usable = clothing_subset(real, target, images)
        return target, f"clothing ({real}): first {n} of {usable} usable photos", n, usable
    if images == 0:
        raise ValueError(
            "--images 0 (all the photos) needs the clothing photos: $FASHION_SWEEPS_BENCH_DATA "
            "or ../shared/data/clothing beside the project; give a number for synthetic ones"
        )
    n = synthetic_clothing(target, images)
    if not synthetic:
        log.warning("No clothing data found: benchmarking on %d synthetic photos", n)
    return target, f"synthetic: {n} JPEG photos 400x533", n, n


def bench_cfg(
    root: Path, work: Path, run_name: str, *overrides: str, cache: Path | None = None
) -> DictConfig:
    """The real config tree on the bench data, tracked and cached inside `work` (`cache`: another
    cache folder); the run writes into its own output folder (a folder holds one run)."""
    with initialize_config_dir(str(CONF_DIR)):
        cfg = compose(
            "config",
            overrides=[
                "dataset=clothing",
                f"dataset.root={root}",
                f"tracking.dir={work / 'mlruns'}",
                "tracking.experiment=bench",
                f"tracking.run_name={run_name}",
                f"cache.dir={cache or work / 'cache'}",
                "trainer.progress=lines",
                *overrides,
            ],
        )
    with open_dict(cfg):
        cfg.output_dir = str(work / "runs" / run_name)
    return cfg
