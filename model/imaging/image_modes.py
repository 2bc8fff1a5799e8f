"""Any PIL image mode -> 8-bit RGB, without PIL's clipping surprises, in bounded memory;
and EXIF orientation, for images and for mask arrays.

Used by ``model.imaging.transforms.decode_image`` (query and support images) and, through it, by
training's data loading.

The numeric modes (``I;16*``, ``I``, ``F``) need numpy, and ``np.asarray(image)`` of a whole
image is a full copy (PIL hands numpy a ``bytes`` of the pixels); widening it to int64 or
float64 for the arithmetic made a 7000x7000 float TIFF cost over 1 GB. So the pixels are
processed in bands of rows (:func:`map_row_bands`): beyond PIL's decoded image, the extra
memory is the 8-bit output plus a few copies of one band.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import cast

import numpy as np
from PIL import ExifTags, Image

from clipseg_serve.model.errors import ImageDecodeError
from clipseg_serve.model.imaging.image_formats import DECODE_ERRORS

__all__ = [
    "SWAPPING_ORIENTATIONS",
    "exif_orientation",
    "has_alpha",
    "iter_row_bands",
    "map_row_bands",
    "reducible_8bit",
    "to_rgb",
    "to_rgba",
    "upright",
    "upright_array",
]

_WHITE = (255, 255, 255)

#: Pixels per band in :func:`map_row_bands`: ~1 M pixels keeps a float64 band at 8 MB
#: while making the per-band Python overhead negligible next to the numpy work.
_BAND_PIXELS = 1 << 20

#: Modes ``Image.reduce`` averages correctly and ``to_rgb`` maps pixel by pixel, so reducing
#: before converting gives (up to rounding) the reduction of the RGB image. ``reduce``
#: premultiplies RGBA/LA internally, so averaging and compositing over white commute.
_REDUCIBLE_MODES = frozenset({"RGB", "RGBA", "LA"})


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB, returning ``image`` itself if already RGB.

    * Alpha (RGBA, LA, PA, premultiplied RGBa/La, palette or grey with a transparent
      colour) is composited over white: the colour under transparent pixels is undefined
      (often black or garbage), and a white background is what a viewer shows and what
      CLIP mostly saw for cut-out product and icon images.
    * 16-bit (``I;16*``) is scaled by ``value / 257`` (65535 -> 255). PIL's own convert
      clips at 255, which turns any real 16-bit image almost fully white.
    * 32-bit ``I``: values already in 0..255 are kept; values in 0..65535 are treated as
      16-bit data (PIL historically opens 16-bit PNGs as ``I``); anything else (negative or
      larger) is min-max stretched to 0..255.
    * ``F`` (float): NaN and +-inf become 0, values are clipped to [0, 1] when the maximum is
      <= 1 (a normalised image) and otherwise divided by the maximum (negatives clip to 0).
    * CMYK, YCbCr, LAB, HSV, 1, L, P use PIL's colour conversions (no ICC profile applied).

    The statistics (int min/max, float max) are over the whole image; the arithmetic runs in
    bands of rows, so the numeric modes cost the output plus O(one band) of extra memory.
    """
    mode = image.mode
    if mode == "RGB":
        return image
    if _is_numeric(mode):
        return _numeric_to_gray(image).convert("RGB")
    if has_alpha(image):
        return _composite_over_white(image)
    try:
        return image.convert("RGB")
    except ValueError as exc:  # "conversion from X to RGB not supported"
        raise ImageDecodeError(f"unsupported image mode {mode!r}: {exc}") from exc


def reducible_8bit(image: Image.Image) -> Image.Image:
    """``image`` in an 8-bit mode (L, RGB, LA or RGBA) ready for ``Image.reduce``.

    ``to_rgb(reducible_8bit(im).reduce(k))`` approximates ``to_rgb(im).reduce(k)`` (equal up
    to rounding) for a fraction of the memory: numeric modes become L through the banded
    conversion (never a full RGB copy), L/RGB/LA/RGBA are returned as they are, and modes
    that ``reduce`` cannot average meaningfully (palette indices, 1-bit, a colour marked
    transparent, CMYK and other colour spaces) are converted with ``to_rgb`` first.
    """
    mode = image.mode
    if _is_numeric(mode):
        return _numeric_to_gray(image)
    if mode in _REDUCIBLE_MODES or (mode == "L" and not has_alpha(image)):
        return image
    if mode == "1":
        return image.convert("L")  # 0/255, the same grey to_rgb would give
    return to_rgb(image)


def has_alpha(image: Image.Image) -> bool:
    """Whether ``image`` has transparency: an alpha band or a transparent palette/colour."""
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        return True
    # A palette / grey / RGB image can mark one colour transparent (PNG tRNS, GIF).
    return image.mode in ("P", "L", "RGB") and "transparency" in image.info


def to_rgba(image: Image.Image) -> Image.Image:
    """``image`` as RGBA (straight alpha), returning it itself if already RGBA."""
    if image.mode == "RGBA":
        return image
    if image.mode == "La":
        # PIL cannot convert premultiplied La to RGBA directly; unpremultiply via LA first.
        image = image.convert("LA")
    return image.convert("RGBA")


def iter_row_bands(
    image: Image.Image, band_pixels: int | None = None
) -> Iterator[tuple[int, np.ndarray]]:
    """``(top, band)`` for consecutive bands of rows of ``image``, top to bottom.

    ``band`` is a read-only numpy copy of rows ``top:top + len(band)`` as numpy gives it for
    the mode (``(rows, w)`` float32 for F, ``>u2`` for I;16B, ``(rows, w, 3)`` for RGB...),
    about ``band_pixels`` pixels (default ``_BAND_PIXELS``; at least one row).
    """
    width, height = image.size
    rows = max(1, (band_pixels or _BAND_PIXELS) // max(1, width))
    for top in range(0, height, rows):
        # crop copies just this band out of PIL's buffer; asarray copies it once more.
        yield top, np.asarray(image.crop((0, top, width, min(height, top + rows))))


def map_row_bands(
    image: Image.Image,
    func: Callable[[np.ndarray], np.ndarray],
    dtype: np.dtype | type,
    band_pixels: int | None = None,
) -> np.ndarray:
    """Apply ``func`` to ``image`` one band of rows at a time; collect the results.

    Args:
        image: any loaded PIL image of size ``(w, h)``.
        func: maps a band (see :func:`iter_row_bands`) of ``rows`` rows to ``(rows, w)``.
        dtype: dtype of the result.
        band_pixels: pixels per band, as in :func:`iter_row_bands`.

    Returns:
        ``(h, w)`` array of ``dtype``, C-contiguous. Peak extra memory: the result plus a
        few band-sized temporaries, whatever the size of ``image``.
    """
    width, height = image.size
    out = np.empty((height, width), dtype=dtype)
    for top, band in iter_row_bands(image, band_pixels):
        out[top : top + band.shape[0]] = func(band)
    return out


def _is_numeric(mode: str) -> bool:
    return mode in ("I", "F") or mode.startswith("I;16")


def _composite_over_white(image: Image.Image) -> Image.Image:
    rgba = to_rgba(image)
    background = Image.new("RGBA", rgba.size, (*_WHITE, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _numeric_to_gray(image: Image.Image) -> Image.Image:
    """An ``I;16*``, ``I`` or ``F`` image -> mode L with the scaling ``to_rgb`` documents."""
    mode = image.mode
    scale: Callable[[np.ndarray], np.ndarray]
    if mode == "F":
        scale = _float_scaler(_finite_max(image))
    elif mode == "I":
        # PIL's extrema are exact int32 and computed in C without a copy.
        lo, hi = cast(tuple[int, int], image.getextrema())
        scale = _int32_scaler(int(lo), int(hi))
    else:
        scale = _scale_uint16
    return Image.fromarray(map_row_bands(image, scale, np.uint8), "L")


def _scale_uint16(values: np.ndarray) -> np.ndarray:
    # Rounded value * 255 / 65535 (== value / 257): maps 0 -> 0 and 65535 -> 255 exactly.
    # uint32 holds 65535 * 255 + 32767 and also accepts big-endian I;16B input.
    wide = values.astype(np.uint32)
    wide *= 255
    wide += 32767
    wide //= 65535
    return wide.astype(np.uint8)


def _int32_scaler(lo: int, hi: int) -> Callable[[np.ndarray], np.ndarray]:
    """The per-band map of an ``I`` image whose global min/max are ``lo``/``hi``."""
    if lo >= 0 and hi <= 255:
        return lambda band: band.astype(np.uint8)
    if lo >= 0 and hi <= 65535:
        return _scale_uint16
    if hi == lo:
        return lambda band: np.zeros(band.shape, dtype=np.uint8)

    def stretch(band: np.ndarray) -> np.ndarray:
        # float64 (per band only): the exact operations of the min-max stretch, so the
        # rounding matches the whole-image formula bit for bit.
        stretched = (band.astype(np.int64) - lo) * 255.0
        stretched /= hi - lo
        return np.rint(stretched, out=stretched).astype(np.uint8)

    return stretch


def _finite_max(image: Image.Image) -> float:
    """Max of an ``F`` image with NaN/inf counted as 0 (what the scaling maps them to).

    float32 -> float64 is exact, so this equals the max of the whole image widened first.
    """
    return max(
        float(np.nan_to_num(band, nan=0.0, posinf=0.0, neginf=0.0).max())
        for _, band in iter_row_bands(image)
    )


def _float_scaler(hi: float) -> Callable[[np.ndarray], np.ndarray]:
    """The per-band map of an ``F`` image whose finite maximum is ``hi``."""

    def scale(band: np.ndarray) -> np.ndarray:
        # float64 per band, in place: float32 would round x * 255 onto half-integers that
        # float64 keeps apart, changing some outputs by one grey level.
        values = band.astype(np.float64)
        np.nan_to_num(values, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
        if hi > 1.0:
            values /= hi
        np.clip(values, 0.0, 1.0, out=values)
        values *= 255.0
        return np.rint(values, out=values).astype(np.uint8)

    return scale


# --------------------------------------------------------------------------------------
# EXIF orientation
# --------------------------------------------------------------------------------------

_ORIENTATION_TAG = ExifTags.Base.Orientation
#: EXIF orientations 5..8 include a 90-degree turn, so the displayed image has width and
#: height swapped relative to the stored pixels.
SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})
# The transpose that makes each orientation upright (as ``ImageOps.exif_transpose``).
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# The same transposes on a numpy (h, w) array, as views (a mask never goes back to PIL).
_UPRIGHT_ARRAY: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.T,
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a[::-1, ::-1].T,
    8: lambda a: np.rot90(a, 1),
}


def exif_orientation(image: Image.Image) -> int:
    """EXIF orientation (1..8) of a loaded ``image``; 1 when absent or malformed."""
    try:
        value = image.getexif().get(_ORIENTATION_TAG, 1)
    except DECODE_ERRORS:
        # A corrupt EXIF block must not make an otherwise fine image undecodable.
        return 1
    return value if isinstance(value, int) and value in _UPRIGHT else 1


def upright(image: Image.Image, orientation: int) -> Image.Image:
    """``image`` turned upright for EXIF ``orientation``; ``image`` itself for 1.

    ``decode_image`` applies it after the mode conversion and reduction (both per pixel,
    with statistics that do not depend on pixel order), so only the 8-bit, possibly
    reduced image is transposed; the pixels equal ``ImageOps.exif_transpose``'s.
    """
    method = _UPRIGHT.get(orientation)
    return image if method is None else image.transpose(method)


def upright_array(array: np.ndarray, orientation: int) -> np.ndarray:
    """A stored-orientation ``(h, w)`` array turned upright, C-contiguous (as ``upright``)."""
    turn = _UPRIGHT_ARRAY.get(orientation)
    return array if turn is None else np.ascontiguousarray(turn(array))
