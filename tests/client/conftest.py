"""Client fixtures: the tiny-model server on loopback (shared by a module's tests), and
images to send it."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from clipseg_serve.model.inference.predictor import Predictor
from clipseg_serve.service.app import create_app
from tests.service.conftest import make_settings
from tests.service.live import LiveServer


def live_server(model, **settings) -> LiveServer:
    """The app around ``model`` (CPU) with ``settings``, to run with ``with``."""

    def factory(_):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return Predictor(model, device="cpu", dtype="float32", text_cache_size=64)

    return LiveServer(create_app(make_settings(**settings), factory))


@pytest.fixture(scope="module")
def server(tiny_model):
    """A live server (tiny random model, CPU); one per test module, as it is stateless
    for these tests and starting one costs a warm-up calibration."""
    with live_server(tiny_model) as live:
        yield live


@pytest.fixture(scope="session")
def photo() -> np.ndarray:
    """A uint8 RGB image (H=48, W=64) with structure (a bright disc on a gradient), so
    probability maps vary across it."""
    y, x = np.mgrid[0:48, 0:64]
    image = np.stack([x * 4, y * 5, (x + y) * 2], axis=-1).astype(np.uint8)
    disc = (x - 40) ** 2 + (y - 20) ** 2 < 12**2
    image[disc] = (250, 40, 30)
    return image


@pytest.fixture(scope="session")
def support() -> tuple[np.ndarray, np.ndarray]:
    """A support image (40x56) and its bool mask (a square object)."""
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
    mask = np.zeros((40, 56), dtype=bool)
    mask[8:28, 10:34] = True
    image[mask] = (30, 200, 60)
    return image, mask
