"""Tests of model.imaging.transforms: decoding guards, EXIF, mode conversion, model input, masks."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from clipseg_serve.model.config import IMAGENET_MEAN, IMAGENET_STD
from clipseg_serve.model.errors import ImageDecodeError, ImageTooLargeError, InvalidMaskError
from clipseg_serve.model.imaging.transforms import (
    DEFAULT_MAX_PIXELS,
    DecodedImage,
    decode_image,
    denormalize_tensor,
    load_mask,
    normalize_tensor,
    reduction_factor,
    to_model_input,
)
from tests.conftest import png_claiming

RED = (255, 0, 0)
BLUE = (0, 0, 255)
WHITE = (255, 255, 255)


def encode(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


def corner_image(width: int = 60, height: int = 40) -> Image.Image:
    """Blue image with a red 10x10 block in the stored top-left corner."""
    image = Image.new("RGB", (width, height), BLUE)
    image.paste(RED, (0, 0, 10, 10))
    return image


def pixel(image: Image.Image, xy: tuple[int, int]) -> tuple[int, ...]:
    return tuple(int(v) for v in image.getpixel(xy))


def assert_close_rgb(actual: tuple[int, ...], expected: tuple[int, ...], tol: int = 8) -> None:
    assert all(abs(a - e) <= tol for a, e in zip(actual, expected, strict=True)), (
        actual,
        expected,
    )


# --------------------------------------------------------------------------------------
# decode_image: EXIF orientation
# --------------------------------------------------------------------------------------


def exif_jpeg(image: Image.Image, orientation: int, **kwargs: object) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(image, "JPEG", exif=exif, quality=95, **kwargs)


def test_exif_orientation_6_rotates_pixels_and_swaps_size() -> None:
    data = exif_jpeg(corner_image(60, 40), 6)
    decoded = decode_image(data)
    # Orientation 6 = stored image must be turned 90° clockwise to be upright.
    assert decoded.original_size == (40, 60)
    assert decoded.image.size == (40, 60)
    assert decoded.image.mode == "RGB"
    # The stored top-left red block ends up in the top-right corner.
    assert_close_rgb(pixel(decoded.image, (35, 4)), RED, tol=40)
    assert_close_rgb(pixel(decoded.image, (4, 4)), BLUE, tol=40)
    assert_close_rgb(pixel(decoded.image, (4, 55)), BLUE, tol=40)


def test_exif_orientation_3_rotates_180_without_swapping() -> None:
    decoded = decode_image(exif_jpeg(corner_image(60, 40), 3))
    assert decoded.original_size == (60, 40)
    assert_close_rgb(pixel(decoded.image, (55, 35)), RED, tol=40)
    assert_close_rgb(pixel(decoded.image, (4, 4)), BLUE, tol=40)


def test_no_exif_keeps_pixels_in_place() -> None:
    decoded = decode_image(encode(corner_image(60, 40), "PNG"))
    assert decoded.original_size == (60, 40)
    assert pixel(decoded.image, (0, 0)) == RED
    assert pixel(decoded.image, (59, 0)) == BLUE


# --------------------------------------------------------------------------------------
# decode_image: modes
# --------------------------------------------------------------------------------------


def test_rgba_is_composited_over_white() -> None:
    image = Image.new("RGBA", (3, 1))
    image.putpixel((0, 0), (0, 0, 0, 0))  # fully transparent black -> white
    image.putpixel((1, 0), (255, 0, 0, 255))  # opaque red stays red
    image.putpixel((2, 0), (0, 0, 0, 128))  # half-transparent black -> mid grey
    decoded = decode_image(encode(image, "PNG"))
    assert decoded.image.mode == "RGB"
    assert pixel(decoded.image, (0, 0)) == WHITE
    assert pixel(decoded.image, (1, 0)) == RED
    assert_close_rgb(pixel(decoded.image, (2, 0)), (127, 127, 127), tol=1)


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_with_transparency_is_composited_over_white(fmt: str) -> None:
    image = Image.new("P", (2, 1))
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * (256 * 3 - 6))
    image.putpixel((0, 0), 0)
    image.putpixel((1, 0), 1)
    data = encode(image, fmt, transparency=0)  # palette index 0 (black) is transparent
    decoded = decode_image(data)
    assert pixel(decoded.image, (0, 0)) == WHITE
    assert pixel(decoded.image, (1, 0)) == RED


def test_palette_without_transparency_keeps_palette_colours() -> None:
    image = Image.new("P", (2, 1))
    image.putpalette([0, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 6))
    image.putpixel((1, 0), 1)
    decoded = decode_image(encode(image, "PNG"))
    assert pixel(decoded.image, (0, 0)) == (0, 0, 0)
    assert pixel(decoded.image, (1, 0)) == (0, 255, 0)


def test_16_bit_png_is_scaled_not_clipped() -> None:
    values = np.linspace(0, 65535, 256).round().astype(np.uint16).reshape(1, 256)
    image = Image.fromarray(values)
    decoded = decode_image(encode(image, "PNG"))
    gray = np.asarray(decoded.image)[0, :, 0].astype(int)
    expected = np.round(values[0] / 257).astype(int)
    np.testing.assert_array_equal(gray, expected)
    assert gray[0] == 0 and gray[-1] == 255
    assert 126 <= gray[128] <= 129  # proportional: half of 65535 is mid grey, not 255
    # PIL's own convert would clip everything >= 255 to white.
    assert (gray == 255).sum() == 1


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I;16L"])
def test_16_bit_pil_modes(mode: str) -> None:
    image = Image.new(mode, (2, 1))
    image.putpixel((0, 0), 65535)
    image.putpixel((1, 0), 257 * 100)
    decoded = decode_image(image)
    assert pixel(decoded.image, (0, 0)) == (255, 255, 255)
    assert pixel(decoded.image, (1, 0)) == (100, 100, 100)


def test_32_bit_int_modes() -> None:
    small = Image.fromarray(np.array([[0, 200]], dtype=np.int32))
    assert pixel(decode_image(small).image, (1, 0)) == (200, 200, 200)
    sixteen = Image.fromarray(np.array([[0, 65535]], dtype=np.int32))
    assert pixel(decode_image(sixteen).image, (1, 0)) == WHITE
    wide = Image.fromarray(np.array([[-1000, 0, 1000]], dtype=np.int32))
    out = np.asarray(decode_image(wide).image)[0, :, 0]
    np.testing.assert_array_equal(out, [0, 128, 255])  # min-max stretched


def test_float_mode_clips_or_scales() -> None:
    unit = Image.fromarray(np.array([[-0.5, 0.5, 1.0]], dtype=np.float32))
    np.testing.assert_array_equal(np.asarray(decode_image(unit).image)[0, :, 0], [0, 128, 255])
    big = Image.fromarray(np.array([[0.0, 50.0, 100.0]], dtype=np.float32))
    np.testing.assert_array_equal(np.asarray(decode_image(big).image)[0, :, 0], [0, 128, 255])


def test_cmyk_jpeg() -> None:
    image = Image.new("CMYK", (32, 16), (0, 0, 0, 0))  # white
    image.paste((0, 255, 255, 0), (16, 0, 32, 16))  # no cyan, full magenta+yellow = red
    decoded = decode_image(encode(image, "JPEG", quality=95))
    assert decoded.image.mode == "RGB"
    assert_close_rgb(pixel(decoded.image, (4, 8)), WHITE)
    assert_close_rgb(pixel(decoded.image, (28, 8)), RED)


def test_grayscale() -> None:
    decoded = decode_image(encode(Image.new("L", (5, 4), 77), "PNG"))
    assert decoded.image.mode == "RGB"
    assert decoded.original_size == (5, 4)
    assert pixel(decoded.image, (2, 2)) == (77, 77, 77)


@pytest.mark.parametrize(
    ("mode", "value", "expected"),
    [
        ("1", 1, WHITE),
        ("LA", (77, 255), (77, 77, 77)),
        ("LA", (0, 0), WHITE),
        ("PA", (0, 0), WHITE),
        ("YCbCr", (255, 128, 128), WHITE),
        ("LAB", (255, 128, 128), (254, 255, 254)),  # PIL's LAB: neutral a/b at 128
        ("HSV", (0, 255, 255), RED),
        ("RGBa", (0, 0, 0, 0), WHITE),
    ],
)
def test_other_modes_convert_to_rgb(mode: str, value: object, expected: tuple[int, ...]) -> None:
    decoded = decode_image(Image.new(mode, (2, 2), value))
    assert decoded.image.mode == "RGB"
    assert_close_rgb(pixel(decoded.image, (1, 1)), expected, tol=1)


def test_multi_frame_gif_uses_first_frame() -> None:
    frames = [Image.new("RGB", (4, 4), RED), Image.new("RGB", (4, 4), BLUE)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    decoded = decode_image(buf.getvalue())
    assert_close_rgb(pixel(decoded.image, (1, 1)), RED, tol=2)


def test_pil_image_and_path_sources(tmp_path: Path) -> None:
    image = corner_image(20, 10)
    from_pil = decode_image(image)
    assert from_pil.original_size == (20, 10)
    assert from_pil.image is not image  # never aliases the caller's object
    path = tmp_path / "img.png"
    image.save(path)
    for source in (path, str(path)):
        decoded = decode_image(source)
        assert isinstance(decoded, DecodedImage)
        assert decoded.original_size == (20, 10)
        assert pixel(decoded.image, (0, 0)) == RED


# --------------------------------------------------------------------------------------
# decode_image: sizes, draft
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(1, 1), (10000, 50), (50, 10000)])
def test_extreme_sizes(size: tuple[int, int]) -> None:
    decoded = decode_image(encode(Image.new("RGB", size, RED), "PNG"))
    assert decoded.original_size == size
    assert decoded.image.size == size
    assert pixel(decoded.image, (size[0] - 1, size[1] - 1)) == RED


def big_photo(width: int = 3000, height: int = 2000) -> Image.Image:
    # Smooth gradient: compresses well and has a known large-scale structure.
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    rgb = np.stack([np.broadcast_to(x, (height, width)), np.broadcast_to(y, (height, width))], -1)
    rgb = np.concatenate([rgb, np.full((height, width, 1), 128, np.float32)], -1)
    return Image.fromarray(rgb.astype(np.uint8))


def test_draft_size_decodes_smaller_but_reports_full_size() -> None:
    data = encode(big_photo(), "JPEG", quality=90)
    full = decode_image(data)
    assert full.image.size == (3000, 2000)
    drafted = decode_image(data, draft_size=352)
    assert drafted.original_size == (3000, 2000)
    width, height = drafted.image.size
    assert width < 3000 and height < 2000
    assert width >= 352 and height >= 352
    assert drafted.image.mode == "RGB"
    # Same picture, just smaller: the left-to-right red ramp survives.
    row = np.asarray(drafted.image)[height // 2, :, 0].astype(int)
    assert row[5] < 20 and row[-5] > 235


def test_draft_size_with_exif_rotation_swaps_original_size() -> None:
    data = exif_jpeg(big_photo(1600, 800), 6)
    drafted = decode_image(data, draft_size=200)
    assert drafted.original_size == (800, 1600)
    width, height = drafted.image.size
    assert height > width  # upright
    assert 200 <= width < 800 and 200 <= height < 1600


def test_draft_size_applies_to_mpo_phone_photos() -> None:
    frames = [big_photo(2000, 1600), Image.new("RGB", (200, 160))]
    buf = io.BytesIO()
    frames[0].save(buf, "MPO", save_all=True, append_images=frames[1:])
    drafted = decode_image(buf.getvalue(), draft_size=352)
    assert drafted.original_size == (2000, 1600)
    assert drafted.image.size == (500, 400)  # 1/4 scale keeps both sides >= 352


def smooth_rgb(width: int, height: int, seed: int = 0) -> Image.Image:
    """Low-frequency random colours (like a photo): box reduction barely changes them."""
    coarse = np.random.default_rng(seed).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)


def model_input(image: Image.Image) -> torch.Tensor:
    return to_model_input(image, 352, IMAGENET_MEAN, IMAGENET_STD)


def test_draft_size_reduces_other_formats_by_an_integer_factor() -> None:
    image = smooth_rgb(2000, 1500)
    data = encode(image, "PNG")
    reduced = decode_image(data, draft_size=352)
    # k = min(2000 // 352, 1500 // 352) = 4, a box filter: exactly PIL's reduce(4).
    assert reduced.image.size == (500, 375)
    assert reduced.original_size == (2000, 1500)
    assert reduced.image.mode == "RGB"
    assert np.array_equal(np.asarray(reduced.image), np.asarray(image.reduce(4)))
    # The model sees nearly what it saw from the full-size decode.
    full = decode_image(data)
    assert full.image.size == (2000, 1500)
    diff = (model_input(reduced.image) - model_input(full.image)).abs()
    assert float(diff.mean()) < 0.02 and float(diff.max()) < 0.3


@pytest.mark.parametrize("size", [(703, 2000), (2000, 703), (704, 704), (3000, 500)])
def test_reduction_keeps_both_sides_at_least_the_draft_size(size: tuple[int, int]) -> None:
    decoded = decode_image(encode(Image.new("RGB", size, RED), "PNG"), draft_size=352)
    assert decoded.original_size == size
    width, height = decoded.image.size
    assert width >= 352 and height >= 352
    factor = reduction_factor(size, 352)
    assert factor == (2 if size == (704, 704) else 1)
    assert decoded.image.size == (-(-size[0] // factor), -(-size[1] // factor))


@pytest.mark.parametrize("size", [(703, 703), (400, 1500), (2000, 703)])
def test_images_under_twice_the_draft_size_decode_exactly_as_without_it(
    size: tuple[int, int],
) -> None:
    data = encode(smooth_rgb(*size), "PNG")
    drafted, plain = decode_image(data, draft_size=352), decode_image(data)
    assert drafted.image.size == plain.image.size == size
    assert np.array_equal(np.asarray(drafted.image), np.asarray(plain.image))


def test_reduction_factor() -> None:
    assert reduction_factor((2000, 1500), 352) == 4
    assert reduction_factor((703, 5000), 352) == 1
    assert reduction_factor((704, 5000), 352) == 2
    assert reduction_factor((9000, 9000), None) == 1


def test_reduction_converts_float_tiffs_before_averaging() -> None:
    values = np.linspace(-1.0, 3.0, 800 * 600, dtype=np.float32).reshape(600, 800)
    values[10, 10] = np.nan  # a NaN must become 0, not poison its block's average
    data = encode(Image.fromarray(values, "F"), "TIFF")
    reduced = decode_image(data, draft_size=100)
    assert reduced.original_size == (800, 600) and reduced.image.size == (134, 100)
    expected = decode_image(data).image.reduce(6)  # convert at full size, then reduce
    assert np.array_equal(np.asarray(reduced.image), np.asarray(expected))


def test_reduction_keeps_alpha_over_white() -> None:
    image = Image.new("RGBA", (800, 400), (0, 0, 0, 0))  # transparent black -> white
    image.paste((255, 0, 0, 255), (400, 0, 800, 400))  # opaque red right half
    palette = image.convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    palette.info["transparency"] = palette.getpixel((0, 0))
    for data in (encode(image, "PNG"), encode(palette, "PNG"), encode(palette, "GIF")):
        reduced = decode_image(data, draft_size=100)
        assert reduced.image.size == (200, 100)
        assert pixel(reduced.image, (20, 50)) == WHITE
        assert pixel(reduced.image, (180, 50)) == RED


def test_reduction_applies_exif_orientation() -> None:
    stored = corner_image(1600, 800)  # red block at the stored top-left
    stored.paste(RED, (0, 0, 200, 200))
    exif = Image.Exif()
    exif[0x0112] = 6
    reduced = decode_image(encode(stored, "PNG", exif=exif), draft_size=200)
    assert reduced.original_size == (800, 1600)
    assert reduced.image.size == (200, 400)  # k = 4, then turned upright
    # Orientation 6: the stored top-left ends up at the top-right.
    assert pixel(reduced.image, (190, 10)) == RED
    assert pixel(reduced.image, (10, 10)) == BLUE


def test_reduction_applies_to_pil_images_too() -> None:
    image = smooth_rgb(900, 800)
    decoded = decode_image(image, draft_size=250)
    assert decoded.image.size == (300, 267) and decoded.original_size == (900, 800)
    assert np.array_equal(np.asarray(decoded.image), np.asarray(image.reduce(3)))


# --------------------------------------------------------------------------------------
# decode_image: errors
# --------------------------------------------------------------------------------------


def test_truncated_jpeg_raises_decode_error() -> None:
    data = encode(big_photo(400, 300), "JPEG", quality=90)
    with pytest.raises(ImageDecodeError):
        decode_image(data[: len(data) // 2])


@pytest.mark.parametrize(
    "data",
    [b"", b"hello, this is definitely not an image", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff"],
)
def test_garbage_raises_decode_error(data: bytes) -> None:
    with pytest.raises(ImageDecodeError):
        decode_image(data)


def test_missing_file_raises_decode_error(tmp_path: Path) -> None:
    with pytest.raises(ImageDecodeError, match="cannot read"):
        decode_image(tmp_path / "nope.png")


def test_decode_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        decode_image(b"nope")


def test_max_pixels_is_checked_from_the_header_before_decoding() -> None:
    data = png_claiming(5000, 5000)
    with pytest.raises(ImageTooLargeError, match=r"5000x5000.*1000000"):
        decode_image(data, max_pixels=1_000_000)
    # Without the limit the same bytes fail to *decode*: so the size error above came
    # from the header, before any pixel was decoded.
    with pytest.raises(ImageDecodeError):
        decode_image(data, max_pixels=None)


def test_giant_header_raises_too_large_with_default_limit() -> None:
    assert DEFAULT_MAX_PIXELS == 50_000_000
    with pytest.raises(ImageTooLargeError):
        decode_image(png_claiming(100_000, 100_000))
    # Even with our limit off, PIL's bomb error is reported as ImageTooLargeError.
    with pytest.raises(ImageTooLargeError):
        decode_image(png_claiming(100_000, 100_000), max_pixels=None)


def test_pil_bomb_warning_becomes_too_large() -> None:
    # 90 MP is between PIL's warning (~89 MP) and error (~179 MP) limits.
    with pytest.raises(ImageTooLargeError):
        decode_image(png_claiming(10_000, 9_000), max_pixels=None)


def test_max_pixels_applies_to_pil_images() -> None:
    with pytest.raises(ImageTooLargeError):
        decode_image(Image.new("RGB", (100, 100)), max_pixels=9_999)
    assert decode_image(Image.new("RGB", (100, 100)), max_pixels=10_000).original_size == (
        100,
        100,
    )


# --------------------------------------------------------------------------------------
# to_model_input and (de)normalisation
# --------------------------------------------------------------------------------------


def test_to_model_input_shape_dtype_and_constant_colour() -> None:
    colour = (10, 128, 250)
    x = to_model_input(Image.new("RGB", (123, 45), colour), 32, IMAGENET_MEAN, IMAGENET_STD)
    assert x.shape == (3, 32, 32)
    assert x.dtype == torch.float32
    for c in range(3):
        expected = (colour[c] / 255 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
        torch.testing.assert_close(
            x[c], torch.full((32, 32), expected, dtype=torch.float32), atol=1e-6, rtol=0
        )


def test_to_model_input_squashes_aspect() -> None:
    image = Image.new("RGB", (200, 50), RED)
    image.paste(BLUE, (100, 0, 200, 50))
    x = to_model_input(image, 16, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    # Not letterboxed: every row is half red, half blue, no padding rows.
    assert torch.all(x[0, :, :7] == 1.0) and torch.all(x[2, :, :7] == 0.0)
    assert torch.all(x[0, :, 9:] == 0.0) and torch.all(x[2, :, 9:] == 1.0)


def test_to_model_input_uses_antialiased_bilinear() -> None:
    # A 1-pixel checkerboard averages to mid-grey under antialiased downscaling;
    # plain point-sampled bilinear would keep extreme values.
    board = (np.indices((64, 64)).sum(0) % 2 * 255).astype(np.uint8)
    x = to_model_input(Image.fromarray(board), 8, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    assert x.shape == (3, 8, 8)
    assert torch.all((x - 0.5).abs() < 0.05)


def test_normalize_roundtrip_with_batch_dims() -> None:
    x = torch.rand(2, 4, 3, 5, 6)
    y = normalize_tensor(x, IMAGENET_MEAN, IMAGENET_STD)
    assert y.shape == x.shape
    torch.testing.assert_close(
        y[1, 2, 1], (x[1, 2, 1] - IMAGENET_MEAN[1]) / IMAGENET_STD[1], atol=1e-6, rtol=0
    )
    torch.testing.assert_close(denormalize_tensor(y, IMAGENET_MEAN, IMAGENET_STD), x)


def test_normalize_rejects_bad_tensors() -> None:
    with pytest.raises(ValueError):
        normalize_tensor(torch.rand(4, 5, 6), IMAGENET_MEAN, IMAGENET_STD)
    with pytest.raises(ValueError):
        normalize_tensor(torch.zeros(3, 5, 6, dtype=torch.uint8), IMAGENET_MEAN, IMAGENET_STD)


# --------------------------------------------------------------------------------------
# load_mask
# --------------------------------------------------------------------------------------


def test_load_mask_grayscale_png() -> None:
    image = Image.new("L", (4, 3), 0)
    image.putpixel((1, 2), 1)
    image.putpixel((3, 0), 255)
    mask = load_mask(encode(image, "PNG"))
    assert mask.dtype == bool and mask.shape == (3, 4)
    assert mask.sum() == 2 and mask[2, 1] and mask[0, 3]


def test_load_mask_rgb_takes_any_channel() -> None:
    image = Image.new("RGB", (3, 1), (0, 0, 0))
    image.putpixel((1, 0), (0, 0, 9))
    image.putpixel((2, 0), (255, 255, 255))
    np.testing.assert_array_equal(load_mask(image), [[False, True, True]])


def test_load_mask_rgba_opaque_alpha_is_ignored() -> None:
    image = Image.new("RGBA", (2, 1), (0, 0, 0, 255))
    image.putpixel((1, 0), (255, 255, 255, 255))
    np.testing.assert_array_equal(load_mask(encode(image, "PNG")), [[False, True]])


def test_load_mask_rgba_black_shape_on_transparent_uses_alpha() -> None:
    image = Image.new("RGBA", (3, 1), (0, 0, 0, 0))
    image.putpixel((1, 0), (0, 0, 0, 255))
    image.putpixel((2, 0), (0, 0, 0, 10))
    np.testing.assert_array_equal(load_mask(encode(image, "PNG")), [[False, True, True]])


def test_load_mask_rgba_colour_with_varying_alpha_needs_both() -> None:
    image = Image.new("RGBA", (3, 1), (255, 255, 255, 0))  # white but transparent
    image.putpixel((1, 0), (255, 255, 255, 255))
    image.putpixel((2, 0), (0, 0, 0, 255))
    np.testing.assert_array_equal(load_mask(image), [[False, True, False]])


def test_load_mask_applies_exif_orientation() -> None:
    image = Image.new("L", (6, 4), 0)
    image.paste(255, (0, 0, 2, 2))  # stored top-left
    exif = Image.Exif()
    exif[0x0112] = 6
    mask = load_mask(encode(image, "PNG", exif=exif))
    assert mask.shape == (6, 4)  # (h, w) of the upright image
    assert mask[0, 3] and mask[1, 2] and not mask[0, 0]  # moved to top-right
    assert mask.sum() == 4


def test_load_mask_arrays() -> None:
    arr2 = np.array([[0, 3], [0.0, -1]])
    np.testing.assert_array_equal(load_mask(arr2), [[False, True], [False, True]])
    arr3 = np.zeros((2, 2, 3), dtype=np.uint8)
    arr3[1, 0, 2] = 7
    np.testing.assert_array_equal(load_mask(arr3), [[False, False], [True, False]])
    nan = np.array([[np.nan, 1.0]])
    np.testing.assert_array_equal(load_mask(nan), [[False, True]])
    assert load_mask(np.ones((2, 2), dtype=bool)).dtype == bool


@pytest.mark.parametrize("shape", [(5,), (1, 2, 3, 4), (0, 4)])
def test_load_mask_rejects_bad_arrays(shape: tuple[int, ...]) -> None:
    with pytest.raises(InvalidMaskError):
        load_mask(np.ones(shape))


def test_load_mask_unreadable_bytes() -> None:
    with pytest.raises(ImageDecodeError):
        load_mask(b"not a mask")
    with pytest.raises(ImageTooLargeError):
        load_mask(png_claiming(5000, 5000), max_pixels=1_000)


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("mode", ["L", "F", "RGB", "RGBA"])
def test_load_mask_orientations_match_pil_exif_transpose(orientation: int, mode: str) -> None:
    rng = np.random.default_rng(orientation)
    stored = Image.fromarray(rng.integers(0, 2, (9, 14), dtype=np.uint8) * 255).convert(mode)
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(stored, "TIFF" if mode == "F" else "PNG", exif=exif)
    upright = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    expected = np.asarray(upright.convert("L")) > 0
    mask = load_mask(data)
    assert mask.flags.c_contiguous and mask.dtype == bool
    np.testing.assert_array_equal(mask, expected)


def test_load_mask_bands_give_the_whole_image_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    from clipseg_serve.model.imaging import image_modes

    monkeypatch.setattr(image_modes, "_BAND_PIXELS", 3)  # one row per band
    image = Image.new("RGBA", (3, 4), (0, 0, 0, 0))
    image.putpixel((1, 3), (0, 0, 0, 255))  # black shape on transparent, in the last row
    expected = np.zeros((4, 3), dtype=bool)
    expected[3, 1] = True
    np.testing.assert_array_equal(load_mask(encode(image, "PNG")), expected)
    floats = np.array([[np.nan, 0.0], [np.inf, -2.0]], dtype=np.float32)
    np.testing.assert_array_equal(
        load_mask(Image.fromarray(floats)), [[False, False], [True, True]]
    )
