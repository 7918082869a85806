"""Bench 5: the inference engines (fashion_sweeps/inference/) and the fine-tuning speed-ups
(fashion_sweeps/trainer/speed.py), side by side on the same decoded photos.

For each backbone of `--engine-backbones`, at its weights' native resolution (or
`--engine-image-size`), on the first `--engine-images` photos of the bench data, decoded once per
size:

1. features: images/s of the frozen backbone's pooled features (`preprocess` + backbone, as
   models/features.py runs them) per engine and precision: PyTorch fp32 eager (`inference=torch`,
   the reference), PyTorch bf16 autocast, OpenVINO fp32 and bf16. OpenVINO's one-off convert +
   compile is timed apart (`compile_s`), not in the rate.
2. predict: images/s of the whole classifier with its softmax (`probabilities_of`, what
   `predict` and the served model run) through `compile_probabilities`, as they run it (in bf16,
   close calls computed again in f32), and each engine's top-1 agreement with PyTorch fp32. The
   classifier's head is the PyTorch fp32 probe below (so its predictions are a trained model's).
3. probe: accuracy of a logistic regression fitted on each engine's features of a stratified
   70% of the photos, on the other 30% (the same split for all); labelled real photos only.

Then, once:

4. decode: images/s of decoding the same photos at 224 px: PIL without JPEG draft mode (the code
   before `load_image` used it), `decode_files` in this process, `decode_files` with 2 worker
   processes.
5. fine-tuning steps: images/s of training steps of `--finetune-backbone` at 160 px, batch 32
   (bare loop: one untimed step, then FINETUNE_STEPS timed): fp32, channels_last, bf16 autocast,
   bf16 autocast + channels_last, and `torch.compile` of the fastest of those, in a child process
   that is stopped when compiling takes over `--compile-timeout` seconds.

Every rate is the best of ROUNDS rounds in which each side runs once, the order alternating, so
that load from other processes weighs on all sides alike; ratios are to the reference side
measured beside it. Each row records the load average (1/5/15 min) before and after its part.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import torch
import torch.nn.functional as F
from hydra.utils import get_method
from omegaconf import OmegaConf
from PIL import Image
from torch import nn

from fashion_sweeps.config import CONF_DIR, build
from fashion_sweeps.data import decode
from fashion_sweeps.data.decode import decode_files
from fashion_sweeps.inference.engines import (
    Engine,
    compile_images,
    compile_probabilities,
    cpu_has_bf16,
    openvino_installed,
)
from fashion_sweeps.models.backbones import Backbone
from fashion_sweeps.models.classifier import Classifier, Preprocess

log = logging.getLogger(__name__)

ROUNDS = 2
BATCH_SIZE = 64  # the clothing data set's batch size: the screen's feature pass runs these
DECODE_SIZE = 224
DECODE_WORKERS = 2
FINETUNE_SIZE = 160
FINETUNE_BATCH = 32
FINETUNE_STEPS = 5  # timed, after one untimed step
PROBE_TRAIN = 0.7
PROBE_MAX_ITER = 1000
COMPILE_TIMEOUT_S = 180.0
# The compile child's imports and model build, before its compile starts; and its timed steps.
CHILD_START_TIMEOUT_S = 300.0
CHILD_STEPS_TIMEOUT_S = 900.0
REFERENCE = Engine("torch", "f32")
ENGINES = (
    REFERENCE,
    Engine("torch", "bf16"),
    Engine("openvino", "f32"),
    Engine("openvino", "bf16"),
)
# Fine-tuning variants: (bf16 autocast, channels_last); the first is the reference.
VARIANTS = {
    "fp32": (False, False),
    "channels_last": (False, True),
    "bf16": (True, False),
    "bf16 + channels_last": (True, True),
}
ROOT = Path(__file__).resolve().parent.parent

Row = dict[str, Any]


@dataclass
class EngineSettings:
    """What the engines bench measures on. `image_size`: None for each backbone's native
    resolution (and FINETUNE_SIZE for the fine-tuning steps); a number replaces both (tests)."""

    root: Path
    work: Path
    backbones: list[str]
    images: int
    image_size: int | None = None
    labelled: bool = True
    finetune_backbone: str = "efficientnet_lite0"
    compile_timeout_s: float = COMPILE_TIMEOUT_S
    rounds: int = ROUNDS
    finetune_steps: int = FINETUNE_STEPS


# --- Helpers ------------------------------------------------------------------------------------


def load_average() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def timed(work: Callable[[], object]) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def interleaved(
    sides: dict[str, Callable[[], float]], rounds: int, what: str = ""
) -> dict[str, list[float]]:
    """Each side's rate per round: every round runs each side once, in alternating order (the
    first side of a round meets the load the last one left)."""
    names = list(sides)
    rates: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(rounds):
        for name in names if round_ % 2 == 0 else names[::-1]:
            rates[name].append(sides[name]())
            log.info("%s round %d: %s %.1f images/s", what, round_ + 1, name, rates[name][-1])
    return rates


def stamped(rows: list[Row], before: list[float]) -> list[Row]:
    """The rows of a part with the load average before and after it."""
    after = load_average()
    for row in rows:
        row["load_average_before"], row["load_average_after"] = before, after
    return rows


def backbone_node(name: str) -> Any:
    path = CONF_DIR / "backbone" / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (CONF_DIR / "backbone").glob("*.yaml"))
        raise ValueError(f"backbone {name!r}: no conf/backbone/{name}.yaml; use one of {known}")
    return OmegaConf.load(path)


def native_resolution(name: str) -> int | None:
    """The resolution `name`'s pretrained weights were trained at (None: no fixed one)."""
    size = getattr(get_method(backbone_node(name)._target_), "native_resolution", None)
    return None if size is None else int(size)


def build_backbone(name: str, image_size: int, freeze: bool) -> Backbone:
    return build(backbone_node(name), in_channels=3, image_size=image_size, freeze=freeze)


def preprocess_for(backbone: Backbone) -> Preprocess:
    info = backbone.weights_info
    mean, std = (info.mean, info.std) if info else ((0.5,) * 3, (0.5,) * 3)
    return Preprocess(3, mean, std)


def check_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """parser.error on an engines flag that cannot run: an unknown backbone, or one without a
    native resolution when no `--engine-image-size` is given."""
    if "engines" not in args.only.split(","):
        return
    if args.engine_image_size is not None and args.engine_image_size < 16:
        parser.error("--engine-image-size must be at least 16 pixels")
    if args.compile_timeout < 0:
        parser.error("--compile-timeout must be 0 (no torch.compile) or more seconds")
    if args.engine_rounds < 1 or args.engine_steps < 1:
        parser.error("--engine-rounds and --engine-steps must be at least 1")
    for name in [*args.engine_backbones.split(","), args.finetune_backbone]:
        try:
            size = native_resolution(name)
        except ValueError as err:
            parser.error(str(err))
        if name in args.engine_backbones.split(",") and size is None and not args.engine_image_size:
            parser.error(
                f"--engine-backbones {name}: it has no native resolution; give --engine-image-size"
            )


# --- Photos -------------------------------------------------------------------------------------


def photos(root: Path, limit: int) -> tuple[list[Path], list[str]]:
    """The first `limit` photos of the bench data (`root/images.csv`) and their labels."""
    paths, labels = [], []
    with (root / "images.csv").open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if len(paths) == limit:
                break
            paths.append(root / "images" / f"{row['image']}.jpg")
            labels.append(row["label"])
    return paths, labels


def decoded(paths: list[Path], labels: list[str], size: int) -> tuple[np.ndarray, np.ndarray]:
    """The photos decoded at `size` (as runs decode them) and the labels of those decoded."""
    pixels, reasons = decode_files(paths, size)
    kept = np.array([label for label, reason in zip(labels, reasons, strict=True) if not reason])
    return pixels, kept


# --- Parts 1 and 2: a model through every engine ------------------------------------------------


def usable_engines() -> tuple[list[Engine], list[str]]:
    """The engines this machine runs, and why any is left out."""
    engines, notes = [], []
    bf16 = cpu_has_bf16()
    for engine in ENGINES:
        if engine.precision == "bf16" and not bf16:
            notes.append(f"{engine}: skipped, this CPU has no bf16 instructions (AVX512_BF16/AMX)")
        elif engine.name == "openvino" and not openvino_installed():
            notes.append(f"{engine}: skipped, OpenVINO is not installed")
        else:
            engines.append(engine)
    return engines, notes


@dataclass
class EngineRun:
    """A model through each engine: rates per round, compile seconds, the engine that ran (after
    any fallback, and why it fell back) and its outputs on every image."""

    rates: dict[str, list[float]]
    compile_s: dict[str, float]
    ran: dict[str, str]
    outputs: dict[str, np.ndarray]
    fallbacks: dict[str, str]


class _Warnings(logging.Handler):
    """The warnings a logger gives while attached (compile_images says why it fell back)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def compiled_for(
    model: nn.Module, engine: Engine, shape: tuple[int, ...], compile: Callable = compile_images
) -> tuple[Any, str]:
    """`compile(model, engine, shape)` and what it warned (why it fell back), if any.

    A conversion that fails leaves the root logger at ERROR (OpenVINO's `convert_model` sets it
    and only restores it on success), which would mute that warning and every later line of the
    bench: the loggers are put back as they were."""
    logger, root = logging.getLogger(compile_images.__module__), logging.getLogger()
    saved = (logger.disabled, logger.level, root.level, list(root.filters), list(root.handlers))
    said = _Warnings()
    logger.disabled = False
    if logger.level == logging.NOTSET or logger.level > logging.WARNING:
        logger.setLevel(logging.WARNING)
    logger.addHandler(said)
    try:
        return compile(model, engine, shape), " ".join(said.messages)
    finally:
        logger.removeHandler(said)
        logger.disabled, level, root_level, root.filters, root.handlers = saved
        logger.setLevel(level)
        root.setLevel(root_level)


def through_engines(
    model: nn.Module,
    pixels: np.ndarray,
    width: int,
    engines: list[Engine],
    rounds: int,
    what: str,
    compile: Callable = compile_images,
) -> EngineRun:
    """`model` (uint8 NCHW images in, (N, width) out) compiled for each engine (timed apart, then
    warmed up on one batch), then its pass over `pixels` timed in interleaved rounds. An engine
    that fell back to another one of the list is not timed again: its outputs are that one's."""
    compiled, compile_s, outputs, warned = {}, {}, {}, {}
    for engine in engines:
        key = str(engine)
        start = time.perf_counter()
        compiled[key], warned[key] = compiled_for(model, engine, tuple(pixels.shape[1:]), compile)
        compile_s[key] = time.perf_counter() - start if engine.name == "openvino" else 0.0
        outputs[key] = np.empty((len(pixels), width), dtype=np.float32)
        compiled[key].map(pixels[:BATCH_SIZE], BATCH_SIZE, outputs[key][:BATCH_SIZE])  # warm-up
    ran = {key: str(run.engine) for key, run in compiled.items()}
    fallbacks = {key: warned[key] for key in compiled if ran[key] != key}
    timed_keys = [key for key in compiled if key not in fallbacks or ran[key] not in compiled]

    def side(key: str) -> Callable[[], float]:
        run = compiled[key]
        return lambda: len(pixels) / timed(lambda: run.map(pixels, BATCH_SIZE, outputs[key]))

    rates = interleaved({key: side(key) for key in timed_keys}, rounds, what)
    for key in compiled:
        if key not in rates:  # the same pass as the engine it fell back to
            rates[key], outputs[key] = [], outputs[ran[key]]
    return EngineRun({key: rates[key] for key in compiled}, compile_s, ran, outputs, fallbacks)


def engine_rows(backbone: str, size: int, run: EngineRun) -> list[Row]:
    """One row per engine; a fallback not timed again has no rate (None)."""
    reference = max(run.rates[str(REFERENCE)])
    rows = []
    for key, rates in run.rates.items():
        name, precision = key.split()
        rate = max(rates) if rates else None
        rows.append(
            {
                "backbone": backbone,
                "image_size": size,
                "engine": name,
                "precision": precision,
                "ran": run.ran[key],
                "fallback": run.ran[key] != key,
                **({"fallback_reason": run.fallbacks[key]} if key in run.fallbacks else {}),
                "images_per_s": rate,
                "rates": rates,
                "x_torch_f32": rate / reference if rate is not None else None,
                "compile_s": run.compile_s[key],
            }
        )
    return rows


# --- Part 3: the probe --------------------------------------------------------------------------


def probe_split(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """A stratified PROBE_TRAIN / rest split of the photos of classes with two photos or more
    (train, test indices), and the classes left out."""
    from sklearn.model_selection import train_test_split

    names, counts = np.unique(labels, return_counts=True)
    rare = [str(n) for n, c in zip(names, counts, strict=True) if c < 2]
    kept = np.flatnonzero(~np.isin(labels, rare))
    train, test = train_test_split(
        kept, train_size=PROBE_TRAIN, stratify=labels[kept], random_state=0
    )
    return np.sort(train), np.sort(test), rare


def fit_probe(features: np.ndarray, labels: np.ndarray, train: np.ndarray) -> Any:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # recorded: n_iter_ == max_iter
        return LogisticRegression(max_iter=PROBE_MAX_ITER).fit(features[train], labels[train])


def linear_head(probe: Any, width: int) -> tuple[nn.Linear, list[str]]:
    """The fitted logistic regression as the classifier's Linear head, and its classes (one
    column for two classes becomes two logits with the same softmax)."""
    weight, bias = np.asarray(probe.coef_), np.asarray(probe.intercept_)
    if weight.shape[0] == 1:
        weight, bias = np.vstack([-weight / 2, weight / 2]), np.hstack([-bias / 2, bias / 2])
    head = nn.Linear(width, weight.shape[0])
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(weight).float())
        head.bias.copy_(torch.from_numpy(bias).float())
    return head, [str(c) for c in probe.classes_]


def probe_rows(
    backbone: str,
    run: EngineRun,
    labels: np.ndarray,
    split: Any,
    labelled: bool,
    fitted: dict[str, Any],
) -> list[Row]:
    """Each engine's probe accuracy (`fitted`: probes already fitted on the split, by engine)."""
    rows = []
    for key, features in run.outputs.items():
        row: Row = {"backbone": backbone, "engine": key.split()[0], "precision": key.split()[1]}
        if not labelled:
            row.update(accuracy=None, why="synthetic photos: their labels are colour codes")
        elif isinstance(split, str):
            row.update(accuracy=None, why=split)
        else:
            train, test, rare = split
            try:
                probe = fitted.get(key) or fit_probe(features, labels, train)
            except ValueError as err:  # e.g. a single class
                rows.append({**row, "accuracy": None, "why": str(err)})
                continue
            row.update(
                accuracy=float((probe.predict(features[test]) == labels[test]).mean()),
                train=len(train),
                test=len(test),
                classes=len(probe.classes_),
                left_out_classes=rare,
                converged=bool(np.all(probe.n_iter_ < PROBE_MAX_ITER)),
            )
        rows.append(row)
    return rows


# --- Parts 1-3 for one backbone -----------------------------------------------------------------


def backbone_parts(
    settings: EngineSettings,
    name: str,
    pixels: np.ndarray,
    labels: np.ndarray,
    engines: list[Engine],
) -> dict[str, list[Row]]:
    """Features, probe and predict rows of one backbone on `pixels`."""
    # Imports MLflow: not in the torch.compile child, which starts against a clock.
    from fashion_sweeps.tracking.model_logging import probabilities_of

    size = pixels.shape[1]
    torch.manual_seed(0)
    backbone = build_backbone(name, size, freeze=True)
    preprocess = preprocess_for(backbone)
    network = nn.Sequential(preprocess, backbone).eval()

    before = load_average()
    features = through_engines(
        network, pixels, backbone.out_features, engines, settings.rounds, f"{name} features"
    )
    feature_rows = stamped(engine_rows(name, size, features), before)

    before = load_average()
    try:
        split: Any = probe_split(labels)
    except ValueError as err:  # too few photos of some class for a stratified split
        split = f"no stratified split of these photos: {err}"
    # The classifier predict runs has the PyTorch fp32 probe as its head (fitted on every photo
    # when there is no split).
    train = split[0] if not isinstance(split, str) else np.arange(len(labels))
    try:
        reference = fit_probe(features.outputs[str(REFERENCE)], labels, train)
    except ValueError:  # a single class: no regression to fit
        reference = None
    fitted = {str(REFERENCE): reference} if reference and not isinstance(split, str) else {}
    probes = stamped(probe_rows(name, features, labels, split, settings.labelled, fitted), before)

    if reference is not None:
        head, classes = linear_head(reference, backbone.out_features)
    else:  # any head predicts as fast: a seeded random one over two classes
        head, classes = nn.Linear(backbone.out_features, 2), ["a", "b"]
    classifier = Classifier(preprocess, backbone, head, classes, size)
    before = load_average()
    predicted = through_engines(
        probabilities_of(classifier), pixels, len(classes), engines, settings.rounds,
        f"{name} predict", compile_probabilities,
    )  # fmt: skip
    predict_rows = engine_rows(name, size, predicted)
    top1 = {key: probs.argmax(axis=1) for key, probs in predicted.outputs.items()}
    probs = predicted.outputs[str(REFERENCE)]
    for row in predict_rows:
        key = f"{row['engine']} {row['precision']}"
        row["top1_agreement"] = float((top1[key] == top1[str(REFERENCE)]).mean())
        row["max_probability_difference"] = float(np.abs(predicted.outputs[key] - probs).max())
    return {
        "features": feature_rows,
        "probe": probes,
        "predict": stamped(predict_rows, before),
    }


# --- Part 4: decode -----------------------------------------------------------------------------


def load_image_without_draft(path: Path, size: int, mode: str = "RGB") -> np.ndarray:
    """`load_image` as it was before JPEG draft mode: the whole photo decoded, then resized."""
    with Image.open(path) as img:
        img = img.convert(mode).resize((size, size), Image.Resampling.BICUBIC)
        array = np.asarray(img, dtype=np.uint8)
    return array[..., None] if array.ndim == 2 else array


def decode_part(paths: list[Path], rounds: int) -> list[Row]:
    n = len(paths)
    forced = n < decode.PARALLEL_MIN_IMAGES

    def pool() -> object:
        # decode_files decodes fewer than PARALLEL_MIN_IMAGES photos in this process: below that
        # the pool is forced, so the row measures what it says.
        with mock.patch.object(decode, "PARALLEL_MIN_IMAGES", 0):
            return decode_files(paths, DECODE_SIZE, workers=DECODE_WORKERS)

    sides = {
        "PIL without draft (before)": lambda: np.stack(
            [load_image_without_draft(p, DECODE_SIZE) for p in paths]
        ),
        "decode_files, draft": lambda: decode_files(paths, DECODE_SIZE, workers=1),
        f"decode_files, draft, {DECODE_WORKERS} workers": pool,
    }
    before = load_average()
    rates = interleaved(
        {name: (lambda work=work: n / timed(work)) for name, work in sides.items()},
        rounds,
        "decode",
    )
    reference = max(rates["PIL without draft (before)"])
    rows = [
        {
            "method": name,
            "images": n,
            "image_size": DECODE_SIZE,
            "images_per_s": max(values),
            "rates": values,
            "x_without_draft": max(values) / reference,
            **({"pool_forced": forced} if "workers" in name else {}),
        }
        for name, values in rates.items()
    ]
    return stamped(rows, before)


# --- Part 5: fine-tuning steps ------------------------------------------------------------------


class Steps:
    """Training steps of a classifier on fixed batches (a bare loop: no data loading in the
    time): `rate()` runs one untimed step, then `steps` timed ones."""

    def __init__(
        self,
        backbone: str,
        pixels: np.ndarray,
        labels: np.ndarray,
        bf16: bool,
        channels_last: bool,
        steps: int,
        compile_model: bool = False,
    ) -> None:
        torch.manual_seed(0)
        size = pixels.shape[1]
        network = build_backbone(backbone, size, freeze=False)
        classes = sorted(set(labels.tolist())) or ["only"]
        index = {c: i for i, c in enumerate(classes)}
        head = nn.Linear(network.out_features, max(len(classes), 2))
        model = Classifier(preprocess_for(network), network, head, classes, size).train()
        layout = torch.channels_last if channels_last else torch.contiguous_format
        if channels_last:
            model.to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
        self.model = torch.compile(model) if compile_model else model
        self.bf16, self.steps = bf16, steps
        self.batches = []
        for step in range(steps + 1):  # the images in order, round again when they run out
            at = [(step * FINETUNE_BATCH + i) % len(pixels) for i in range(FINETUNE_BATCH)]
            x = torch.from_numpy(pixels[at]).permute(0, 3, 1, 2).contiguous(memory_format=layout)
            y = torch.tensor([index.get(label, 0) for label in labels[at].tolist()])
            self.batches.append((x, y))

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.optimizer.zero_grad()
        with torch.autocast("cpu", torch.bfloat16, enabled=self.bf16):
            loss = F.cross_entropy(self.model(x), y)
        loss.backward()
        self.optimizer.step()

    def rate(self) -> float:
        """images/s of the steps after the first (timed from its end, as `bare_loop`)."""
        self.step(*self.batches[0])
        start = time.perf_counter()
        for x, y in self.batches[1:]:
            self.step(x, y)
        return self.steps * FINETUNE_BATCH / (time.perf_counter() - start)


def finetune_part(
    settings: EngineSettings, pixels: np.ndarray, labels: np.ndarray, bf16: bool
) -> tuple[list[Row], list[str]]:
    variants = {k: v for k, v in VARIANTS.items() if bf16 or not v[0]}
    notes = [] if bf16 else ["fine-tuning bf16 variants: skipped, this CPU has no bf16"]
    name = settings.finetune_backbone
    before = load_average()
    steps = settings.finetune_steps
    loops = {
        variant: Steps(name, pixels, labels, *flags, steps).rate
        for variant, flags in variants.items()
    }
    rates = interleaved(loops, settings.rounds, f"{name} fine-tuning")
    reference = max(rates["fp32"])
    rows: list[Row] = [
        {
            "backbone": name,
            "image_size": pixels.shape[1],
            "batch": FINETUNE_BATCH,
            "timed_steps": steps,
            "variant": variant,
            "images_per_s": max(values),
            "rates": values,
            "x_fp32": max(values) / reference,
            "compile_s": 0.0,
        }
        for variant, values in rates.items()
    ]
    rows = stamped(rows, before)
    best = max(rows, key=lambda r: r["images_per_s"])
    before = load_average()
    compiled = compiled_steps(settings, name, pixels, labels, best["variant"])
    compiled_row = {
        "backbone": name,
        "image_size": pixels.shape[1],
        "batch": FINETUNE_BATCH,
        "variant": f"torch.compile({best['variant']})",
        **compiled,
    }
    if "images_per_s" in compiled:
        # Measured beside the same eager variant in the child: scaled to fp32 through it.
        compiled_row["x_fp32"] = best["x_fp32"] * compiled["x_eager"]
    rows += stamped([compiled_row], before)
    return rows, notes


def compiled_steps(
    settings: EngineSettings, backbone: str, pixels: np.ndarray, labels: np.ndarray, variant: str
) -> Row:
    """`torch.compile` of `variant`'s steps, measured in a child process beside the same eager
    steps (its own process: a compile that runs over `compile_timeout_s` is stopped, with the
    compile workers it started). Returns the figures, or `error` saying why there are none."""
    timeout = settings.compile_timeout_s
    if timeout <= 0:
        return {"error": "not run (--compile-timeout 0)"}
    data, spec = settings.work / "compile-steps.npz", settings.work / "compile-steps.json"
    np.savez(data, pixels=pixels, labels=labels)
    spec.write_text(
        json.dumps(
            {
                "data": str(data),
                "backbone": backbone,
                "variant": variant,
                "rounds": settings.rounds,
                "steps": settings.finetune_steps,
            }
        )
    )
    log_file = settings.work / "logs" / "torch-compile.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    # A cold compile, as a first run pays it: its own inductor cache.
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(settings.work / "inductor-cache")}
    command = [sys.executable, "-m", "benchmarks.engines", "--compiled-steps", str(spec)]
    log.info("torch.compile(%s) in a child process: log in %s", variant, log_file)
    return run_child(command, log_file, timeout, env)


def run_child(
    command: list[str], log_file: Path, timeout: float, env: dict[str, str] | None = None
) -> Row:
    """Run the compile child `command` (stderr into `log_file`) and read its events: `started`,
    then `compiled` within `timeout` seconds, then `done`. Its figures, or `error` saying why
    there are none; the child and its process group are stopped either way."""
    with log_file.open("w") as err:
        child = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            start_new_session=True,  # its own process group: its compile workers stop with it
        )
        events: queue.Queue[dict[str, Any] | None] = queue.Queue()
        threading.Thread(target=_read_events, args=(child, events), daemon=True).start()
        try:
            return _compile_figures(child, events, timeout, log_file)
        finally:
            _stop_group(child)


def _read_events(child: subprocess.Popen, events: queue.Queue) -> None:
    """The child's JSON-object lines onto `events` (other output skipped), then None."""
    assert child.stdout is not None
    for line in child.stdout:
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(event, dict):
            events.put(event)
    events.put(None)


def _next_event(events: queue.Queue, wanted: str, timeout: float) -> dict[str, Any] | None:
    """The child's next `wanted` event; None if it ended first; queue.Empty after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        event = events.get(timeout=max(deadline - time.monotonic(), 0.001))
        if event is None or event.get("event") == wanted:
            return event


def _compile_figures(
    child: subprocess.Popen, events: queue.Queue, timeout: float, log_file: Path
) -> Row:
    steps = (
        ("started", CHILD_START_TIMEOUT_S),
        ("compiled", timeout),
        ("done", CHILD_STEPS_TIMEOUT_S),
    )
    got: dict[str, dict[str, Any]] = {}
    for wanted, limit in steps:
        try:
            event = _next_event(events, wanted, limit)
        except queue.Empty:
            what = "compiling" if wanted == "compiled" else f"waiting for {wanted!r}"
            return {"error": f"{what} took over {limit:g} s: stopped (log: {log_file})"}
        if event is None:
            code = child.wait()
            tail = " / ".join(log_file.read_text().strip().splitlines()[-3:])[-400:]
            return {"error": f"failed (exit {code}) before {wanted!r}: {tail}"}
        got[wanted] = event
    done = got["done"]
    compiled, eager = max(done["compiled"]), max(done["eager"])
    return {
        "images_per_s": compiled,
        "rates": done["compiled"],
        "eager_images_per_s": eager,
        "eager_rates": done["eager"],
        "x_eager": compiled / eager,
        "compile_s": got["compiled"]["seconds"],
    }


def _stop_group(child: subprocess.Popen) -> None:
    """The child's process group (the child and any compile workers it left), stopped."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.pid, signal.SIGKILL)
    child.wait()


def compiled_child(spec_path: Path) -> int:
    """The child process of `compiled_steps`: JSON lines on stdout (started, compiled, done)."""

    def emit(**event: Any) -> None:
        print(json.dumps(event), flush=True)

    spec = json.loads(spec_path.read_text())
    data = np.load(spec["data"])
    pixels, labels = data["pixels"], data["labels"]
    flags = VARIANTS[spec["variant"]]
    eager = Steps(spec["backbone"], pixels, labels, *flags, spec["steps"])
    compiled = Steps(spec["backbone"], pixels, labels, *flags, spec["steps"], compile_model=True)
    emit(event="started")
    seconds = timed(lambda: compiled.step(*compiled.batches[0]))  # compiles forward + backward
    emit(event="compiled", seconds=seconds)
    sides = {"eager": eager.rate, "compiled": compiled.rate}
    rates = interleaved(sides, spec["rounds"], f"torch.compile({spec['variant']})")
    emit(event="done", **rates)
    return 0


# --- The bench ----------------------------------------------------------------------------------


def engines_bench(
    settings: EngineSettings, results: dict[str, Any], save: Callable[[], None]
) -> dict[str, Any]:
    """Parts 1-5 into `results` (results["engines"] of the bench), saved after each."""
    engines, notes = usable_engines()
    bf16 = cpu_has_bf16()
    paths, labels = photos(settings.root, settings.images)
    out: dict[str, Any] = {
        "settings": {
            "backbones": settings.backbones,
            "images": len(paths),
            "image_size": settings.image_size or "native",
            "batch_size": BATCH_SIZE,
            "rounds": settings.rounds,
            "labelled": settings.labelled,
            "cpu_bf16": bf16,
            "torch_threads": torch.get_num_threads(),
            "finetune": {
                "backbone": settings.finetune_backbone,
                "image_size": settings.image_size or FINETUNE_SIZE,
                "batch": FINETUNE_BATCH,
                "timed_steps": settings.finetune_steps,
                "compile_timeout_s": settings.compile_timeout_s,
            },
        },
        "notes": notes,
        "features": [],
        "predict": [],
        "probe": [],
    }
    results["engines"] = out

    log.info("Engines bench: decoding %d photos, %d rounds per side", len(paths), settings.rounds)
    out["decode"] = decode_part(paths, settings.rounds)
    save()
    # Every size decoded up front, before OpenVINO starts its threads (the decode forks).
    sizes = {name: settings.image_size or native_resolution(name) for name in settings.backbones}
    tune_size = settings.image_size or FINETUNE_SIZE
    photos_at = {size: decoded(paths, labels, size) for size in {*sizes.values(), tune_size}}
    for name, size in sizes.items():
        pixels, kept = photos_at[size]
        for part, rows in backbone_parts(settings, name, pixels, kept, engines).items():
            out[part] += rows
        save()
    pixels, kept = photos_at[tune_size]
    out["finetune"], more = finetune_part(settings, pixels, kept, bf16)
    out["notes"] += more
    save()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.engines",
        description="The engines bench's torch.compile child (run by `python -m benchmarks.run "
        "--only engines`).",
    )
    parser.add_argument("--compiled-steps", type=Path, required=True, help="its spec (JSON)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    return compiled_child(args.compiled_steps)


if __name__ == "__main__":
    sys.exit(main())
