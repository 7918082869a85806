"""`fashion-sweeps screen | full | sweep`: the sweep stages as Hydra multiruns of `train`.

Every argument is a Hydra override. `sweep=grid` (conf/sweep/grid.yaml, the 24-condition
transfer screen) is used unless another `sweep=` option is given; the command sets `sweep.stage`.
"""

from __future__ import annotations

import logging
import os
import sys
import textwrap

from fashion_sweeps import interrupts

STAGES = ("screen", "full")
# The sweep option a stage runs with unless its command line chooses another (conf/sweep/).
DEFAULT_SWEEP = "grid"
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


STAGE_HELP = {
    "screen": "Train, briefly (sweep.screen.max_epochs), every condition of the sweep's grid (or "
    "hydra.sweeper.n_trials sampled ones) that its Optuna study does not hold yet, then print "
    "and save the ranking by val_loss. Resumable: after an interruption run the same command "
    "again; it trains only the conditions without a result.",
    "full": "Train the screen's top sweep.full.top_k conditions by val_loss for "
    "sweep.full.max_epochs epochs with early stopping (sweep.full.patience), test their best "
    "checkpoints, log their models, and print and save the comparison. Give it the screen's "
    "sweep=, sweep.name and data set.",
    "sweep": "The screen, then the full stage of its winners: `fashion-sweeps screen` and "
    "`fashion-sweeps full` with the same arguments; then the sweep's report "
    "(`fashion-sweeps report SWEEP`).",
}
STAGE_OPTIONS = """\
Every argument is a Hydra override of train's config (`fashion-sweeps train --help` lists its
groups); sweep=grid (conf/sweep/grid.yaml) unless another sweep= is given. Often used:
  sweep=grid|scratch|tiny|tpe   what is swept (conf/sweep/): frozen ImageNet Lite0/Lite2,
                                MobileNetV2/VGG16 from random weights, ...
  sweep.name=NAME               the study, MLflow parent run and folder (default: the data set)
  dataset=NAME dataset.root=DIR the data
  backbone=a,b optimizer.lr=x,y values to sweep (replace the protocol's)
  sweep.full.top_k=N            conditions the full stage trains
  hydra.sweeper.storage=URL     where the studies live (sqlite:///..., journal:...)
  hydra/launcher=joblib         parallel trials (with hydra.sweeper.n_jobs=N)
Outputs: multirun/sweeps/<sweep.name>/<stage>/; `fashion-sweeps report` builds the report."""


def stage_help(stage: str) -> str:
    description = textwrap.fill(STAGE_HELP[stage], width=96)
    return f"usage: fashion-sweeps {stage} [OVERRIDES...]\n\n{description}\n\n{STAGE_OPTIONS}"


def stage_argv(stage: str, args: list[str]) -> list[str]:
    """The Hydra command line of one stage."""
    args = [a for a in args if a not in ("-m", "--multirun")]
    chosen = any(a.split("=", 1)[0].lstrip("+") == "sweep" for a in args)
    default = [] if chosen else [f"sweep={DEFAULT_SWEEP}"]
    return ["--multirun", *default, *args, f"sweep.stage={stage}"]


def run_stage(stage: str, args: list[str]) -> None:
    if "-h" in args or "--help" in args:  # not train's Hydra help: what the stage does
        print(stage_help(stage))
        return
    # Imported here: torch and Lightning take seconds to load, and help needs neither.
    from fashion_sweeps.train import main as train_app

    share_cores(args)
    program = sys.argv[0] if sys.argv else "fashion-sweeps"
    sys.argv = [program, *stage_argv(stage, args)]
    interrupts.install()
    try:
        interrupts.check()  # asked to stop during the stage before: do not begin this one
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
    """The screen, then the full runs of its winners, then the sweep's report."""
    args = sys.argv[1:]
    if "-h" in args or "--help" in args:
        print(stage_help("sweep"))
        return
    for stage in STAGES:
        run_stage(stage, args)
    from fashion_sweeps.sweeps import report
    from fashion_sweeps.sweeps.sweeper import last_stage

    if last_stage:
        logging.getLogger().handlers.clear()  # Hydra's, the last job's log file among them
        code = report.main([last_stage["sweep"], "--tracking-uri", last_stage["tracking_uri"]])
        if code:
            raise SystemExit(code)
