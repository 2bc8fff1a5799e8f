"""The mask PNG writer: standard PNGs that decode to exactly the pixels written."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from model.png import gray_png, packed_gray_png

SHAPES = [(1, 1), (1, 9), (9, 1), (17, 13), (64, 33), (3, 1000)]


def _decode(data: bytes) -> Image.Image:
    Image.open(io.BytesIO(data)).verify()  # checksums and chunk layout
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


@pytest.mark.parametrize("shape", SHAPES)
def test_gray_png_round_trips_every_byte_value(shape):
    pixels = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    image = _decode(gray_png(pixels))
    assert image.mode == "L" and image.size == (shape[1], shape[0])
    assert np.array_equal(np.asarray(image), pixels)


@pytest.mark.parametrize("shape", SHAPES)
def test_packed_mask_png_is_mode_l_0_255(shape):
    mask = np.random.default_rng(sum(shape)).random(shape) < 0.5
    image = _decode(packed_gray_png(np.packbits(mask, axis=-1), shape[1]))
    assert image.mode == "L"
    assert np.array_equal(np.asarray(image), mask.astype(np.uint8) * 255)
