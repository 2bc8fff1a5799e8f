"""Shared fixtures: a tiny random CLIPSeg (CPU, seconds) and image helpers."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
from PIL import Image

from model.config import get_variant
from model.predictor import Predictor
from model.weights.loader import build_random


@pytest.fixture(scope="session")
def tiny_model():
    """The registered ``tiny`` variant with seeded random weights, in eval mode."""
    return build_random(get_variant("tiny"), seed=0).eval()


@pytest.fixture
def predictor(tiny_model):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Predictor(tiny_model, device="cpu", text_cache_size=64)


def random_image(width: int, height: int, seed: int = 0, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4}.get(mode, 3)
    pixels = rng.integers(0, 256, (height, width, channels), dtype=np.uint8)
    return Image.fromarray(pixels, mode)


def encode(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()
