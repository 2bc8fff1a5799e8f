"""Any PIL image mode -> 8-bit RGB, without PIL's clipping surprises.

Used by ``model.transforms.decode_image`` (query and support images) and, through it, by
training's data loading.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from .errors import ImageDecodeError

_WHITE = (255, 255, 255)


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
    * ``F`` (float): NaN becomes 0, values are clipped to [0, 1] when the maximum is <= 1
      (a normalised image) and otherwise divided by the maximum (negatives clip to 0).
    * CMYK, YCbCr, LAB, HSV, 1, L, P use PIL's colour conversions (no ICC profile applied).
    """
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I;16"):
        return _gray_to_rgb(_scale_uint16(np.asarray(image)))
    if mode == "I":
        return _gray_to_rgb(_scale_int32(np.asarray(image)))
    if mode == "F":
        return _gray_to_rgb(_scale_float(np.asarray(image)))
    if has_alpha(image):
        return _composite_over_white(image)
    try:
        return image.convert("RGB")
    except ValueError as exc:  # "conversion from X to RGB not supported"
        raise ImageDecodeError(f"unsupported image mode {mode!r}: {exc}") from exc


def has_alpha(image: Image.Image) -> bool:
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        return True
    # A palette / grey / RGB image can mark one colour transparent (PNG tRNS, GIF).
    return image.mode in ("P", "L", "RGB") and "transparency" in image.info


def to_rgba(image: Image.Image) -> Image.Image:
    if image.mode == "RGBA":
        return image
    if image.mode == "La":
        # PIL cannot convert premultiplied La to RGBA directly; unpremultiply via LA first.
        image = image.convert("LA")
    return image.convert("RGBA")


def _composite_over_white(image: Image.Image) -> Image.Image:
    rgba = to_rgba(image)
    background = Image.new("RGBA", rgba.size, (*_WHITE, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _gray_to_rgb(gray: np.ndarray) -> Image.Image:
    """uint8 (h, w) -> RGB PIL image with the grey value in all three channels."""
    return Image.fromarray(np.ascontiguousarray(gray, dtype=np.uint8)).convert("RGB")


def _scale_uint16(values: np.ndarray) -> np.ndarray:
    # Rounded value * 255 / 65535 (== value / 257): maps 0 -> 0 and 65535 -> 255 exactly.
    wide = values.astype(np.uint32)
    return ((wide * 255 + 32767) // 65535).astype(np.uint8)


def _scale_int32(values: np.ndarray) -> np.ndarray:
    values = values.astype(np.int64)
    lo, hi = int(values.min()), int(values.max())
    if lo >= 0 and hi <= 255:
        return values.astype(np.uint8)
    if lo >= 0 and hi <= 65535:
        return _scale_uint16(values)
    if hi == lo:
        return np.zeros(values.shape, dtype=np.uint8)
    stretched = (values - lo) * 255.0 / (hi - lo)
    return np.rint(stretched).astype(np.uint8)


def _scale_float(values: np.ndarray) -> np.ndarray:
    values = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    hi = float(values.max())
    if hi > 1.0:
        values = values / hi
    return np.rint(np.clip(values, 0.0, 1.0) * 255.0).astype(np.uint8)
