"""The mask PNG writer: standard PNGs that decode to exactly the pixels written."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from clipseg_serve.model.codecs.png import gray_png, packed_gray_png
from clipseg_serve.model.codecs.rle import encode_png_packed

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


@pytest.mark.parametrize("width", [1, 8, 37, 1920])
def test_one_bit_pngs_are_the_packed_rows_and_decode_to_the_mask(width):
    rng = np.random.default_rng(width)
    mask = rng.random((23, width)) > 0.6
    packed = np.packbits(mask, axis=-1)
    if width % 8:
        packed[:, -1] |= (1 << (-width % 8)) - 1  # junk in the padding bits
    data = encode_png_packed(packed, width, bits=1)
    image = Image.open(io.BytesIO(data))
    assert image.mode == "1" and image.size == (width, 23)
    assert np.array_equal(np.asarray(image), mask)
    # The same pixels as the 8-bit PNG, as booleans.
    eight = np.asarray(Image.open(io.BytesIO(encode_png_packed(packed, width))))
    assert np.array_equal(eight > 0, mask)
    # Padding bits never reach the file: it depends on the mask alone.
    assert data == encode_png_packed(np.packbits(mask, axis=-1), width, bits=1)


def test_png_masks_have_8_or_1_bits():
    with pytest.raises(ValueError, match="8 or 1"):
        encode_png_packed(np.zeros((2, 1), dtype=np.uint8), 5, bits=4)
