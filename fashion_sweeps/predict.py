"""`fashion-sweeps predict PATH...`: tag photos with a logged model, one CSV row per image.

Folders are searched recursively for image files. Each row holds the top-k labels and their
probabilities; rows whose top-1 probability is under `--min-confidence` are marked
`needs_review`; a file that cannot be read gets a row with the reason, and the rest go on.
Rows are written batch by batch, so an interrupted run keeps what it tagged.
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fashion_sweeps.console_log import log_to_stderr
from fashion_sweeps.data.decode import load_image
from fashion_sweeps.data.sources import IMAGE_SUFFIXES
from fashion_sweeps.errors import UserError
from fashion_sweeps.output_folders import why_file_unwritable
from fashion_sweeps.redact import redact
from fashion_sweeps.tracking.registry import CHAMPION_URI

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)


class ModelUnavailableError(UserError, RuntimeError):
    """The model to tag with cannot be loaded."""


@dataclass
class Summary:
    images: int = 0
    needs_review: int = 0
    unreadable: int = 0
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Found:
    """The files to tag, and what the walk passed over: files without an image suffix, folder
    links that leave the given folders (not followed unless asked)."""

    files: list[Path]
    not_images: int = 0
    links_out: int = 0


def _inside(path: Path, roots: list[Path]) -> bool:
    real = path.resolve()
    return any(real == root or root in real.parents for root in roots)


def find_images(paths: Sequence[str | Path], follow_links: bool = False) -> Found:
    """Files to tag: named files as they are, folders searched recursively for image suffixes.
    Symbolic links to folders inside the given folders are followed, each real folder once (a
    link back up the tree is no endless loop); links that leave them (to `/`, another disk) only
    with `follow_links`. A broken link with an image suffix is kept, to get a row saying so.
    Files are sorted within each folder."""
    found = Found([])
    visited: set[tuple[int, int]] = set()  # (device, inode) of every folder walked
    roots = [Path(p).resolve() for p in paths if Path(p).is_dir()]
    for path in map(Path, paths):
        if not path.is_dir():
            found.files.append(path)  # a missing or unreadable file gets its own row saying why
            continue
        for folder, subdirs, names in os.walk(path, followlinks=True):
            stat = os.stat(folder)
            if (stat.st_dev, stat.st_ino) in visited:
                subdirs.clear()
                continue
            visited.add((stat.st_dev, stat.st_ino))
            kept = [d for d in sorted(subdirs) if follow_links or _inside(Path(folder, d), roots)]
            found.links_out += len(subdirs) - len(kept)
            subdirs[:] = kept
            for name in sorted(names):
                if Path(name).suffix.lower() in IMAGE_SUFFIXES:
                    found.files.append(Path(folder) / name)
                else:
                    found.not_images += 1
    return found


def _decode(path: Path, size: int, mode: str) -> np.ndarray | str:
    if not path.exists():
        return "broken symbolic link" if path.is_symlink() else "no such file"
    if not path.is_file():
        return "not a regular file"
    try:
        return load_image(path, size, mode)
    except Exception as err:  # PIL raises many types for damaged or foreign files
        return f"unreadable image ({type(err).__name__}: {err})"


def cannot_load(uri: str, err: BaseException) -> str:
    """What to do when the model at `uri` cannot be loaded (predict and export say the same)."""
    return (
        f"Cannot load the model {uri!r} ({err}). Register the best model of a sweep with "
        "`fashion-sweeps report SWEEP`, name another one (`runs:/<run_id>/model`, "
        "`models:/<name>@<alias>`, `models:/<model_id>`), or give the store that holds it with "
        "--tracking-uri."
    )


def load_tagging_model(uri: str, engine: str = "auto", precision: str = "auto"):
    """The pyfunc model at `uri`, run by `engine` in `precision` (inference/engines.py), with its
    input's channels (signature) and image size."""
    import mlflow.pyfunc

    from fashion_sweeps.inference import engines
    from fashion_sweeps.tracking.model_logging import image_input

    try:
        with engines.environment(engine, precision):
            model = mlflow.pyfunc.load_model(uri)
    except Exception as err:  # MlflowException, OSError for a missing local path, ...
        raise ModelUnavailableError(cannot_load(uri, err)) from err
    # Channels and size images are decoded at: the model's own, so it need not resize them.
    schema = model.metadata.get_input_schema()
    facts = image_input(model.metadata.metadata, schema)
    if "channels" not in facts or "image_size" not in facts:
        raise ModelUnavailableError(
            f"The model {uri!r} does not say what images it takes (no image_size and channels "
            f"in its metadata; its input schema is {schema}): use a model logged by "
            "`fashion-sweeps train`."
        )
    return model, facts["channels"], facts["image_size"]


def engine_of(model) -> str:
    """The engine the model's forward passes ran on (models logged by this package)."""
    try:
        return model.unwrap_python_model().engine_summary()
    except AttributeError:  # another package's pyfunc
        return "its own engine"


def model_figures(model, client: MlflowClient) -> str:
    """The model's own test accuracy beside its chance level and majority-class accuracy, from
    the run that logged it in the client's store ("" when that run cannot be read): a user sees
    at once whether the model is any better than a guess before trusting its tags."""
    from fashion_sweeps.evaluation import baseline_text

    try:
        metrics = client.get_run(model.metadata.run_id).data.metrics
    except Exception as err:  # a model file outside any store, a store that forgot the run
        log.info("The model's test figures are not available (%s)", err)
        return ""
    if "test_acc" not in metrics:
        return ""
    return f" The model's test accuracy: {baseline_text(metrics['test_acc'], metrics)}."


def header(top_k: int) -> list[str]:
    cols = ["path"]
    for i in range(1, top_k + 1):
        cols += [f"label_{i}", f"probability_{i}"]
    return [*cols, "needs_review", "error"]


def batches(items: Sequence[Path], size: int) -> Iterator[Sequence[Path]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def decoded_batches(
    files: Sequence[Path], batch_size: int, size: int, mode: str, pool: ThreadPoolExecutor
) -> Iterator[tuple[Sequence[Path], list[np.ndarray | str]]]:
    """Each batch of `files` with its decoded images (or why not), the next batch decoding on
    `pool` while the caller runs the model on this one."""

    def decode(chunk: Sequence[Path]) -> list:
        return [pool.submit(_decode, path, size, mode) for path in chunk]

    chunks = batches(files, batch_size)
    current = next(chunks, None)
    ahead = decode(current) if current is not None else []
    while current is not None:
        following = next(chunks, None)
        done = [future.result() for future in ahead]
        ahead = decode(following) if following is not None else []
        yield current, done
        current = following


def tag(
    files: Sequence[Path],
    model,
    channels: int,
    size: int,
    out: Path,
    top_k: int = 3,
    min_confidence: float = 0.5,
    batch_size: int = 64,
    progress: bool | None = None,
) -> Summary:
    """Tag `files` with `model` into the CSV `out`; returns counts and timing."""
    from tqdm import tqdm

    mode = "L" if channels == 1 else "RGB"
    summary = Summary()
    start = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    with (
        out.open("w", newline="", encoding="utf-8") as f,
        ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool,
        tqdm(
            total=len(files), unit="img", disable=None if progress is None else not progress
        ) as bar,
    ):
        writer = csv.writer(f)
        writer.writerow(header(top_k))
        for chunk, decoded in decoded_batches(files, batch_size, size, mode, pool):
            good = [i for i, d in enumerate(decoded) if not isinstance(d, str)]
            rows: dict[int, list] = {}
            if good:
                images = np.stack([decoded[i] for i in good]).transpose(0, 3, 1, 2)
                frame = model.predict(np.ascontiguousarray(images))
                classes = [c for c in frame.columns if c not in ("label", "probability")]
                probs = frame[classes].to_numpy()
                k = min(top_k, len(classes))
                order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
                for row, i in enumerate(good):
                    top = [(classes[j], probs[row, j]) for j in order[row]]
                    review = top[0][1] < min_confidence
                    summary.needs_review += review
                    cells = [x for label, p in top for x in (label, f"{p:.4f}")]
                    cells += [""] * (2 * (top_k - k))
                    rows[i] = [str(chunk[i]), *cells, str(review).lower(), ""]
            for i, reason in enumerate(decoded):
                if isinstance(reason, str):
                    summary.unreadable += 1
                    log.warning("Cannot tag %s: %s", chunk[i], reason)
                    rows[i] = [str(chunk[i]), *[""] * (2 * top_k), "", reason]
            writer.writerows(rows[i] for i in range(len(chunk)))
            f.flush()
            summary.images += len(good)
            bar.update(len(chunk))
    summary.seconds = time.perf_counter() - start
    return summary


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="fashion-sweeps predict",
        description="Tag images (files or folders, searched recursively) with a logged model: "
        "one CSV row per image with its top-k labels and probabilities.",
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders")
    parser.add_argument("--model", default=CHAMPION_URI, help=f"model URI (default {CHAMPION_URI})")
    parser.add_argument("--top-k", type=int, default=3, help="labels per image (default 3)")
    parser.add_argument(
        "--min-confidence",
        type=float,
        default=0.5,
        help="rows whose top-1 probability is lower are marked needs_review (default 0.5)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("predictions.csv"),
        help="CSV to write (default predictions.csv in the current folder, replaced if present)",
    )
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    parser.add_argument(
        "--follow-links",
        action="store_true",
        help="also follow folder links that lead outside the given folders",
    )
    parser.add_argument(
        "--engine",
        choices=("auto", "torch", "openvino"),
        default="auto",
        help="inference engine (default auto: OpenVINO on a CPU, PyTorch on a GPU)",
    )
    parser.add_argument(
        "--precision",
        choices=("auto", "f32", "bf16"),
        default="auto",
        help="its precision (default auto: bf16 with OpenVINO where the CPU computes it; images "
        "whose two best classes are close are computed again in f32)",
    )
    parser.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow store holding the model (default: as training, $MLFLOW_TRACKING_URI or mlruns/)",
    )
    args = parser.parse_args(argv)
    if args.top_k < 1:
        parser.error("--top-k must be 1 or more.")
    if not 0 <= args.min_confidence <= 1:
        parser.error("--min-confidence is a probability: give a value from 0 to 1.")
    if args.batch_size < 1:
        parser.error("--batch-size must be 1 or more.")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    log_to_stderr()
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from fashion_sweeps.tracking.runs import TrackingUnavailableError
    from fashion_sweeps.tracking.store import open_tool_store

    replaced = args.out.exists()
    problem = why_file_unwritable(args.out)  # before a long walk through the folders
    if problem:
        print(
            f"fashion-sweeps predict: cannot write {args.out} ({problem}). Give --out a CSV file "
            "name in a folder you can write to, e.g. --out predictions.csv.",
            file=sys.stderr,
        )
        return 1
    found = find_images(args.paths, args.follow_links)
    files = found.files
    if found.not_images:
        log.info(
            "Passed over %d files without an image suffix (%s)",
            found.not_images,
            " ".join(sorted(IMAGE_SUFFIXES)),
        )
    if found.links_out:
        log.info(
            "Did not follow %d folder links that leave the given folders (--follow-links to "
            "follow them)",
            found.links_out,
        )
    if not files:
        print(f"fashion-sweeps predict: no image files in {args.paths}.", file=sys.stderr)
        return 2
    try:
        client = open_tool_store(args.tracking_uri)
        model, channels, size = load_tagging_model(args.model, args.engine, args.precision)
    except (ModelUnavailableError, TrackingUnavailableError) as err:
        print(f"fashion-sweeps predict: {redact(str(err))}", file=sys.stderr)
        return 2
    summary = tag(
        files, model, channels, size, args.out, args.top_k, args.min_confidence, args.batch_size
    )
    print(
        f"Tagged {summary.images} images in {summary.seconds:.1f}s "
        f"({summary.images_per_second:.1f} images/s, {engine_of(model)}): "
        f"{summary.needs_review} need review "
        f"(top-1 probability < {args.min_confidence}), {summary.unreadable} unreadable. "
        f"Rows in {args.out}"
        f"{' (replaced the earlier file; --out to choose another)' if replaced else ''}."
        f"{model_figures(model, client)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
