"""Bench 6 (`--only memory`): peak resident memory of a frozen screen condition from an empty
cache, at each data size given, side by side (the product-scale issue: memory that does not grow
with the data set).

Each size runs its screen recipe's first condition as users do, `fashion-sweeps train
experiment=<recipe> dataset.root=<root>` (frozen Lite0 at 224 px: decode into the memory-mapped
image cache, OpenVINO features, one epoch of the head, the test), in a child process with a
fresh cache and store; the child's peak RSS comes from the kernel (`wait4`), as
`/usr/bin/time -v` reports it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from fashion_sweeps import markdown

# Data set name (conf/dataset/) -> the screen recipe that reads it.
RECIPES = {"clothing": "clothing_screen", "fashion_product": "product_screen"}
IMAGES = re.compile(r"Data \S+: (\d+) images")


def parse_roots(text: str) -> dict[str, Path]:
    """`clothing=PATH,fashion_product=PATH` -> {name: path}; the names RECIPES knows."""
    roots = {}
    for item in filter(None, text.split(",")):
        name, _, path = item.partition("=")
        if name not in RECIPES or not path:
            raise ValueError(
                f"--memory-roots {item!r}: give NAME=PATH with NAME one of {sorted(RECIPES)}"
            )
        roots[name] = Path(path).expanduser()
    return roots


def command(name: str, root: Path, work: Path) -> list[str]:
    return [
        sys.executable, "-m", "fashion_sweeps.cli", "train",
        f"experiment={RECIPES[name]}", f"dataset.root={root}",
        "backbone=efficientnet_lite0", "trainer.max_epochs=1", "trainer.progress=lines",
        f"cache.dir={work / 'cache'}", f"tracking.dir={work / 'mlruns'}",
        "tracking.log_model=false", "tracking.plots=false", f"hydra.run.dir={work / 'run'}",
    ]  # fmt: skip


def peak_rss(cmd: list[str], log: Path) -> tuple[int, float, int]:
    """Run `cmd`; (its exit status, wall seconds, peak RSS in bytes: Linux's ru_maxrss is KiB)."""
    start = time.perf_counter()
    with log.open("w") as out:
        child = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
    return os.waitstatus_to_exitcode(status), time.perf_counter() - start, usage.ru_maxrss * 1024


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def logged_image_size(store: Path) -> int | None:
    """The resolved `dataset.image_size` of the store's one run (None when no run was opened)."""
    from fashion_sweeps.tracking.runs import store_client

    if not (store / "mlflow.db").is_file():
        return None
    client = store_client(f"sqlite:///{store / 'mlflow.db'}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, max_results=1)
    size = runs[0].data.params.get("dataset.image_size") if runs else None
    return int(size) if size else None


def memory_bench(roots: dict[str, Path], work: Path) -> list[dict[str, Any]]:
    """One row per data size: images, peak RSS, wall time, image cache on disk, load."""
    rows = []
    for name, root in roots.items():
        folder = work / "memory" / name
        folder.mkdir(parents=True, exist_ok=True)
        log = folder / "train.log"
        before = os.getloadavg()
        code, seconds, rss = peak_rss(command(name, root, folder), log)
        found = IMAGES.search(log.read_text(errors="replace"))
        rows.append(
            {
                "dataset": name,
                "recipe": RECIPES[name],
                "images": int(found.group(1)) if found else None,
                "image_size": logged_image_size(folder / "mlruns"),
                "exit_code": code,
                "peak_rss_bytes": rss,
                "seconds": seconds,
                "cache_bytes": folder_bytes(folder / "cache") if (folder / "cache").exists() else 0,
                "load_before": list(before),
                "load_after": list(os.getloadavg()),
                "log": str(log),
            }
        )
    return rows


HEADER = ("data set", "images", "image size", "peak RSS", "x first", "wall", "image cache on disk")


def memory_table(rows: list[dict[str, Any]]) -> list[str]:
    """The rows as Markdown, the first size that ran as the reference of the ratios."""
    ran = [r for r in rows if r["exit_code"] == 0]
    if not rows:
        return []
    gib = 1024**3
    cells = []
    for r in rows:
        load = f"{r['load_before'][0]:.1f} -> {r['load_after'][0]:.1f}"
        if r["exit_code"] != 0:
            failed = f"failed (exit {r['exit_code']}): see {r['log']}"
            cells.append([r["dataset"], failed, *[""] * (len(HEADER) - 2), load])
            continue
        cells.append(
            [
                r["dataset"],
                f"{r['images']:,}" if r["images"] else "?",
                f"{r['image_size']} px" if r["image_size"] else "?",
                f"{r['peak_rss_bytes'] / gib:.2f} GB",
                f"{r['peak_rss_bytes'] / ran[0]['peak_rss_bytes']:.2f}x",
                f"{r['seconds']:.0f} s",
                f"{r['cache_bytes'] / gib:.2f} GB",
                load,
            ]
        )
    title = ["## Peak memory of a frozen screen condition, from an empty cache", ""]
    return title + markdown.table([*HEADER, "load"], cells, right=range(1, len(HEADER)))
