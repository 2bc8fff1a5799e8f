"""The warm-up calibration: every term measured on this device, and predictions of real
batches of different kinds within a factor of their measured time."""

from __future__ import annotations

import math
import statistics
import time

import numpy as np
import pytest

from clipseg_serve.model.inference.batch import SegmentRequest
from clipseg_serve.model.inference.predictor import Predictor
from clipseg_serve.model.masks.postprocess import PostProcess, Refine
from clipseg_serve.service.calibrate import calibrate
from clipseg_serve.service.cost import HOST_TERMS, TERMS, work_for
from tests.conftest import random_image

#: Terms the tiny model's calibration must find a cost for (per_batch, per_image and
#: per_row may split the tiny backbone's few milliseconds between them any way).
PIXEL_TERMS = (
    "per_render_mp",
    "per_guided_mp",
    "per_guided_work_mp",
    "per_pamr_mp",
    "per_pamr_setup_mp",
    "per_shape_mp",
    "per_instances_mp",
)


@pytest.fixture(scope="module")
def calibrated(tiny_model):
    predictor = Predictor(tiny_model, device="cpu", dtype="float32")
    cost, host = calibrate(predictor)
    return predictor, cost, host


def test_every_term_is_measured(calibrated):
    _, cost, host = calibrated
    model_terms, host_terms = cost.coefficients, host.coefficients
    assert list(model_terms) == list(TERMS) and list(host_terms) == list(HOST_TERMS)
    for value in (*model_terms.values(), *host_terms.values()):
        assert math.isfinite(value) and value >= 0.0
    for term in PIXEL_TERMS:
        assert model_terms[term] > 0.0, term
    assert model_terms["per_batch"] + model_terms["per_image"] > 0.0
    assert model_terms["per_text"] > 0.0 and model_terms["per_support"] > 0.0
    for term in (
        "per_decode_mb",
        "per_png_mp",
        "per_rle_mp",
        "per_polygon_mp",
        "per_soft_mp",
        "per_instances_mp",
    ):
        assert host_terms[term] > 0.0, term


@pytest.mark.parametrize(
    ("size", "post"),
    [
        ((1448, 1448), PostProcess()),
        ((480, 640), PostProcess(refine=Refine.PAMR, pamr_iterations=30)),
        ((1448, 1448), PostProcess(refine=Refine.GUIDED, radius=2)),
        ((1448, 1448), PostProcess(instances=True, fill_holes=True)),
    ],
    ids=["plain 2 MP", "pamr", "guided small radius", "instances + holes"],
)
def test_the_calibrated_model_predicts_real_batches(calibrated, size, post):
    """A wide band (the target is 0.5-2x on a quiet machine): this runs beside other
    tests, and it catches estimates off by an order of magnitude, as PAMR's was."""
    predictor, cost, _ = calibrated
    height, width = size
    prepared = predictor.prepare_image(random_image(width, height), guide=True)
    request = SegmentRequest(
        prepared.pixels, prepared.size, "k", prompts=("thing",), post=post, guide=prepared.guide
    )
    predictor.segment_batch([request])  # cached text, allocated buffers
    times = []
    for _ in range(3):
        start = time.perf_counter()
        predictor.segment_batch([request])
        times.append(time.perf_counter() - start)
    work = work_for(size, 1, 1, post=post, grid=predictor.config.grid_size)
    ratio = cost.predict(work) / statistics.median(times)
    assert 0.25 < ratio < 4.0, (ratio, np.round(times, 4))
