"""Warm-up that measures: real batches that each add one kind of work to a baseline.

Run on the model thread before /readyz turns 200. Every calibration batch runs once to
compile kernels and fill allocators (not measured), then ``REPEATS`` times; the median of
each is compared with the one-image, one-prompt baseline, one factor at a time: an extra
image, seven extra decoder rows, a support image, and — timed on rendering alone, where
it is not drowned by the backbone's noise — four extra megapixels of output. The result
is the cost model's prior on this device, so admission is right from the first request;
the traffic then refines it (``service.cost``).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

from model.batch import SegmentRequest
from model.predictor import Predictor

from .cost import CostModel

#: A deliberately optimistic prior for when no calibration ran (warm-up off): admission
#: then refuses nothing until the first batches have taught the model the real costs.
GENERIC_PRIOR = (0.001, 0.005, 0.0005, 0.001, 0.005)
#: Measured runs of each calibration batch (their median counts).
REPEATS = 3
#: Output side of the rendering measurement (4 megapixels).
LARGE_SIDE = 2048
EXTRA_ROWS = 7


def _blank(width: int, height: int) -> Image.Image:
    return Image.fromarray(np.full((height, width, 3), 127, dtype=np.uint8))


def _median_seconds(run: Callable[[], object]) -> float:
    run()  # compile / allocate; not measured
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def calibrate(predictor: Predictor) -> CostModel:
    """Measure this device (blocking; call on the model thread) -> a calibrated model."""
    query = predictor.prepare_image(_blank(64, 64))
    mask = np.zeros((64, 64), dtype=bool)
    mask[16:48, 16:48] = True
    support = predictor.prepare_support(_blank(64, 64), mask)[None]

    def batch(*requests: SegmentRequest) -> Callable[[], object]:
        return lambda: predictor.segment_batch(list(requests))

    def text(key: str, prompts: int = 1) -> SegmentRequest:
        names = tuple(f"calibration {i}" for i in range(prompts))
        return SegmentRequest(query.pixels, (64, 64), key, prompts=names)

    base = _median_seconds(batch(text("a")))
    image = _median_seconds(batch(text("a"), text("b"))) - base
    rows = (_median_seconds(batch(text("a", 1 + EXTRA_ROWS))) - base) / EXTRA_ROWS
    supports = (
        _median_seconds(batch(SegmentRequest(query.pixels, (64, 64), "a", supports=support))) - base
    )
    megapixel = _render_seconds_per_megapixel(predictor)
    predictor.clear_text_cache()
    image, rows, supports = max(image, 0.0), max(rows, 0.0), max(supports, 0.0)
    per_batch = max(base - image - rows, 0.0)
    return CostModel((per_batch, image, rows, megapixel, supports))


def _render_seconds_per_megapixel(predictor: Predictor) -> float:
    size = predictor.config.input_size
    logits = torch.zeros((1, size, size), device=predictor.device)
    small = _median_seconds(lambda: predictor.render(logits, (64, 64)))
    large = _median_seconds(lambda: predictor.render(logits, (LARGE_SIDE, LARGE_SIDE)))
    megapixels = (LARGE_SIDE * LARGE_SIDE - 64 * 64) / 1e6
    return max(large - small, 0.0) / megapixels
