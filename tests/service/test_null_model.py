"""The benchmarks' null model: real service stack, no model compute — and never selectable
from the service's own configuration."""

from __future__ import annotations

import io
import re
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from bench.null_model import NullPredictor, ellipse_logits, null_factory
from clipseg_serve.model.codecs.rle import decode_rle
from clipseg_serve.model.errors import ClipSegError
from clipseg_serve.service.app import create_app
from clipseg_serve.service.state import default_predictor_factory
from tests.service.conftest import make_settings
from tests.service.live import LiveServer

ROOT = Path(__file__).resolve().parents[2]


def _jpeg(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (90, 120, 150)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def test_null_model_serves_real_masks_at_the_image_size():
    app = create_app(make_settings(), null_factory)
    with LiveServer(app) as server:
        response = httpx.post(
            server.url + "/v1/segment/text",
            files={"image": ("a.jpg", _jpeg(640, 360), "image/jpeg")},
            data={"prompt": "anything", "format": "rle", "threshold": "0.5"},
            timeout=30,
        )
    assert response.status_code == 200, response.text
    (entry,) = response.json()["masks"]
    mask = decode_rle(entry["rle"])
    assert mask.shape == (360, 640)
    # At p > 0.5 the ellipse (semi-axes 0.35 W, 0.25 H, centred) covers pi * 0.35 * 0.25.
    assert entry["area"] == int(mask.sum())
    assert abs(mask.mean() - np.pi * 0.35 * 0.25) < 0.01
    assert mask[180, 320] and not mask[0, 0]


def test_null_predictor_prepares_the_released_input_size():
    prepared = NullPredictor().prepare_image(_jpeg(1920, 1080))
    assert prepared.pixels.shape == (3, 352, 352)
    assert prepared.size == (1080, 1920)
    assert ellipse_logits().shape == (352, 352)


@pytest.mark.parametrize("weights", ["null", "null:", "null:tiny", "bench.null_model"])
def test_no_weights_source_selects_the_null_model(weights):
    with pytest.raises(ClipSegError):
        default_predictor_factory(make_settings(weights=weights))


def test_the_default_app_uses_the_real_factory():
    assert create_app(make_settings()).state.service.factory is default_predictor_factory


def test_nothing_shipped_imports_the_benchmarks():
    pattern = re.compile(r"^\s*(from|import)\s+bench\b|null_model|NullPredictor", re.M)
    for package in ("model", "service", "training"):
        for path in (ROOT / package).rglob("*.py"):
            assert not pattern.search(path.read_text()), f"{path} refers to the benchmarks"
