"""Which inference engine runs a forward pass that trains nothing  (conf/inference/).

Frozen-backbone features, a kNN head's features, `predict` and the served model only run a network
forwards. On a CPU, OpenVINO runs those passes many times faster than PyTorch eager (bf16 where the
CPU has it: docs/caches_and_bench.md); on a GPU, PyTorch does. `choose` resolves the config's
`engine` and `precision` (either may be `auto`) into the `Engine` that runs; `compile_images`
(models of uint8 NHWC image batches) hands back a `Compiled` pass through it. An engine that
cannot run a model (OpenVINO missing, a layer it cannot convert) falls back to PyTorch with one
log line: a run never fails for that.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fashion_sweeps.data.array_store import release
from fashion_sweeps.errors import UserError

log = logging.getLogger(__name__)

ENGINES = ("auto", "torch", "openvino")
PRECISIONS = ("auto", "f32", "bf16")
# The served model and `predict` read these (a model loaded outside a run has no config).
ENGINE_ENV = "FASHION_SWEEPS_INFERENCE_ENGINE"
PRECISION_ENV = "FASHION_SWEEPS_INFERENCE_PRECISION"


class InferenceConfigError(UserError, ValueError):
    """`inference.engine` or `inference.precision` holds an unknown value."""


@dataclass(frozen=True)
class Engine:
    """An engine and the precision it computes in, both resolved (no `auto`)."""

    name: str
    precision: str

    @property
    def params(self) -> dict[str, str]:
        """What a run records of it (MLflow params)."""
        return {"inference_engine": self.name, "inference_precision": self.precision}

    def __str__(self) -> str:
        return f"{self.name} {self.precision}"


# PyTorch eager fp32: the reference every other engine is compared with, and the fallback.
TORCH_F32 = Engine("torch", "f32")
# Class probabilities computed in bf16 whose two best classes are closer than this are computed
# again in f32: bf16 moved the top two by up to 0.19 on the clothing champion's 5,756 photos
# (docs/caches_and_bench.md), and the labels must be PyTorch's.
RECHECK_MARGIN = 0.2


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512_BF16 or AMX): oneDNN's own test."""
    return bool(
        torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    )


def openvino_installed() -> bool:
    return importlib.util.find_spec("openvino") is not None


def _checked(value: object, allowed: tuple[str, ...], key: str) -> str:
    text = str(value).lower()
    if text not in allowed:
        raise InferenceConfigError(
            f"inference.{key}={value!r}: use one of {', '.join(allowed)} (auto: OpenVINO on a "
            "CPU, PyTorch on a GPU, bf16 where the CPU computes it)."
        )
    return text


def choose(engine: object = "auto", precision: object = "auto", device: str = "cpu") -> Engine:
    """The engine that runs on `device` ("cpu" or "cuda") for the configured values."""
    engine = _checked(engine, ENGINES, "engine")
    precision = _checked(precision, PRECISIONS, "precision")
    if engine == "auto":
        engine = "openvino" if device == "cpu" and openvino_installed() else "torch"
    elif engine == "openvino" and not openvino_installed():
        log.warning("inference.engine=openvino: OpenVINO is not installed; running PyTorch.")
        engine = "torch"
    if engine == "openvino" and device != "cpu":
        log.warning("inference.engine=openvino runs on the CPU while this run uses a GPU.")
    if precision == "auto":
        # PyTorch keeps fp32: its features stay those of training without any engine.
        precision = "bf16" if engine == "openvino" and cpu_has_bf16() else "f32"
    elif precision == "bf16" and device == "cpu" and not cpu_has_bf16():
        log.warning("inference.precision=bf16: this CPU has no bf16 instructions; using f32.")
        precision = "f32"
    return Engine(engine, precision)


def from_config(inference: object, device: str = "cpu") -> Engine:
    """`choose` for a run's `inference` node (absent: auto, auto)."""
    get = getattr(inference, "get", None)
    if get is None:
        return choose(device=device)
    return choose(get("engine", "auto"), get("precision", "auto"), device)


def from_environment() -> Engine:
    """`choose` for a model loaded outside a run (`mlflow models serve`, `predict`)."""
    return choose(os.environ.get(ENGINE_ENV, "auto"), os.environ.get(PRECISION_ENV, "auto"))


@contextlib.contextmanager
def environment(engine: str, precision: str = "auto") -> Iterator[None]:
    """Models loaded inside the block run on `engine` (e.g. MLflow's check of a model it logs)."""
    saved = {k: os.environ.get(k) for k in (ENGINE_ENV, PRECISION_ENV)}
    os.environ[ENGINE_ENV], os.environ[PRECISION_ENV] = engine, precision
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """`model` in eval mode inside the block; every submodule's own mode back after it (a
    frozen backbone keeps its blocks in eval while its owner trains)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, mode in modes:
            module.training = mode


class ImagesIn(nn.Module):
    """uint8 image batches (N, H, W, C), as the decoded arrays hold them, into `model`: the layout
    change is part of the converted graph, so no batch is copied on the way in."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.permute(0, 3, 1, 2))


@dataclass
class Compiled:
    """A model ready to run on `engine` (what runs, after any fallback)."""

    engine: Engine
    run_batches: Callable[
        [Iterator[tuple[int, np.ndarray]], Callable[[int, np.ndarray], None]], None
    ]

    def map(
        self,
        pixels: np.ndarray,
        batch_size: int,
        out: np.ndarray,
        on_batch: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """Every image of `pixels` (N, H, W, C) uint8 through the model into `out` (N, ...),
        `batch_size` at a time; `on_batch(done)` after each batch arrives (progress, interrupts)."""
        done = [0]

        def batches() -> Iterator[tuple[int, np.ndarray]]:
            for start in range(0, len(pixels), batch_size):
                yield start, np.ascontiguousarray(pixels[start : start + batch_size])
                # Handed over (engines copy their input): a memory-mapped batch's pages go.
                release(pixels[start : start + batch_size])

        def store(start: int, result: np.ndarray) -> None:
            out[start : start + len(result)] = result
            done[0] += len(result)
            if on_batch is not None:
                on_batch(done[0])

        self.run_batches(batches(), store)
        return out


def torch_compiled(model: nn.Module, engine: Engine) -> Compiled:
    """`model` (images NHWC in) run by PyTorch eager on the CPU, in eval mode, fp32 or bf16
    autocast."""

    @torch.inference_mode()
    def run(batches: Iterator[tuple[int, np.ndarray]], store: Callable[[int, np.ndarray], None]):
        with eval_mode(model):
            for start, batch in batches:
                with torch.autocast("cpu", torch.bfloat16, enabled=engine.precision == "bf16"):
                    result = model(torch.from_numpy(batch))
                store(start, result.float().numpy())

    return Compiled(Engine("torch", engine.precision), run)


def compile_images(model: nn.Module, engine: Engine, image_shape: tuple[int, int, int]) -> Compiled:
    """`model` (uint8 NCHW images in) compiled for `engine`, taking uint8 NHWC batches of
    `image_shape` (H, W, C). OpenVINO that cannot convert it: PyTorch, said in one line."""
    images_in = ImagesIn(model)
    if engine.name == "openvino":
        from fashion_sweeps.inference.openvino_engine import openvino_compiled

        try:
            return openvino_compiled(images_in, engine, image_shape, source=model)
        except Exception as err:  # conversion raises many types (unsupported ops, tracing)
            log.warning(
                "OpenVINO cannot run %s (%s: %s); running PyTorch instead.",
                type(model).__name__,
                type(err).__name__,
                str(err).splitlines()[0][:200] if str(err) else "",
            )
            return torch_compiled(images_in, TORCH_F32)
    return torch_compiled(images_in, engine)


@dataclass
class Rechecked:
    """Class probabilities from a bf16 `fast` pass, where the two most probable classes of an image
    are within `margin`, replaced by those of an f32 pass (`exact()`, compiled when first needed):
    bf16's speed with f32's labels. `rechecked` counts the images computed twice."""

    fast: Compiled
    exact: Callable[[], Compiled]
    margin: float
    rechecked: int = 0

    @property
    def engine(self) -> Engine:
        return self.fast.engine

    def map(
        self,
        pixels: np.ndarray,
        batch_size: int,
        out: np.ndarray,
        on_batch: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        self.fast.map(pixels, batch_size, out, on_batch)
        unsure = np.flatnonzero(top_two_gap(out) < self.margin)
        if len(unsure):
            out[unsure] = self.exact().map(pixels[unsure], batch_size, np.empty_like(out[unsure]))
            self.rechecked += len(unsure)
        return out


def top_two_gap(probs: np.ndarray) -> np.ndarray:
    """Per row, the most probable class's probability minus the second's (1 with one class)."""
    if probs.shape[1] < 2:
        return np.ones(len(probs), dtype=probs.dtype)
    top = np.partition(probs, -2, axis=1)
    return top[:, -1] - top[:, -2]


def compile_probabilities(
    model: nn.Module,
    engine: Engine,
    image_shape: tuple[int, int, int],
    margin: float = RECHECK_MARGIN,
) -> Compiled | Rechecked:
    """`compile_images` for a model whose outputs are class probabilities (predict, the served
    model): on a bf16 engine, its close calls are computed again in f32 (`margin` 0: never)."""
    fast = compile_images(model, engine, image_shape)
    if fast.engine.precision != "bf16" or margin <= 0:
        return fast
    exact = functools.cache(
        lambda: compile_images(model, Engine(fast.engine.name, "f32"), image_shape)
    )
    return Rechecked(fast, exact, margin)
