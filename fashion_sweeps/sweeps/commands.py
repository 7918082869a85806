"""`fashion-sweeps screen | full | sweep`: the sweep stages as Hydra multiruns of `train`.

Every argument is a Hydra override. `sweep=grid` (conf/sweep/grid.yaml, the 24-condition
protocol) is used unless another `sweep=` option is given; the command sets `sweep.stage`.
"""

from __future__ import annotations

import os
import sys

from fashion_sweeps import interrupts
from fashion_sweeps.sweeps.sweeper import register

STAGES = ("screen", "full")
# Launchers that run several trials at once on this machine.
LOCAL_PARALLEL_LAUNCHERS = ("joblib", "submitit_local")


def share_cores(args: list[str]) -> None:
    """With trials side by side on one machine, idle OpenMP threads must sleep, not spin: a
    spinning thread holds a core its peers wait for (training ran 2-10x slower that way). Alone
    on a machine, spinning is 1.8x faster for small CNNs, so it stays OpenMP's default elsewhere.
    An OMP_WAIT_POLICY the user set wins; trials started later inherit the environment."""
    launchers = {a.split("=", 1)[1] for a in args if a.lstrip("+").startswith("hydra/launcher=")}
    if launchers & set(LOCAL_PARALLEL_LAUNCHERS):
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def stage_argv(stage: str, args: list[str]) -> list[str]:
    """The Hydra command line of one stage."""
    args = [a for a in args if a not in ("-m", "--multirun")]
    chosen = any(a.split("=", 1)[0].lstrip("+") == "sweep" for a in args)
    return ["--multirun", *([] if chosen else ["sweep=grid"]), *args, f"sweep.stage={stage}"]


def run_stage(stage: str, args: list[str]) -> None:
    from fashion_sweeps.train import main as train_app

    register()
    share_cores(args)
    program = sys.argv[0] if sys.argv else "fashion-sweeps"
    sys.argv = [program, *stage_argv(stage, args)]
    interrupts.install()
    try:
        train_app()
    except KeyboardInterrupt:
        # The sweeper has already recorded the interruption; no traceback for a Ctrl-C. A
        # non-zero exit stops `fashion-sweeps sweep` and `make sweep` before the next step.
        print(
            f"\n{stage} {interrupts.reason()}: run the same command again to resume.",
            file=sys.stderr,
        )
        raise SystemExit(interrupts.exit_code()) from None


def screen() -> None:
    """Train every condition of the screen the study does not hold yet."""
    run_stage("screen", sys.argv[1:])


def full() -> None:
    """Train the screen's top-k conditions for longer, and test them."""
    run_stage("full", sys.argv[1:])


def sweep() -> None:
    """The screen, then the full runs of its winners."""
    args = sys.argv[1:]
    for stage in STAGES:
        run_stage(stage, args)
