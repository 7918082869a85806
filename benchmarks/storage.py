"""How many conditions a study holds before its storage is the bottleneck (docs/scale_out.md).

Each worker process does what a sweep worker does per condition, without training: claim it
(`claim`: read the study, create a RUNNING trial, check for rivals) and record it
finished (`finish_trial`). The study grows as they go; the time of one claim-and-finish is
reported per block of trials, so its growth with the study's size shows.

    python -m benchmarks.storage --trials 2000 --workers 1 4 \
        --storage sqlite journal postgresql://fashion_sweeps:fashion_sweeps@127.0.0.1/bench

`sqlite` and `journal` are files in a temporary folder; a PostgreSQL URL names a database the
benchmark may fill (its study is named after the run and left there). Bounded: a configuration
stops after --seconds.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import optuna

from fashion_sweeps.sweeps.study import claim, finish_trial, open_study

log = logging.getLogger(__name__)


def storage_spec(kind: str, folder: Path) -> str:
    if kind == "sqlite":
        return f"sqlite:///{folder / 'optuna.db'}"
    if kind == "journal":
        return f"journal:{folder / 'optuna.journal'}"
    return kind  # a database URL


def worker(spec: str, study: str, first: int, count: int, deadline: float, out: Any) -> None:
    """Claim and finish conditions first..first+count-1; put (study size, seconds) per trial:
    the trial's number is how many trials the study held when it was claimed."""
    opened, _ = open_study(spec, study, "minimize")
    timings = []
    for i in range(first, first + count):
        if time.time() > deadline:
            break
        start = time.perf_counter()
        trial = claim(opened, {"x": i}, f"c{i}")
        if trial is None:  # disjoint ranges: never claimed by another worker
            continue
        finish_trial(opened, trial, "finished", float(i))
        timings.append((trial.number, time.perf_counter() - start))
    out.put(timings)


def run(spec: str, n_workers: int, trials: int, seconds: float) -> list[tuple[int, float]]:
    """All workers on one new study; (study size, seconds) of every claim-and-finish."""
    study = f"bench-{uuid.uuid4().hex[:8]}"
    open_study(spec, study, "minimize")
    # Spawned, not forked: independent processes, as sweep workers are.
    context = mp.get_context("spawn")
    queue = context.Queue()
    deadline = time.time() + seconds
    # Disjoint ranges: every claim uncontested, as in a sweep whose workers skip the conditions
    # others hold (a contested claim costs one more read of the study).
    per = trials // n_workers
    procs = [
        context.Process(target=worker, args=(spec, study, w * per, per, deadline, queue))
        for w in range(n_workers)
    ]
    for p in procs:
        p.start()
    timings = [t for _ in procs for t in queue.get()]
    for p in procs:
        p.join()
    return timings


def summarize(timings: list[tuple[int, float]], n_workers: int, block: int) -> list[str]:
    """Median ms per claim-and-finish for each block of study sizes, and trials/s overall."""
    lines = []
    ordered = sorted(timings)
    for start in range(0, len(ordered), block):
        chunk = [s for _, s in ordered[start : start + block]]
        lines.append(
            f"  study of {start:>5}-{start + len(chunk) - 1:<5} trials: "
            f"median {1000 * statistics.median(chunk):7.1f} ms per claim+finish"
        )
    total = sum(s for _, s in timings) / n_workers  # workers run side by side
    lines.append(f"  {len(timings)} trials, about {len(timings) / total:.0f} trials/s in all")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=2000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--storage", nargs="+", default=["sqlite", "journal"])
    parser.add_argument("--block", type=int, default=500, help="trials per reported line")
    parser.add_argument("--seconds", type=float, default=300, help="per configuration")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("fashion_sweeps").setLevel(logging.WARNING)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for kind in args.storage:
        for n in args.workers:
            with tempfile.TemporaryDirectory() as tmp:
                spec = storage_spec(kind, Path(tmp))
                start = time.perf_counter()
                timings = run(spec, n, args.trials, args.seconds)
                wall = time.perf_counter() - start
            name = kind.split("@")[-1] if "@" in kind else kind  # no password in the log
            log.info("%s, %d worker(s), %.0f s:", name, n, wall)
            for line in summarize(timings, n, args.block):
                log.info(line)


if __name__ == "__main__":
    main()
