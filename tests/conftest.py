"""Shared fixtures: a tiny random CLIPSeg (CPU, seconds) and image helpers."""

from __future__ import annotations

import io
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from clipseg_serve.model.config import get_variant
from clipseg_serve.model.inference.predictor import Predictor
from clipseg_serve.model.weights.loader import build_random


@pytest.fixture(scope="session", autouse=True)
def calibrate_once_per_model():
    """Apps started in this process calibrate each kind of predictor once: the suite
    starts hundreds of them on the same model and CPU, and each calibration takes ~2 s.
    The calibration's own tests call ``clipseg_serve.service.calibrate.calibrate`` directly."""
    import clipseg_serve.service.calibrate
    import clipseg_serve.service.state

    measured: dict[tuple, object] = {}
    calibrate = clipseg_serve.service.calibrate.calibrate

    def once(predictor):
        config = predictor.config
        key = (type(predictor), predictor.backend, config.input_size, config.grid_size)
        if key not in measured:
            measured[key] = calibrate(predictor)
        cost, host = measured[key]
        # Fresh copies: each app learns from its own batches.
        return type(cost)(list(cost.coefficients.values())), type(host)(
            list(host.coefficients.values())
        )

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(clipseg_serve.service.state, "calibrate", once)
        yield


@pytest.fixture(scope="session")
def tiny_model():
    """The registered ``tiny`` variant with seeded random weights, in eval mode."""
    return build_random(get_variant("tiny"), seed=0).eval()


@pytest.fixture(scope="session")
def tiny_onnx(tiny_model, tmp_path_factory):
    """``tiny_model`` exported (``model.onnx.export``) with dynamic int8 vision graphs: the
    folder the onnx backend loads."""
    import contextlib
    import sys

    from clipseg_serve.model.onnx.export import export_graphs
    from clipseg_serve.model.onnx.quantize import quantize_export

    folder = tmp_path_factory.mktemp("tiny-onnx")
    with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
        warnings.simplefilter("ignore")
        export_graphs(tiny_model, folder)
    quantize_export(folder, "dynamic")
    return folder


@pytest.fixture
def predictor(tiny_model):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Predictor(tiny_model, device="cpu", dtype="float32", text_cache_size=64)


def random_image(width: int, height: int, seed: int = 0, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4}.get(mode, 3)
    pixels = rng.integers(0, 256, (height, width, channels), dtype=np.uint8)
    return Image.fromarray(pixels, mode)


def encode(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A valid PNG header declaring ``width x height`` RGB with almost no data behind it.

    PIL opens it lazily from the header; decoding it would fail as truncated, so a size
    error (rather than a decode error) proves the check ran before decoding.
    """

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
