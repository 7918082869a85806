"""`fashion-sweeps results` (`make results`): docs/results.md from the recipe runs in MLflow.

`--run NAME... --seeds 42 7 --root DATASET=PATH [-- OVERRIDES]` trains first, one
`fashion-sweeps train experiment=NAME seed=S` process after the other, then writes the page.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from fashion_sweeps.config import CONF_DIR, project_dir
from fashion_sweeps.console_log import STUDY_FORMAT, log_to_stderr
from fashion_sweeps.errors import UserError
from fashion_sweeps.recipes.catalogue import PROG, Recipe, load_recipes, recipe_names

log = logging.getLogger(__name__)


# --- Running recipes ---------------------------------------------------------------------------


def train_command(
    recipe: Recipe, seed: int, roots: Mapping[str, str], uri: str | None, overrides: Sequence[str]
) -> list[str]:
    """`train experiment=NAME seed=S [dataset.root=PATH] [tracking.uri=URI] OVERRIDES`."""
    args = ["train", f"experiment={recipe.name}", f"seed={seed}"]
    if recipe.dataset in roots:
        args.append(f"dataset.root={roots[recipe.dataset]}")
    if uri:
        args.append(f"tracking.uri={uri}")
    return [*args, *overrides]


def run_recipes(
    recipes: Mapping[str, Recipe],
    names: Sequence[str],
    seeds: Sequence[int],
    roots: Mapping[str, str],
    uri: str | None,
    overrides: Sequence[str],
) -> list[str]:
    """Train each recipe once per seed, one process after the other; the failed commands."""
    failed = []
    for name in names:
        recipe = recipes[name]
        if recipe.needs:
            log.warning(
                "%s needs %s: without it the run fails or is not the protocol.", name, recipe.needs
            )
        for seed in seeds:
            args = train_command(recipe, seed, roots, uri, overrides)
            shown = "fashion-sweeps " + shlex.join(args)
            print(f"$ {shown}", flush=True)
            done = subprocess.run([sys.executable, "-m", "fashion_sweeps.cli", *args], check=False)
            if done.returncode != 0:
                log.error("exit %d: %s", done.returncode, shown)
                failed.append(shown)
    return failed


# --- The command line --------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    default_out = project_dir() / "docs" / "results.md"
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Write docs/results.md from the recipe runs in MLflow: per recipe the "
        "study's figures, ours per seed and their mean, the target, the commands. With --run, "
        "train the recipes first.",
        epilog="example: fashion-sweeps results --run fmnist_cnn fmnist_best --seeds 42 7 "
        "--root fashion_mnist=../shared/data/fashion_mnist -- trainer.progress=lines",
    )
    parser.add_argument(
        "--run", nargs="+", default=[], metavar="RECIPE", help="train these recipes first"
    )
    parser.add_argument(
        "--seeds", nargs="+", type=int, default=[42], help="with --run: the seeds (default 42)"
    )
    parser.add_argument(
        "--root",
        action="append",
        default=[],
        metavar="DATASET=PATH",
        help="with --run: dataset.root of the recipes on DATASET (repeat per data set)",
    )
    parser.add_argument(
        "--out", type=Path, default=default_out, help=f"the page (default {default_out})"
    )
    parser.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow store, read and (with --run) trained into (default: as training, "
        "$MLFLOW_TRACKING_URI or mlruns/)",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        help="after --: Hydra overrides for every --run run (e.g. trainer.progress=lines)",
    )
    return parser


def _roots(parser: argparse.ArgumentParser, items: Sequence[str]) -> dict[str, str]:
    """--root DATASET=PATH options as {data set: path}."""
    roots = {}
    for item in items:
        dataset, sep, path = item.partition("=")
        if not sep or not dataset or not path:
            parser.error(f"--root {item}: give DATASET=PATH, e.g. fashion_mnist=data/fmnist")
        roots[dataset] = path
    return roots


def _check_names(
    parser: argparse.ArgumentParser, recipes: Sequence[str], datasets: Sequence[str]
) -> None:
    """Every recipe one of conf/experiment/, every data set one of conf/dataset/."""
    known = recipe_names()
    unknown = [n for n in recipes if n not in known]
    if unknown:
        hint = " (Hydra overrides go after --)" if any("=" in n for n in unknown) else ""
        parser.error(f"unknown recipe(s) {', '.join(unknown)}{hint}; recipes: {', '.join(known)}")
    known = sorted(p.stem for p in (CONF_DIR / "dataset").glob("*.yaml"))
    unknown = sorted(set(datasets) - set(known))
    if unknown:
        parser.error(
            f"--root: unknown data set(s) {', '.join(unknown)}; data sets: {', '.join(known)}"
        )


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.overrides and not args.run:
        parser.error("overrides apply to the runs of --run; give --run RECIPE...")
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        parser.error(f"{' '.join(bad)}: overrides are key=value (after --)")
    args.roots = _roots(parser, args.root)
    _check_names(parser, args.run, list(args.roots))
    return args


def main(argv: Sequence[str] | None = None) -> int:
    log_to_stderr(STUDY_FORMAT)
    args = parse_args(sys.argv[1:] if argv is None else argv)
    # Imported once the arguments are read: `--help` answers without loading MLflow.
    from hydra.errors import HydraException

    from fashion_sweeps.recipes.page import write_page
    from fashion_sweeps.tracking.store import open_tool_store

    try:
        recipes = load_recipes()
        client = open_tool_store(args.tracking_uri)  # unreachable: said before any training
    except (UserError, HydraException) as err:
        message = str(err).split("\nConfig search path:")[0].strip()  # the path is noise here
        print(f"{PROG}: {message}", file=sys.stderr)
        return 2
    failed = []
    if args.run:
        failed = run_recipes(
            recipes, args.run, args.seeds, args.roots, args.tracking_uri, args.overrides
        )
    _, table = write_page(client, args.out, recipes)
    print(table)
    print(f"Wrote {args.out}")
    if failed:
        print(f"{len(failed)} run(s) failed (listed on the page):", file=sys.stderr)
        for command in failed:
            print(f"  {command}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
