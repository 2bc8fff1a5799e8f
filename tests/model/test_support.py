"""prepare_support_input: support images decoded like queries, engineered like training."""

from __future__ import annotations

import io
import struct
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from clipseg_serve.model.config import get_variant
from clipseg_serve.model.errors import InvalidMaskError, UnsupportedImageFormatError
from clipseg_serve.model.imaging.support import MAX_SUPPORT_ASPECT, prepare_support_input
from clipseg_serve.model.imaging.transforms import decode_image, load_mask
from clipseg_serve.model.imaging.visual_prompt import (
    engineer_support_image,
    rescale_support,
    rescale_support_image,
    rescale_support_mask,
    support_shape,
)

CONFIG = get_variant("tiny")  # input_size 96
S = CONFIG.input_size


def encode(image: Image.Image, fmt: str = "PNG", **kwargs: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """Smooth random colours, like a photo at low frequency."""
    coarse = np.random.default_rng(seed).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)


def box_mask(width: int, height: int, box: tuple[int, int, int, int]) -> Image.Image:
    mask = Image.new("L", (width, height), 0)
    mask.paste(255, box)
    return mask


def reference(image: bytes | Image.Image, mask: bytes | np.ndarray) -> torch.Tensor:
    """Today's predictor path: full-size decode, then ``engineer_support_image``."""
    return engineer_support_image(decode_image(image).image, load_mask(mask), CONFIG)


@pytest.mark.parametrize(
    ("size", "fmt"),
    [((150, 100), "PNG"), ((100, 190), "JPEG"), ((191, 191), "PNG"), ((96, 96), "PNG")],
)
def test_equals_engineer_support_image_when_not_reduced(size: tuple[int, int], fmt: str) -> None:
    width, height = size
    image = encode(photo(width, height), fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    mask = encode(box_mask(width, height, (20, 15, width // 2, height - 10)))
    assert decode_image(image, draft_size=S).image.size == size  # the premise: no reduction
    out = prepare_support_input(image, mask, CONFIG, max_pixels=None)
    assert out.dtype == torch.float32 and out.shape == (3, S, S)
    assert torch.equal(out, reference(image, mask))


def test_pil_and_array_sources_are_accepted() -> None:
    image = photo(120, 100)
    mask = np.zeros((100, 120), dtype=bool)
    mask[30:60, 40:90] = True
    out = prepare_support_input(image, mask, CONFIG, max_pixels=None)
    assert torch.equal(out, engineer_support_image(image, mask, CONFIG))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "TIFF"])
def test_close_to_the_full_size_path_when_reduced(fmt: str) -> None:
    width, height = 800, 600  # k = 6 for the PNG/TIFF reduction, 1/4 JPEG draft
    image = encode(photo(width, height, seed=3), fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    mask = encode(box_mask(width, height, (200, 150, 520, 480)))
    assert decode_image(image, draft_size=S).image.size[0] < width  # the premise: reduced
    out = prepare_support_input(image, mask, CONFIG, max_pixels=None)
    expected = reference(image, mask)
    assert out.shape == expected.shape == (3, S, S)
    diff = (out - expected).abs()
    assert float(diff.mean()) < 0.02, float(diff.mean())
    # Padding and the object/background split come from the full-size mask: identical.
    assert torch.equal(out == 0, expected == 0)


def test_mask_is_checked_against_the_original_size_not_the_reduced_one() -> None:
    image = encode(photo(800, 600))
    reduced_size = decode_image(image, draft_size=S).image.size
    assert reduced_size == (134, 100)
    small_mask = encode(box_mask(*reduced_size, (10, 10, 50, 50)))
    with pytest.raises(InvalidMaskError, match=r"134x100 but its image is 800x600; .*same size"):
        prepare_support_input(image, small_mask, CONFIG, max_pixels=None)
    full_mask = encode(box_mask(800, 600, (10, 10, 300, 300)))
    assert prepare_support_input(image, full_mask, CONFIG, max_pixels=None).shape == (3, S, S)


def test_exif_rotated_support_uses_the_upright_size() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 800x400, upright 400x800
    image = encode(photo(800, 400), "JPEG", exif=exif, quality=90)
    mask = encode(box_mask(400, 800, (50, 100, 300, 500)))
    out = prepare_support_input(image, mask, CONFIG, max_pixels=None)
    assert torch.allclose(out, reference(image, mask), atol=0.25)
    with pytest.raises(InvalidMaskError, match="same size"):
        stored_size_mask = encode(box_mask(800, 400, (0, 0, 9, 9)))
        prepare_support_input(image, stored_size_mask, CONFIG, max_pixels=None)


def test_a_one_pixel_mask_survives_reduction_and_rescaling() -> None:
    mask = np.zeros((600, 800), dtype=bool)
    mask[301, 433] = True
    out = prepare_support_input(encode(photo(800, 600)), mask, CONFIG, max_pixels=None)
    assert out.shape == (3, S, S) and bool((out != 0).any())


def test_validation_messages() -> None:
    image = photo(40, 30)
    with pytest.raises(InvalidMaskError, match="same size"):
        prepare_support_input(image, np.ones((20, 40), bool), CONFIG, max_pixels=None)
    with pytest.raises(InvalidMaskError, match="support mask is empty"):
        prepare_support_input(image, np.zeros((30, 40), bool), CONFIG, max_pixels=None)
    strip = photo(17 * 10, 10)
    assert MAX_SUPPORT_ASPECT == 16
    with pytest.raises(InvalidMaskError, match="170x10 is more than 16:1; crop it closer"):
        prepare_support_input(strip, np.ones((10, 170), bool), CONFIG, max_pixels=None)
    ok = photo(160, 10)  # exactly 16:1 is fine
    assert (
        prepare_support_input(ok, np.ones((10, 160), bool), CONFIG, max_pixels=None).shape[0] == 3
    )


def test_refused_formats_and_limits_apply_to_image_and_mask() -> None:
    png = encode(Image.new("RGB", (16, 16), (9, 9, 9)))
    entry = struct.pack("<BBBBHHII", 16, 16, 0, 0, 1, 32, len(png), 22)
    ico = struct.pack("<HHH", 0, 1, 1) + entry + png
    mask = encode(box_mask(16, 16, (2, 2, 9, 9)))
    with pytest.raises(UnsupportedImageFormatError, match="ICO"):
        prepare_support_input(ico, mask, CONFIG, max_pixels=None)
    with pytest.raises(UnsupportedImageFormatError, match="ICO"):
        prepare_support_input(png, ico, CONFIG, max_pixels=None)
    assert prepare_support_input(ico, mask, CONFIG, max_pixels=None, formats=None).shape == (
        3,
        S,
        S,
    )
    with pytest.raises(ValueError, match="more than the limit"):
        prepare_support_input(png, mask, CONFIG, max_pixels=100)


def test_input_size_comes_from_the_config() -> None:
    config = replace(CONFIG, input_size=64)
    out = prepare_support_input(photo(100, 80), np.ones((80, 100), bool), config, max_pixels=None)
    assert out.shape == (3, 64, 64)


def test_rescale_halves_compose_to_rescale_support() -> None:
    image = torch.rand(3, 301, 457)
    mask = torch.zeros(301, 457, dtype=torch.bool)
    mask[100:200, 50:60] = True
    shape = support_shape(301, 457, 96)
    assert shape == (96, 146)
    whole_image, whole_mask = rescale_support(image, mask, 96)
    assert torch.equal(rescale_support_image(image, shape), whole_image)
    assert torch.equal(rescale_support_mask(mask, shape), whole_mask)
    # A reduced image reaches the same grid (and stays close to the full-size result).
    reduced = torch.nn.functional.avg_pool2d(image[None, :, :300, :456], 3)[0]
    assert rescale_support_image(reduced, shape).shape == (3, 96, 146)
