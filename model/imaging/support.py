"""Support images for one-shot visual prompts: encoded image + mask in, model input out.

``prepare_support_input`` is the CPU-side step of a visual prompt, run per request before
the queue. It decodes the support image the way query images are decoded (JPEG draft or an
integer box reduction toward the model size, see ``decode_image``), so a 7000x7000 upload
costs a fraction of the memory a full-size decode did, while the mask is read at full
size (a bool per pixel, built band by band) because its box and edges must be exact.
Both are then rescaled to the engineering shape derived from the *original* size, so the
result does not depend on how much the decoder reduced the image.
"""

from __future__ import annotations

from collections.abc import Collection

import torch

from clipseg_serve.model.config import ClipSegConfig
from clipseg_serve.model.errors import InvalidMaskError
from clipseg_serve.model.imaging.image_formats import ALLOWED_FORMATS
from clipseg_serve.model.imaging.transforms import ImageSource, MaskSource, decode_image, load_mask
from clipseg_serve.model.imaging.visual_prompt import (
    engineer_rescaled_support,
    rescale_support_image,
    rescale_support_mask,
    support_pixels,
    support_shape,
)

__all__ = ["MAX_SUPPORT_ASPECT", "prepare_support_input"]

#: Longest/shortest side ratio accepted for support images. The shorter side is scaled to
#: the input size before engineering, so an extreme strip would become a huge tensor.
MAX_SUPPORT_ASPECT = 16


def prepare_support_input(
    image: ImageSource,
    mask: MaskSource,
    config: ClipSegConfig,
    *,
    max_pixels: int | None,
    formats: Collection[str] | None = ALLOWED_FORMATS,
) -> torch.Tensor:
    """Engineer one visual prompt: support image + mask -> float32 [3, S, S] on the CPU.

    ``S = config.input_size``. The image is decoded with ``draft_size=S`` (possibly
    reduced), the mask (nonzero = object; bytes, path, PIL image or array) at full size. The
    mask must have the image's original upright ``(width, height)``, mark at least one pixel,
    and the image must be at most ``MAX_SUPPORT_ASPECT``:1. Both are then rescaled to
    ``support_shape(H, W, S)`` of the original size (image bilinear, antialiased when
    shrinking; mask ``nearest-exact`` with the tiny-mask fallback) and engineered (blur +
    highlight, crop, pad, nearest resize; ImageNet-style normalisation with the config's
    mean/std) exactly as ``engineer_support_image``, which this equals whenever the decoder
    did not reduce the image.

    Args:
        image, mask: the support pair, as ``decode_image`` and ``load_mask`` accept them.
        config: gives the input size and the normalisation statistics.
        max_pixels: pixel limit for each of image and mask (None: PIL's bomb limit only).
        formats: accepted encoded formats for both, as in ``decode_image``.

    Raises:
        InvalidMaskError: size mismatch, empty mask, or an aspect ratio over the limit.
        UnsupportedImageFormatError, ImageDecodeError, ImageTooLargeError: from decoding.
    """
    size = config.input_size
    decoded = decode_image(image, max_pixels=max_pixels, draft_size=size, formats=formats)
    mask_array = load_mask(mask, max_pixels=max_pixels, formats=formats)
    width, height = decoded.original_size
    if mask_array.shape != (height, width):
        raise InvalidMaskError(
            f"support mask is {mask_array.shape[1]}x{mask_array.shape[0]} but its image is "
            f"{width}x{height}; they must have the same size"
        )
    if not mask_array.any():
        raise InvalidMaskError("support mask is empty: mark the object with nonzero pixels")
    if max(width, height) > MAX_SUPPORT_ASPECT * min(width, height):
        raise InvalidMaskError(
            f"support image {width}x{height} is more than {MAX_SUPPORT_ASPECT}:1; "
            "crop it closer to the object"
        )
    shape = support_shape(height, width, size)
    pixels = rescale_support_image(support_pixels(decoded.image, config), shape)
    scaled_mask = rescale_support_mask(torch.from_numpy(mask_array), shape)
    return engineer_rescaled_support(pixels, scaled_mask, size)
