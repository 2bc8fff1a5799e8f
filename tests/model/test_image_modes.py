"""Banded mode conversion: bit-for-bit equal to the whole-image formulas, in bounded memory."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from PIL import Image

from clipseg_serve.model.imaging import image_modes
from clipseg_serve.model.imaging.image_modes import (
    iter_row_bands,
    map_row_bands,
    reducible_8bit,
    to_rgb,
    upright,
    upright_array,
)

# ------------------------------------------------------------- reference (the old code)
# The whole-image implementation this module had before the banded rewrite, kept verbatim
# as the definition of the expected output.


def ref_scale_uint16(values: np.ndarray) -> np.ndarray:
    wide = values.astype(np.uint32)
    return ((wide * 255 + 32767) // 65535).astype(np.uint8)


def ref_scale_int32(values: np.ndarray) -> np.ndarray:
    values = values.astype(np.int64)
    lo, hi = int(values.min()), int(values.max())
    if lo >= 0 and hi <= 255:
        return values.astype(np.uint8)
    if lo >= 0 and hi <= 65535:
        return ref_scale_uint16(values)
    if hi == lo:
        return np.zeros(values.shape, dtype=np.uint8)
    stretched = (values - lo) * 255.0 / (hi - lo)
    return np.rint(stretched).astype(np.uint8)


def ref_scale_float(values: np.ndarray) -> np.ndarray:
    values = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    hi = float(values.max())
    if hi > 1.0:
        values = values / hi
    return np.rint(np.clip(values, 0.0, 1.0) * 255.0).astype(np.uint8)


def ref_to_rgb(image: Image.Image) -> np.ndarray:
    mode = image.mode
    if mode.startswith("I;16"):
        gray = ref_scale_uint16(np.asarray(image))
    elif mode == "I":
        gray = ref_scale_int32(np.asarray(image))
    else:
        gray = ref_scale_float(np.asarray(image))
    rgb = Image.fromarray(np.ascontiguousarray(gray, dtype=np.uint8)).convert("RGB")
    return np.asarray(rgb)


# ------------------------------------------------------------------------ test images

RNG = np.random.default_rng(1234)
SIZES = [(1, 1), (37, 23), (64, 5), (3, 101)]


def uint16_image(shape: tuple[int, int], mode: str) -> Image.Image:
    values = RNG.integers(0, 65536, shape, dtype=np.uint16)
    values.flat[0], values.flat[-1] = 0, 65535
    dtype = ">u2" if mode == "I;16B" else "<u2"
    return Image.frombytes(mode, shape[::-1], values.astype(dtype).tobytes())


def int32_image(shape: tuple[int, int], kind: str) -> Image.Image:
    if kind == "8bit":
        values = RNG.integers(0, 256, shape)
    elif kind == "16bit":
        values = RNG.integers(0, 65536, shape)
    elif kind == "negative":
        values = RNG.integers(-5000, 300, shape)
    elif kind == "large":
        values = RNG.integers(0, 2**31 - 1, shape)
    elif kind == "extremes":
        values = RNG.integers(-(2**31), 2**31, shape)
        values.flat[0], values.flat[-1] = -(2**31), 2**31 - 1
    else:  # constant, outside 0..65535
        values = np.full(shape, -7)
    return Image.fromarray(values.astype(np.int32), "I")


def float_image(shape: tuple[int, int], kind: str) -> Image.Image:
    if kind == "unit":
        values = RNG.uniform(-0.5, 1.0, shape)
    elif kind == "big":
        values = RNG.uniform(-10.0, 1000.0, shape)
    elif kind == "halves":
        # x * 255 within float32 rounding of a half-integer: float32 arithmetic would
        # round these onto .5 and change the result; the old float64 path does not.
        k = RNG.integers(0, 255, shape)
        values = (k + 0.5) / 255.0 + RNG.choice([-1, 0, 1], shape) * 2.0**-25
    elif kind == "nonfinite":
        values = RNG.uniform(0.0, 3.0, shape)
        flat = values.reshape(-1)
        flat[:: max(1, flat.size // 5)] = np.nan
        flat[1::7] = np.inf
        flat[2::11] = -np.inf
    elif kind == "all_nan":
        values = np.full(shape, np.nan)
    else:  # max exactly 1 with infinities that must not count as the max
        values = RNG.uniform(0.0, 1.0, shape)
        values.flat[0] = 1.0
        values.flat[-1] = np.inf
    return Image.fromarray(values.astype(np.float32), "F")


UINT16_CASES = [
    (f"{mode}-{s}", lambda s=s, m=mode: uint16_image(s, m))
    for mode in ("I;16", "I;16B", "I;16L")
    for s in SIZES
]
INT32_CASES = [
    (f"I-{kind}-{s}", lambda s=s, k=kind: int32_image(s, k))
    for kind in ("8bit", "16bit", "negative", "large", "extremes", "constant")
    for s in SIZES
]
FLOAT_CASES = [
    (f"F-{kind}-{s}", lambda s=s, k=kind: float_image(s, k))
    for kind in ("unit", "big", "halves", "nonfinite", "all_nan", "one_and_inf")
    for s in SIZES
]
CASES = UINT16_CASES + INT32_CASES + FLOAT_CASES


@pytest.mark.parametrize("band_pixels", [1, 40, 1 << 20], ids=["1-row", "partial", "default"])
@pytest.mark.parametrize(("name", "make"), CASES, ids=[name for name, _ in CASES])
def test_numeric_modes_match_the_whole_image_reference(
    name: str, make, band_pixels: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(image_modes, "_BAND_PIXELS", band_pixels)
    image = make()
    out = to_rgb(image)
    assert out.mode == "RGB" and out.size == image.size
    np.testing.assert_array_equal(np.asarray(out), ref_to_rgb(image))
    # The reduction path's 8-bit grey is the same grey.
    gray = reducible_8bit(image)
    assert gray.mode == "L"
    np.testing.assert_array_equal(np.asarray(gray), ref_to_rgb(image)[..., 0])


def test_statistics_are_global_not_per_band(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(image_modes, "_BAND_PIXELS", 4)  # one row per band
    # The max (4.0) is only in the last row: every earlier row must still be divided by it.
    values = np.array([[0.5, 1.0], [2.0, 4.0]], dtype=np.float32)
    gray = np.asarray(to_rgb(Image.fromarray(values)))[..., 0]
    np.testing.assert_array_equal(gray, [[32, 64], [128, 255]])
    ints = np.array([[0, 100], [200, -100]], dtype=np.int32)  # the min is in the last row
    gray = np.asarray(to_rgb(Image.fromarray(ints)))[..., 0]
    np.testing.assert_array_equal(gray, [[85, 170], [255, 0]])


@pytest.mark.parametrize(
    "make",
    [
        lambda: Image.fromarray(RNG.uniform(0, 5, (1000, 1000)).astype(np.float32)),
        lambda: Image.fromarray(RNG.integers(-9, 9**9, (1000, 1000)).astype(np.int32)),
        lambda: uint16_image((1000, 1000), "I;16"),
    ],
    ids=["F", "I", "I;16"],
)
def test_conversion_memory_is_the_output_plus_one_band(make, monkeypatch) -> None:
    monkeypatch.setattr(image_modes, "_BAND_PIXELS", 10_000)  # 10 rows of 1000
    image = make()
    tracemalloc.start()
    try:
        gray = reducible_8bit(image)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert gray.size == (1000, 1000)
    # numpy and bytes allocations are traced (PIL's own buffers are not): the 1 MB uint8
    # output plus band temporaries. The whole-image code made an 8 MB float64/int64 copy.
    assert peak < 1_500_000, peak


def test_row_bands_cover_the_image_in_order() -> None:
    image = Image.fromarray(np.arange(7 * 5, dtype=np.uint8).reshape(7, 5))
    bands = list(iter_row_bands(image, band_pixels=11))  # 2 rows of 5 per band
    assert [top for top, _ in bands] == [0, 2, 4, 6]
    assert np.array_equal(np.concatenate([b for _, b in bands]), np.asarray(image))
    doubled = map_row_bands(image, lambda b: b.astype(np.int32) * 2, np.int32, band_pixels=1)
    assert doubled.dtype == np.int32 and np.array_equal(doubled, np.asarray(image) * 2)


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("RGB", "RGB"),
        ("RGBA", "RGBA"),
        ("LA", "LA"),
        ("L", "L"),
        ("1", "L"),
        ("P", "RGB"),
        ("CMYK", "RGB"),
        ("YCbCr", "RGB"),
        ("PA", "RGB"),
        ("La", "RGB"),
        ("RGBa", "RGB"),
        ("I;16", "L"),
        ("I", "L"),
        ("F", "L"),
    ],
)
def test_reducible_8bit_modes(mode: str, expected: str) -> None:
    image = Image.new(mode, (4, 3))
    out = reducible_8bit(image)
    assert out.mode == expected
    # Whatever it picked, to_rgb of it is exactly to_rgb of the original.
    assert np.array_equal(np.asarray(to_rgb(out)), np.asarray(to_rgb(image)))


def test_transparent_colour_is_composited_before_reducing() -> None:
    image = Image.new("L", (4, 4), 0)
    image.info["transparency"] = 0  # every pixel transparent -> white
    out = reducible_8bit(image)
    assert out.mode == "RGB" and out.getpixel((1, 1)) == (255, 255, 255)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_upright_array_matches_pil_transpose(orientation: int) -> None:
    stored = RNG.integers(0, 256, (7, 12), dtype=np.uint8)
    expected = np.asarray(upright(Image.fromarray(stored), orientation))
    turned = upright_array(stored, orientation)
    assert turned.flags.c_contiguous
    np.testing.assert_array_equal(turned, expected)
