"""The bench's named sizes (`--size`): the values of the size flags a flag given on the command
line does not replace.

- `small` (the default): 500 photos at 128 px, one backbone, all four benches; the uncached
  screen runs the whole grid, the cached one with OpenVINO; the engines bench on 128 photos.
  About 15-20 minutes on 2 cores.
- `real`: the scale users run the clothing_screen recipe at: all clothing photos at 224 px, the
  recipe's 24-condition grid (efficientnet_lite0 and efficientnet_lite2 x fc, batchnorm x adam,
  sgd x 0.1, 0.01, 0.001; 3 epochs), the engines bench on 1,500 photos and the screen bench, its
  cached screen once per engine (PyTorch, OpenVINO); the uncached screen runs one condition per
  backbone and its wall time is extrapolated to the grid. About 50 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
from typing import Any

from benchmarks.screen_figures import sample_grid

# `memory` runs only when --only names it: it needs --memory-roots (the product photos).
BENCHES = ("data", "finetune", "screen", "engines", "memory")
# What `--screen-engines` may name: an `inference.engine` value (conf/inference/).
SCREEN_ENGINES = ("auto", "torch", "openvino")
LITES = "efficientnet_lite0,efficientnet_lite2"

SIZES: dict[str, dict[str, Any]] = {
    "small": {
        "images": 500,
        "image_size": "128",
        "backbone": "efficientnet_lite0",
        "only": "data,finetune,screen,engines",
        "uncached_conditions": 0,
        "engine_backbones": LITES,
        "engine_images": 128,
        "screen_engines": "openvino",
    },
    "real": {
        "images": 0,
        "image_size": "224",
        "backbone": LITES,
        "only": "engines,screen",
        "uncached_conditions": 1,
        "engine_backbones": LITES,
        "engine_images": 1500,
        "screen_engines": "torch,openvino",
    },
}


def add_size_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags a size sets; their default None means "the size's value"."""
    parser.add_argument(
        "--size",
        choices=sorted(SIZES),
        default="small",
        help="named size: small (default, about 15-20 min) or real (all photos, 224 px, the "
        "24-condition clothing_screen grid; engines and screen benches; about 50 min); the flags "
        "below override it",
    )
    parser.add_argument("--images", type=int, help="photos in the bench data set (0: all)")
    parser.add_argument(
        "--image-size", help="pixels per side, or `native` (screen only: each backbone's own)"
    )
    parser.add_argument("--backbone", help="the screen's frozen backbone(s), comma-separated")
    parser.add_argument(
        "--uncached-conditions",
        type=int,
        help="conditions per backbone the uncached screen runs (0: all); fewer: its wall time "
        "is extrapolated to the grid",
    )
    parser.add_argument("--only", help=f"comma-separated subset of {BENCHES}")
    parser.add_argument(
        "--engine-backbones",
        help="engines bench: frozen backbones, comma-separated, each at its native resolution",
    )
    parser.add_argument(
        "--engine-images", type=int, help="engines bench: photos (the first of the bench data)"
    )
    parser.add_argument(
        "--screen-engines",
        help="screen bench: run the cached screen once per inference.engine, comma-separated "
        f"(of {', '.join(SCREEN_ENGINES)}); the first fills the single-screen figures",
    )


def resolve(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    """Fill the flags not given from `--size`, then check them (parser.error on a bad one)."""
    for name, value in SIZES[args.size].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    unknown = set(args.only.split(",")) - set(BENCHES)
    if unknown:
        parser.error(f"--only {args.only}: unknown bench(es) {sorted(unknown)}; use {BENCHES}")
    if args.images != 0 and args.images < 60:
        parser.error("--images must be 0 (all) or at least 60: every split needs most classes")
    if args.engine_images < 16:
        parser.error("--engine-images must be at least 16")
    engines = args.screen_engines.split(",")
    if set(engines) - set(SCREEN_ENGINES) or len(set(engines)) < len(engines):
        parser.error(f"--screen-engines {args.screen_engines}: distinct values of {SCREEN_ENGINES}")
    if args.image_size == "native":
        # The engines bench runs each backbone at its native resolution anyway.
        if set(args.only.split(",")) - {"screen", "engines"}:
            parser.error("--image-size native applies to the screen only: add --only screen")
    elif not args.image_size.isdigit() or int(args.image_size) < 1:
        parser.error(f"--image-size {args.image_size}: a number of pixels or `native`")
    else:
        args.image_size = int(args.image_size)
    if args.uncached_conditions < 0:
        parser.error("--uncached-conditions must be 0 (all) or more")
    grid = (args.heads.split(","), args.optimizers.split(","), args.lrs.split(","))
    try:
        sample_grid(*grid, args.uncached_conditions)
    except ValueError as err:
        parser.error(str(err))
    return args
