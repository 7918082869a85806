"""A PyTorch model run by OpenVINO on the CPU: converted once (`ov.convert_model`), compiled for
throughput, fed by a ring of asynchronous requests so both cores stay busy while batches are handed
over."""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
import weakref
from collections.abc import Callable, Iterator

import numpy as np
import openvino as ov
import torch
from torch import nn

from fashion_sweeps.inference.engines import Compiled, Engine, eval_mode

log = logging.getLogger(__name__)

# OpenVINO's throughput mode wants small requests in flight together: 2 requests of 16 images
# beat one of 64 by 1.8x on 2 cores, and requests of 4 beat those of 16 by a further 1.1x
# (docs/caches_and_bench.md).
REQUEST_IMAGES = 4


def convert(model: nn.Module, image_shape: tuple[int, int, int]) -> ov.Model:
    """`model` (uint8 NHWC batches of `image_shape` in) as an OpenVINO model of any batch size."""
    example = torch.zeros((2, *image_shape), dtype=torch.uint8)
    with eval_mode(model), root_logger_kept(), warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracing warnings about Python-side shape checks
        return ov.convert_model(
            model,
            example_input=example,
            input=[(ov.PartialShape([-1, *image_shape]), ov.Type.u8)],
        )


@contextlib.contextmanager
def root_logger_kept() -> Iterator[None]:
    """The root logger as it was, after a conversion that failed: OpenVINO's PyTorch frontend
    leaves it at ERROR, which would mute the fallback's warning and every later INFO line."""
    root = logging.getLogger()
    level, handlers, filters = root.level, list(root.handlers), list(root.filters)
    try:
        yield
    finally:
        root.setLevel(level)
        root.handlers[:], root.filters[:] = handlers, filters


def compile_model(ov_model: ov.Model, precision: str) -> ov.CompiledModel:
    hints = {"PERFORMANCE_HINT": "THROUGHPUT", "INFERENCE_PRECISION_HINT": precision}
    return ov.Core().compile_model(ov_model, "CPU", hints)


def _split(batches: Iterator[tuple[int, np.ndarray]]) -> Iterator[tuple[int, np.ndarray]]:
    for start, batch in batches:
        for offset in range(0, len(batch), REQUEST_IMAGES):
            yield start + offset, batch[offset : offset + REQUEST_IMAGES]


def _collect(
    request: ov.InferRequest, start: int | None, store: Callable[[int, np.ndarray], None]
) -> None:
    """Wait for `request` (the GIL released) and hand its output over, if it holds a batch."""
    if start is not None:
        request.wait()
        store(start, request.get_output_tensor(0).data.copy())


# Models converted, by the PyTorch model they came from and image shape: predict compiles one
# model twice (bf16, and f32 for its close calls), and converting is most of a compile's time.
_converted: weakref.WeakKeyDictionary[nn.Module, dict[tuple[int, ...], ov.Model]] = (
    weakref.WeakKeyDictionary()
)


def openvino_compiled(
    model: nn.Module, engine: Engine, image_shape: tuple[int, int, int], source: nn.Module
) -> Compiled:
    """`model` (made from `source`: converted once per source and shape) compiled in
    `engine.precision`; a `Compiled` that streams batches through a ring of OpenVINO's optimal
    number of asynchronous requests."""
    began = time.perf_counter()
    shapes = _converted.setdefault(source, {})
    if image_shape not in shapes:
        shapes[image_shape] = convert(model, image_shape)
    compiled = compile_model(shapes[image_shape], engine.precision)
    requests = compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")
    log.info(
        "OpenVINO %s: %s compiled in %.1fs (%d requests in flight)",
        engine.precision,
        type(model.model if hasattr(model, "model") else model).__name__,
        time.perf_counter() - began,
        requests,
    )

    def run(
        batches: Iterator[tuple[int, np.ndarray]], store: Callable[[int, np.ndarray], None]
    ) -> None:
        # Requests in a ring, each waited for before it is reused, with no Python callback: a
        # callback needs the GIL on OpenVINO's threads, and freeing a compiled model joins those
        # threads while holding it (a deadlock seen in the test suite).
        ring = [compiled.create_infer_request() for _ in range(requests)]
        pending: list[int | None] = [None] * requests
        submitted = 0
        for start, batch in _split(batches):
            slot = submitted % requests
            _collect(ring[slot], pending[slot], store)
            ring[slot].start_async({0: batch})  # copies its input
            pending[slot] = start
            submitted += 1
        for k in range(requests):  # the rest, oldest first
            slot = (submitted + k) % requests
            _collect(ring[slot], pending[slot], store)

    return Compiled(engine, run)
