"""`make bench ARGS="--size real"` or `ARGS="--images N --image-size PX ..."` (`python -m
benchmarks.run ...`): run the benches side by side on the same data and write
benchmarks/results.json and results.md (also printed). Named sizes: sizes.py.

Results are written after every bench, so an interrupted or failed bench keeps what it measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from benchmarks import engines, memory, report, sizes
from benchmarks.finetune import finetune_bench
from benchmarks.loading import loading_bench
from benchmarks.profile import profile_trial
from benchmarks.screen import ScreenSettings, image_size_override, screen_bench
from benchmarks.workspace import bench_cfg, bench_data

log = logging.getLogger(__name__)

# Results are written beside the benchmarks' code (results.json, results.md; git ignores them).
BENCH_DIR = Path(__file__).resolve().parent


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description="Measure the screen, data-loading, fine-tuning, per-trial overhead and "
        "inference-engine figures side by side (see README, `make bench`).",
    )
    sizes.add_size_arguments(parser)
    parser.add_argument("--heads", default="fc,batchnorm", help="the screen's heads")
    parser.add_argument("--optimizers", default="adam,sgd", help="the screen's optimizers")
    parser.add_argument("--lrs", default="0.1,0.01,0.001", help="the screen's learning rates")
    parser.add_argument("--epochs", type=int, default=3, help="screen epochs per condition")
    parser.add_argument("--load-epochs", type=int, default=3, help="passes in the data bench")
    parser.add_argument("--finetune-backbone", default="efficientnet_lite0")
    parser.add_argument("--repeats", type=int, default=2, help="fine-tuning attempts per side")
    parser.add_argument(
        "--engine-image-size",
        type=int,
        help="engines bench: this many pixels instead of each backbone's native resolution and "
        f"the fine-tuning steps' {engines.FINETUNE_SIZE} px (quick checks)",
    )
    parser.add_argument(
        "--compile-timeout",
        type=float,
        default=engines.COMPILE_TIMEOUT_S,
        help="engines bench: seconds torch.compile may take before it is stopped (0: not run)",
    )
    parser.add_argument(
        "--engine-rounds",
        type=int,
        default=engines.ROUNDS,
        help="engines bench: interleaved rounds per side (the best counts)",
    )
    parser.add_argument(
        "--engine-steps",
        type=int,
        default=engines.FINETUNE_STEPS,
        help="engines bench: timed fine-tuning steps per round (after one untimed)",
    )
    parser.add_argument(
        "--memory-roots",
        default="clothing=../shared/data/clothing",
        metavar="NAME=PATH,...",
        help="memory bench: the data sets whose frozen screen condition it runs, e.g. "
        "clothing=../shared/data/clothing,fashion_product=data/fashion_product",
    )
    parser.add_argument("--out", type=Path, default=BENCH_DIR, help="results folder")
    parser.add_argument(
        "--synthetic", action="store_true", help="synthetic photos even when the real ones are here"
    )
    parser.add_argument("--workdir", type=Path, help="scratch folder (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    return parser


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line, with the flags it leaves out taken from its `--size`."""
    parser = _parser()
    args = sizes.resolve(parser, parser.parse_args(argv))
    if args.load_epochs < 2:
        parser.error("--load-epochs must be at least 2: the data bench times epochs 2+")
    engines.check_flags(parser, args)
    try:
        args.memory_roots = memory.parse_roots(args.memory_roots)
    except ValueError as err:
        parser.error(str(err))
    return args


def settings(
    args: argparse.Namespace, work: Path, data: str, images: int, available: int
) -> dict[str, Any]:
    """What the results were measured on: data, sizes, grid, machine and its load."""
    return {
        "size": args.size,
        "data": data,
        "images": images,
        "available_images": available,
        "image_size": args.image_size,
        "backbone": args.backbone,
        "grid": {"head": args.heads, "optimizer": args.optimizers, "lr": args.lrs},
        "uncached_conditions_per_backbone": args.uncached_conditions or "all",
        "epochs": args.epochs,
        "finetune_backbone": args.finetune_backbone,
        "engine_backbones": args.engine_backbones,
        "engine_images": args.engine_images,
        "engine_image_size": args.engine_image_size or "native",
        "screen_engines": args.screen_engines,
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "when": datetime.now().isoformat(timespec="seconds"),
        "workdir": str(work),
        # Other processes' load makes every figure noisy: recorded to judge the run by.
        "load_average_before": os.getloadavg(),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    start = time.perf_counter()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="fashion-sweeps-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    root, described, images, available = bench_data(work / "data", args.images, args.synthetic)
    results: dict[str, Any] = {"settings": settings(args, work, described, images, available)}
    labelled = not described.startswith("synthetic")

    def save() -> None:
        results["total_s"] = time.perf_counter() - start
        results["settings"]["load_average_after"] = os.getloadavg()
        report.write(results, args.out)

    try:
        run_benches(args, root, work, results, save, labelled)
    finally:
        save()
        if not args.keep and args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    return results


def run_benches(
    args: argparse.Namespace,
    root: Path,
    work: Path,
    results: dict[str, Any],
    save: Callable[[], None],
    labelled: bool = True,
) -> None:
    """The benches `--only` names, into `results`, saved after each (`labelled`: real photos,
    whose labels are clothing)."""
    only = args.only.split(",")
    size = f"dataset.image_size={image_size_override(args.image_size)}"
    if "memory" in only:
        log.info("Bench 6: peak memory of a frozen screen condition at each data size")
        results["memory"] = memory.memory_bench(args.memory_roots, work)
        save()
    if "engines" in only:
        log.info("Bench 5: inference engines and fine-tuning speed-ups")
        setup = engines.EngineSettings(
            root,
            work / "engines",
            args.engine_backbones.split(","),
            args.engine_images,
            args.engine_image_size,
            labelled,
            args.finetune_backbone,
            args.compile_timeout,
            args.engine_rounds,
            args.engine_steps,
        )
        setup.work.mkdir(parents=True, exist_ok=True)
        engines.engines_bench(setup, results, save)
        save()
    if "data" in only:
        log.info("Bench 2: data loading")
        results["data"] = loading_bench(bench_cfg(root, work, "data", size), args.load_epochs)
        save()
    if "finetune" in only:
        log.info("Bench 3: fine-tuning, framework vs bare loop")
        tune = [
            f"backbone={args.finetune_backbone}",
            "backbone.freeze=false",
            "trainer.max_epochs=1",
        ]
        results["finetune"] = finetune_bench(
            lambda name: bench_cfg(root, work, name, size, *tune), args.repeats
        )
        save()
    if "screen" in only:
        log.info("Benches 1 and 4: the frozen screen with and without the feature cache")
        screen = ScreenSettings(
            root,
            work,
            args.image_size,
            args.backbone,
            args.epochs,
            args.heads,
            args.optimizers,
            args.lrs,
            args.uncached_conditions,
        )
        by_engine = args.screen_engines.split(",")
        results["screen"] = screen_bench(screen, by_engine)
        save()
        # The features are stored by now: this is a cached trial as the first engine's screen
        # ran them (its cache folder, its engine: the features' key holds the engine).
        screen = dataclasses.replace(screen, engine=by_engine[0])
        frozen = [
            f"inference.engine={by_engine[0]}",
            f"backbone={args.backbone.split(',')[0]}",
            "backbone.freeze=true",
            f"trainer.max_epochs={args.epochs}",
            # As the screen runs its trials (conf/sweep/grid.yaml: sweep.screen).
            "tracking.log_model=false",
            "tracking.plots=false",
        ]
        results["profile"] = profile_trial(
            bench_cfg(root, work, "profile", size, *frozen, cache=screen.cache_dir(True))
        )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    # force: importing mlflow.pytorch already set the root logger to ERROR with its own handler.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", force=True)
    results = run(args)
    print((args.out / "results.md").read_text())
    log.info(
        "Wrote %s and %s in %.0f s",
        args.out / "results.json",
        args.out / "results.md",
        results["total_s"],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
