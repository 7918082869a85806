"""`fashion-sweeps report [SWEEP]`: one self-contained HTML page (images embedded, no external
links, opens offline) and its Markdown twin, built from the sweep's MLflow runs alone
(`stored_sweep.py` reads them, `report_content.py` makes the sections, `report_pages.py` the
pages).

Contents: the screen ranking; val_loss against learning rate per backbone × head × optimizer;
the full runs' comparison (table and bars); the best model's learning curves, confusion matrix,
per-class table and prediction gallery. The best full run's model is registered (alias
`champion`). Both files are written under `multirun/sweeps/<sweep>/report/` and logged to every
stage's parent run under `report/`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from fashion_sweeps.console_log import log_to_stderr
from fashion_sweeps.errors import UserError
from fashion_sweeps.paths import folder_name
from fashion_sweeps.redact import redact
from fashion_sweeps.tracking.registry import DEFAULT_REGISTERED_NAME


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="fashion-sweeps report",
        description="Write a sweep's HTML report (self-contained) and its Markdown twin, log "
        "them to the stage parent runs, and register the best full run's model.",
    )
    parser.add_argument(
        "sweep",
        nargs="?",
        help="the sweep's name (`sweep.name`; by default the data set's); omitted: the sweep "
        "whose stage ran last",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="folder (default multirun/sweeps/SWEEP/report)"
    )
    parser.add_argument(
        "--register-as",
        default=DEFAULT_REGISTERED_NAME,
        help=f"registered model name for the best full run (default {DEFAULT_REGISTERED_NAME})",
    )
    parser.add_argument("--no-register", action="store_true", help="do not register a model")
    parser.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow store (default: as training, $MLFLOW_TRACKING_URI or mlruns/)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    log_to_stderr()
    args = parse_args(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a few small files
    # Imported once the arguments are read: `--help` answers without loading MLflow.
    from fashion_sweeps.sweeps.report_content import build_report, log_report
    from fashion_sweeps.sweeps.report_pages import write_report
    from fashion_sweeps.sweeps.stored_sweep import latest_sweep
    from fashion_sweeps.tracking.store import open_tool_store

    try:
        client = open_tool_store(args.tracking_uri, write=True)
        args.sweep = args.sweep or latest_sweep(client)
        report, parents = build_report(
            client, args.sweep, None if args.no_register else args.register_as
        )
    except UserError as err:
        print(f"fashion-sweeps report: {redact(str(err))}", file=sys.stderr)
        return 2
    folder = args.out or Path("multirun") / "sweeps" / folder_name(args.sweep) / "report"
    paths = write_report(report, folder)
    log_report(client, parents, paths)
    print(f"Report of sweep {args.sweep!r}: {paths[0]} (Markdown: {paths[1]})")
    for note in report.notes:
        print(f"  note: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
