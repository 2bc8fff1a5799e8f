"""Warm-up that measures: a few real batches, each varying one term of the cost model.

Run on the model thread before /readyz turns 200. The first batch compiles kernels and
fills allocators (its time is discarded); the others (one more image, more decoder rows,
a large output, a support image) give the cost model a prior fitted on this device, so
admission is right from the first request rather than after the traffic has taught it.
"""

from __future__ import annotations

import time

import numpy as np
from PIL import Image

from model.batch import SegmentRequest
from model.predictor import Predictor

from .cost import CostModel, batch_work
from .jobs import request_work

#: A deliberately optimistic prior for when no calibration ran (warm-up off): admission
#: then refuses nothing until the first batches have taught the model the real costs.
GENERIC_PRIOR = (0.001, 0.005, 0.0005, 0.001, 0.005)


def _blank(width: int, height: int) -> Image.Image:
    return Image.fromarray(np.full((height, width, 3), 127, dtype=np.uint8))


def calibration_batches(predictor: Predictor) -> list[list[SegmentRequest]]:
    """Batches that each add one kind of work to a one-image, one-prompt baseline."""
    query = predictor.prepare_image(_blank(64, 64))
    mask = np.zeros((64, 64), dtype=bool)
    mask[16:48, 16:48] = True
    support = predictor.prepare_support(_blank(64, 64), mask)[None]

    def request(key: str, prompts: int = 1, size: int = 64, **extra) -> SegmentRequest:
        names = tuple(f"calibration {i}" for i in range(prompts))
        return SegmentRequest(query.pixels, (size, size), key, prompts=names, **extra)

    return [
        [request("a")],
        [request("a"), request("b")],
        [request("a", prompts=8)],
        [request("a", size=1024)],
        [SegmentRequest(query.pixels, (64, 64), "a", supports=support)],
    ]


def calibrate(predictor: Predictor) -> CostModel:
    """Run the calibration batches (blocking; call on the model thread) -> a cost model
    whose prior is their least-squares fit."""
    batches = calibration_batches(predictor)
    predictor.segment_batch(batches[0])  # warm-up: compile, allocate; not measured
    fitted = CostModel(GENERIC_PRIOR)
    for batch in batches:
        start = time.perf_counter()
        predictor.segment_batch(batch)
        work = batch_work((request_work(r), r.image_key) for r in batch)
        fitted.observe(work, time.perf_counter() - start)
    predictor.clear_text_cache()
    return CostModel(tuple(fitted.coefficients.values()))
