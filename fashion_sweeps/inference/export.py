"""`fashion-sweeps export [MODEL] --format onnx|openvino|all`: a logged model as files that serve
without this package, checked against the PyTorch model they came from.

The exported graph takes uint8 images (batch, size, size, channels), as decoders hand them over,
and returns float32 probabilities (batch, classes): scaling, normalisation, channel matching and
the model's test-time views are inside it, so a server needs only onnxruntime or OpenVINO, NumPy
and an image decoder. Beside the model files, `labels.json` names the classes and the input;
`agreement.json` records how often the exported model's top-1 matches PyTorch's on the test split
of the run that logged the model (at least 99.5% or the command fails). The files are also logged
to that run under `export/<format>/`.

ONNX goes through `torch.export` (torch's dynamo exporter, with a symbolic batch); the IR is
converted as the inference engine converts models (inference/openvino_engine.py).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from fashion_sweeps.console_log import log_to_stderr
from fashion_sweeps.errors import UserError
from fashion_sweeps.redact import redact
from fashion_sweeps.tracking.registry import CHAMPION_URI

FORMATS = ("onnx", "openvino")
FILES = {"onnx": ("model.onnx",), "openvino": ("model.xml", "model.bin")}
TITLES = {"onnx": "ONNX", "openvino": "OpenVINO IR"}
LABELS, AGREEMENT = "labels.json", "agreement.json"
MIN_AGREEMENT = 0.995


class ExportError(UserError, RuntimeError):
    """What the user can fix, said in one paragraph; `code` is the command's exit code."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def percent(fraction: float) -> str:
    """99.87%, rounded down: a model that disagrees once in 10,000 is not shown as 100%."""
    return f"{math.floor(fraction * 10000) / 100:.2f}%"


def disagreement(results: dict[str, dict[str, float | str]], images: int, out: Path) -> str:
    """The paragraph of a failed check ("" when every format agrees)."""
    low = {fmt: r for fmt, r in results.items() if r["top1_agreement"] < MIN_AGREEMENT}
    if not low:
        return ""
    said = "; ".join(
        f"{TITLES[fmt]} ({r['runtime']}) agrees with PyTorch on only "
        f"{percent(float(r['top1_agreement']))} of {images:,} test images"
        for fmt, r in low.items()
    )
    bf16 = any("bf16" in str(r["runtime"]) for r in low.values())
    hint = (
        " OpenVINO computes in bf16 by default on this CPU: the ONNX file, or the IR compiled "
        "with INFERENCE_PRECISION_HINT f32, keeps fp32's results."
        if bf16
        else ""
    )
    return (
        f"The exported model's top-1 differs from PyTorch's: {said}, where "
        f"{percent(MIN_AGREEMENT)} is needed. The files are kept in {out} ({AGREEMENT} has the "
        f"figures) and not logged to the run.{hint} Export the other format with --format, or "
        "keep serving the model with `fashion-sweeps predict` / `mlflow models serve`."
    )


def closing_line(fmt: str, out: Path, result: dict[str, float | str] | None, images: int) -> str:
    path = out / FILES[fmt][0]
    if result is None:
        return f"{fmt}: {path} (not checked against PyTorch: --no-check)"
    bf16 = result.get("bf16_top1_agreement")
    default = (
        f"; compiled in bf16, OpenVINO's default on this CPU: {percent(float(bf16))}"
        if bf16 is not None
        else ""
    )
    return (
        f"{fmt}: {path}, top-1 agrees with PyTorch on {percent(float(result['top1_agreement']))}"
        f" of {images:,} test images (max |dp| {float(result['max_abs_probability_diff']):.4f})"
        f"{default}"
    )


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="fashion-sweeps export",
        description="Write a logged model as ONNX and/or OpenVINO IR (uint8 images in, "
        "probabilities out, preprocessing inside) with labels.json, check on the test split of "
        "the run that logged it that its top-1 agrees with PyTorch's on at least "
        f"{percent(MIN_AGREEMENT)} of images, and log the files to that run under export/.",
    )
    parser.add_argument(
        "model", nargs="?", default=CHAMPION_URI, help=f"model URI (default {CHAMPION_URI})"
    )
    parser.add_argument(
        "--format", choices=(*FORMATS, "all"), default="all", help="what to write (default all)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="folder of the files (default exported/<model name or id>/, e.g. "
        "exported/fashion-classifier/)",
    )
    parser.add_argument(
        "--dataset-root",
        type=Path,
        default=None,
        metavar="PATH",
        help="where the run's data set is now, when it moved since training",
    )
    parser.add_argument(
        "--no-check", action="store_true", help="skip the agreement check on the test split"
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=64,
        metavar="N",
        help="images per forward pass (default 64)",
    )
    parser.add_argument(
        "--tracking-uri",
        default=None,
        metavar="URI",
        help="MLflow store holding the model (default: as training, $MLFLOW_TRACKING_URI or mlruns/)",
    )
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error("--batch-size must be 1 or more.")
    return args


def export(args: argparse.Namespace) -> int:
    """The command, its errors raised as ExportError."""
    # Imported once the arguments are read: `--help` answers without loading torch or MLflow.
    from fashion_sweeps.inference.export_check import check, log_to_run, read_test_split
    from fashion_sweeps.inference.export_formats import (
        default_out,
        export_format,
        load_logged,
        write_labels,
    )
    from fashion_sweeps.tracking.runs import TrackingUnavailableError
    from fashion_sweeps.tracking.store import open_tool_store

    try:
        client = open_tool_store(args.tracking_uri, write=True)
    except TrackingUnavailableError as err:
        raise ExportError(str(err)) from err
    logged = load_logged(args.model)
    out = args.out or default_out(args.model)
    formats = list(FORMATS) if args.format == "all" else [args.format]
    pixels = None
    if not args.no_check:  # before the export: a wrong data root fails in seconds
        pixels = read_test_split(client, logged.run_id, logged.image_shape, args.dataset_root)
    try:
        out.mkdir(parents=True, exist_ok=True)
        write_labels(logged, out)
    except OSError as err:
        raise ExportError(
            f"Cannot write to {out} ({err}): give --out a folder you can write to.", 1
        ) from err
    if pixels is None:  # an earlier export's figures describe other files
        (out / AGREEMENT).unlink(missing_ok=True)
    runs = {fmt: export_format(fmt, logged, out) for fmt in formats}
    results: dict[str, dict[str, float | str]] = {}
    if pixels is not None:
        results = check(logged, runs, pixels, args.batch_size, out)
        failed = disagreement(results, len(pixels), out)
        if failed:
            raise ExportError(failed, code=1)
    where = log_to_run(client, logged.run_id, out, formats)
    images = 0 if pixels is None else len(pixels)
    for fmt in formats:
        print(closing_line(fmt, out, results.get(fmt), images))
    print(f"Classes and input in {out / LABELS}; {where}.")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    log_to_stderr()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per file
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return export(args)
    except ExportError as err:
        paragraph = " ".join(str(err).split())  # causes quoted inside may span lines
        print(f"fashion-sweeps export: {redact(paragraph)}", file=sys.stderr)
        return err.code


if __name__ == "__main__":
    sys.exit(main())
