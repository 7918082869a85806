"""How many concurrently logging runs an MLflow tracking server keeps up with (docs/scale_out.md).

Each simulated run is a thread with its own MLflow run that logs one batch of 5 metrics per
request, as a training run does per logging step, as fast as the server answers. Requests per
second in all and the median latency, per number of concurrent runs:

    python -m benchmarks.tracking_load http://127.0.0.1:5000 --runs 1 8 32 --seconds 20

Point it at a server of its own (`make server PORT=5001 BACKEND=...`): it creates an experiment
`tracking-load` with one run per thread.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import threading
import time

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from fashion_sweeps.tracking.runs import store_client

log = logging.getLogger(__name__)


def one_run(client: MlflowClient, experiment: str, until: float, latencies: list[float]) -> None:
    run = client.create_run(experiment)
    step = 0
    while time.monotonic() < until:
        now = int(time.time() * 1000)
        metrics = [Metric(f"m{i}", float(step), now, step) for i in range(5)]
        start = time.perf_counter()
        client.log_batch(run.info.run_id, metrics=metrics)
        latencies.append(time.perf_counter() - start)
        step += 1
    client.set_terminated(run.info.run_id)


def load(url: str, n_runs: int, seconds: float) -> tuple[float, float]:
    """(requests per second in all, median latency in ms) with n_runs logging at once."""
    client = store_client(url)
    found = client.get_experiment_by_name("tracking-load")
    experiment = found.experiment_id if found else client.create_experiment("tracking-load")
    latencies: list[list[float]] = [[] for _ in range(n_runs)]
    until = time.monotonic() + seconds
    threads = [
        threading.Thread(target=one_run, args=(client, experiment, until, latencies[i]))
        for i in range(n_runs)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [x for per_run in latencies for x in per_run]
    return len(every) / seconds, 1000 * statistics.median(every)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url")
    parser.add_argument("--runs", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--seconds", type=float, default=20)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for n in args.runs:
        rate, median = load(args.url, n, args.seconds)
        log.info("%3d runs at once: %6.0f requests/s, median %6.1f ms", n, rate, median)


if __name__ == "__main__":
    main()
