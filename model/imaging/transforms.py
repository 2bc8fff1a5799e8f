"""Image pre-processing: any image in, CLIPSeg model input out.

The pipeline is split in two so the server can guard untrusted input cheaply:

1. ``decode_image`` turns bytes, a path or a PIL image into a plain 8-bit RGB PIL image.
   It identifies the format from the leading bytes and refuses formats outside an
   allow-list before any plugin parses the file (``model.imaging.image_formats``), checks the pixel
   count from the header *before* decoding (decompression-bomb guard), applies the EXIF
   orientation, maps every PIL mode to RGB without clipping surprises or big temporaries
   (``model.imaging.image_modes``), optionally reduces toward the model's input size, and turns
   every decoder failure into ``ImageDecodeError``. ``probe_image`` runs the same checks
   and reads the header only.
2. ``to_model_input`` squashes that image to the model's square input and normalises it,
   exactly like the reference CLIPSeg / HuggingFace processor.

``load_mask`` reads support masks for visual prompts with the same guards.
``normalize_tensor`` / ``denormalize_tensor`` work on batched tensors for the visual-prompt
code and for training.

This module imports PIL, numpy and torch only; it never touches the web stack.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import TypeAlias, cast

import numpy as np
import torch
from PIL import Image, JpegImagePlugin

from clipseg_serve.model.errors import ClipSegError, ImageDecodeError, InvalidMaskError
from clipseg_serve.model.imaging.image_formats import (
    ALLOWED_FORMATS,
    DECODE_ERRORS,
    ImageInfo,
    ImageSource,
    check_pixels,
    open_image,
    probe_image,
    read_bytes,
)
from clipseg_serve.model.imaging.image_modes import (
    SWAPPING_ORIENTATIONS,
    exif_orientation,
    has_alpha,
    map_row_bands,
    reducible_8bit,
    to_rgb,
    to_rgba,
    upright,
    upright_array,
)

__all__ = [
    "ALLOWED_FORMATS",
    "DEFAULT_MAX_PIXELS",
    "DecodedImage",
    "ImageInfo",
    "ImageSource",
    "MaskSource",
    "decode_image",
    "denormalize_tensor",
    "load_mask",
    "normalize_pixels",
    "normalize_tensor",
    "probe_image",
    "reduction_factor",
    "to_guide_pixels",
    "to_model_input",
    "to_model_pixels",
]

#: Largest ``width * height`` accepted by default. 50 megapixels covers every camera photo
#: a client is likely to send (a 48 MP phone sensor is 8000x6000) while bounding the
#: decoded RGB buffer to ~150 MB. It is deliberately below PIL's own bomb limit
#: (``Image.MAX_IMAGE_PIXELS``, ~89 MP), so our clear error fires first.
DEFAULT_MAX_PIXELS = 50_000_000

#: What ``load_mask`` accepts: any ``ImageSource`` or a numpy array.
MaskSource: TypeAlias = ImageSource | np.ndarray


@dataclass(frozen=True)
class DecodedImage:
    """A decoded, upright RGB image plus the size the client's image really has.

    Attributes:
        image: mode ``"RGB"``, 8 bits per channel, EXIF orientation already applied. When
            ``decode_image`` was called with ``draft_size`` it may be smaller than
            ``original_size`` (JPEG DCT-domain draft, or an integer box reduction for the
            other formats), never smaller than the draft size on either side.
        original_size: ``(width, height)`` of the full-resolution image after EXIF
            orientation, i.e. the size masks must be returned at.
    """

    image: Image.Image
    original_size: tuple[int, int]


# --------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------


def decode_image(
    source: ImageSource,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    draft_size: int | None = None,
    formats: Collection[str] | None = ALLOWED_FORMATS,
) -> DecodedImage:
    """Decode ``source`` into an upright 8-bit RGB image.

    Args:
        source: encoded image bytes, a path to an image file, or a PIL image. A PIL image is
            used at its current frame; files and bytes use their first frame (GIF, TIFF...).
        max_pixels: largest accepted ``width * height``, checked from the header before any
            pixel is decoded; ``None`` disables this check (PIL's own global bomb limit,
            ``Image.MAX_IMAGE_PIXELS``, still applies and is reported the same way).
        draft_size: the model's input size ``N``, when the image will be squashed to
            ``N x N`` anyway. A JPEG (or MPO) is then decoded by libjpeg at a reduced scale
            (1/2, 1/4 or 1/8) that keeps both sides >= ``N``; any other image is decoded in
            full (as is a PIL image) and box-reduced by ``reduction_factor(size, N)`` (both
            sides stay >= ``N``; an image under ``2N`` on either side is untouched). A 12 MP
            photo then decodes several times faster; later steps touch far fewer pixels.
        formats: accepted PIL format ids (default ``ALLOWED_FORMATS``), identified from the
            leading bytes before any plugin parses the file. ``None`` accepts any format PIL
            can open: unsafe for untrusted input (ICO decodes while opening, before the size
            check; EPS runs Ghostscript). Ignored for PIL images (the caller opened them).

    Returns:
        ``DecodedImage`` with ``image`` in mode RGB and ``original_size`` the full
        ``(width, height)`` after EXIF orientation (independent of ``draft_size``).

    Raises:
        UnsupportedImageFormatError: a recognised format that is not in ``formats``.
        ImageTooLargeError: the pixel count exceeds ``max_pixels`` or PIL's bomb limit.
        ImageDecodeError: empty, truncated, corrupt or non-image input, or a missing file.
    """
    if draft_size is not None and draft_size < 1:
        raise ValueError(f"draft_size must be a positive integer, got {draft_size}")
    if isinstance(source, Image.Image):
        check_pixels(source.size, max_pixels)
        im = source
    else:
        im = open_image(read_bytes(source), max_pixels=max_pixels, formats=formats)
    # Read the full size before ``draft`` rewrites ``im.size`` to the reduced one.
    full_width, full_height = im.size
    reduce_to = draft_size
    try:
        # isinstance, not format == "JPEG": phone photos are often MPO (multi-picture
        # JPEG), a JpegImageFile subclass that libjpeg can draft just the same. Never on a
        # caller's PIL image: draft would change their object (and does nothing once loaded).
        if (
            draft_size is not None
            and im is not source
            and isinstance(im, JpegImagePlugin.JpegImageFile)
        ):
            # Must come before load(): it reconfigures libjpeg's DCT scaling, so the
            # reduction costs nothing instead of decoding full size and shrinking.
            im.draft("RGB", (draft_size, draft_size))
            reduce_to = None  # a JPEG keeps the scale libjpeg gives, as before
        # load() decodes here, inside the try, so a truncated file surfaces as our error
        # rather than on first pixel access somewhere in the caller.
        im.load()
        orientation = exif_orientation(im)
        rgb = upright(_reduced_rgb(im, reduce_to), orientation)
    except ClipSegError:
        raise
    except DECODE_ERRORS as exc:
        raise ImageDecodeError(f"cannot decode image: {exc}") from exc
    if rgb is source:
        # Hand back our own object so later edits by either side cannot alias.
        rgb = source.copy()
    if orientation in SWAPPING_ORIENTATIONS:
        original = (full_height, full_width)
    else:
        original = (full_width, full_height)
    return DecodedImage(image=rgb, original_size=original)


def reduction_factor(size: tuple[int, int], target: int | None) -> int:
    """The integer box-reduction ``k`` that keeps both sides of ``size`` >= ``target``.

    ``min(w // target, h // target)`` when that is >= 2, else 1 (no reduction), so only
    images at least ``2 * target`` on both sides are reduced. ``None`` target: 1.
    """
    if target is None:
        return 1
    width, height = size
    factor = min(width // target, height // target)
    return factor if factor >= 2 else 1


def _reduced_rgb(image: Image.Image, reduce_to: int | None) -> Image.Image:
    """``to_rgb(image)``, box-reduced first by ``reduction_factor`` when that is >= 2."""
    factor = reduction_factor(image.size, reduce_to)
    if factor == 1:
        return to_rgb(image)
    # The model squashes to N x N anyway, so averaging k x k blocks in C first (as JPEG's
    # DCT draft does, and as Pillow's own ``resize(reducing_gap=...)`` does) costs little
    # and makes every later step touch k^2 fewer pixels. The 8-bit conversion comes first
    # where ``reduce`` cannot average the mode (palette, 16-bit, float...), see
    # ``reducible_8bit``; alpha is composited over white after averaging (equivalent,
    # since reduce averages premultiplied colour).
    return to_rgb(reducible_8bit(image).reduce(factor))


# --------------------------------------------------------------------------------------
# Model input
# --------------------------------------------------------------------------------------


def to_model_input(
    image: Image.Image,
    size: int,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
) -> torch.Tensor:
    """Resize and normalise an image into one CLIPSeg input.

    ``normalize_pixels(to_model_pixels(image, size), mean, std)``: the image is squashed to
    ``size x size`` (aspect ratio NOT preserved: CLIPSeg was trained and evaluated on
    squashed squares, and the masks are stretched back to the original size afterwards)
    with PIL's antialiased BILINEAR filter, as HuggingFace's CLIPSeg processor does; pixels
    are scaled to [0, 1] and normalised ``(x - mean) / std`` per channel.

    Args:
        image: a PIL image, normally ``DecodedImage.image`` (RGB); other modes are
            converted with the same rules as ``decode_image``.
        size: side of the square model input (352 for the released weights).
        mean, std: per-channel RGB statistics of the weights (ImageNet's for CLIPSeg).

    Returns:
        float32 tensor ``[3, size, size]`` on the CPU, roughly in [-2.2, 2.7] for ImageNet
        statistics.
    """
    return normalize_pixels(to_model_pixels(image, size), mean, std)


def to_model_pixels(image: Image.Image, size: int) -> torch.Tensor:
    """The model input before normalisation: uint8 ``[3, size, size]`` on the CPU.

    Squashed with PIL's antialiased BILINEAR filter (see ``to_model_input``). Kept in 8 bits
    so a server queues and uploads a quarter of the bytes and normalises on the device
    (``normalize_pixels``), with the same values as normalising here.
    """
    if size < 1:
        raise ValueError(f"size must be a positive integer, got {size}")
    rgb = to_rgb(image)
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
    return _chw(rgb)


def to_guide_pixels(image: Image.Image) -> torch.Tensor:
    """The image at its own size as uint8 ``[3, H, W]`` on the CPU: the guide of
    refinement (``model.masks.refine``), converted to RGB as ``to_model_pixels`` does."""
    return _chw(to_rgb(image))


def _chw(rgb: Image.Image) -> torch.Tensor:
    """An RGB PIL image -> uint8 [3, H, W]; HWC -> CHW, the copy also detaches from PIL's
    buffer."""
    return torch.from_numpy(np.array(rgb)).permute(2, 0, 1).contiguous()


def normalize_pixels(
    pixels: torch.Tensor, mean: tuple[float, float, float], std: tuple[float, float, float]
) -> torch.Tensor:
    """uint8 ``[..., 3, S, S]`` (any device) -> float32 ``(x / 255 - mean) / std``.

    The same float32 operations as ``to_model_input`` always did, so the result is
    bit-identical wherever it runs on a CPU.
    """
    if pixels.dtype != torch.uint8:
        raise ValueError(f"expected uint8 pixels, got {pixels.dtype}")
    return normalize_tensor(pixels.float().div_(255.0), mean, std)


def _stats(
    x: torch.Tensor, mean: tuple[float, float, float], std: tuple[float, float, float]
) -> tuple[torch.Tensor, torch.Tensor]:
    if not torch.is_floating_point(x):
        raise ValueError(f"expected a floating-point tensor, got {x.dtype}")
    if x.ndim < 3 or x.shape[-3] != 3:
        raise ValueError(f"expected a [..., 3, H, W] tensor, got shape {tuple(x.shape)}")
    if len(mean) != 3 or len(std) != 3:
        raise ValueError("mean and std must have 3 values (R, G, B)")
    if any(s == 0 for s in std):
        raise ValueError(f"std must be non-zero, got {std}")
    # [3, 1, 1] broadcasts over any leading batch dimensions and over H, W.
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(3, 1, 1)
    return m, s


def normalize_tensor(
    x: torch.Tensor, mean: tuple[float, float, float], std: tuple[float, float, float]
) -> torch.Tensor:
    """``(x - mean) / std`` per channel.

    Args:
        x: float tensor ``[..., 3, H, W]`` with values in [0, 1] (RGB).
        mean, std: per-channel statistics.

    Returns:
        A new tensor of the same shape, dtype and device.
    """
    m, s = _stats(x, mean, std)
    return (x - m) / s


def denormalize_tensor(
    x: torch.Tensor, mean: tuple[float, float, float], std: tuple[float, float, float]
) -> torch.Tensor:
    """Inverse of ``normalize_tensor``: ``x * std + mean`` per channel.

    Args:
        x: normalised float tensor ``[..., 3, H, W]``.
        mean, std: the statistics it was normalised with.

    Returns:
        A new tensor of the same shape, dtype and device, values back in [0, 1] (not
        clamped, so round-trips are exact up to float error).
    """
    m, s = _stats(x, mean, std)
    return x * s + m


# --------------------------------------------------------------------------------------
# Masks
# --------------------------------------------------------------------------------------


def load_mask(
    source: MaskSource,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    formats: Collection[str] | None = ALLOWED_FORMATS,
) -> np.ndarray:
    """Read a binary support mask: nonzero means object.

    Args:
        source: encoded bytes, a path, a PIL image or a numpy array.

            * arrays: 2-D ``(h, w)`` is used directly; 3-D ``(h, w, c)`` is object where
              any channel is nonzero (the max over the last axis, for non-negative masks).
              NaN counts as background.
            * images: EXIF orientation is applied. Single-channel modes (1, L, I, I;16, F)
              are object where nonzero (NaN is background). Colour modes are converted to
              RGB and are object where any channel is nonzero (so black = background in any
              colour space). Alpha: if it is constant (e.g. all opaque) it is ignored; if it
              varies and the colour is all black, the mask is ``alpha > 0`` (a shape painted
              on a transparent canvas); if it varies and the colour is not all black, the
              mask is colour nonzero AND ``alpha > 0`` (transparent pixels are never object).
        max_pixels: pixel limit for encoded images, as in ``decode_image``.
        formats: accepted formats for encoded images, as in ``decode_image``.

    Returns:
        bool array ``(h, w)``, C-contiguous. Built band by band: beyond PIL's decoded image
        it costs about two bools per pixel, never a full-size integer or float copy.

    Raises:
        UnsupportedImageFormatError: a recognised format that is not in ``formats``.
        ImageDecodeError: unreadable bytes or file.
        ImageTooLargeError: too many pixels.
        InvalidMaskError: an array that is not 2-D or 3-D, or has no pixels.
    """
    if isinstance(source, np.ndarray):
        return _mask_from_array(source)
    if isinstance(source, Image.Image):
        check_pixels(source.size, max_pixels)
        return _mask_from_image(source)
    image = open_image(read_bytes(source), max_pixels=max_pixels, formats=formats)
    return _mask_from_image(image)


def _mask_from_array(array: np.ndarray) -> np.ndarray:
    if array.ndim not in (2, 3):
        raise InvalidMaskError(
            f"a mask must be a 2-D (h, w) or 3-D (h, w, c) array, got shape {array.shape}"
        )
    if array.size == 0:
        raise InvalidMaskError(f"mask array has no pixels (shape {array.shape})")
    return np.ascontiguousarray(_nonzero(array), dtype=bool)


def _nonzero(values: np.ndarray) -> np.ndarray:
    """(h, w) or (h, w, c) -> bool (h, w): any channel nonzero, NaN counting as zero."""
    nonzero = values != 0
    if values.dtype.kind == "f":
        nonzero &= ~np.isnan(values)
    return nonzero.any(axis=-1) if nonzero.ndim == 3 else nonzero


def _mask_from_image(image: Image.Image) -> np.ndarray:
    try:
        image.load()
        orientation = exif_orientation(image)
        mask = _stored_mask(image)
    except ClipSegError:
        raise
    except DECODE_ERRORS as exc:
        raise ImageDecodeError(f"cannot decode mask image: {exc}") from exc
    return upright_array(mask, orientation)


def _stored_mask(image: Image.Image) -> np.ndarray:
    """The bool mask of a loaded image in its stored orientation (see ``load_mask``)."""
    mode = image.mode
    if mode in ("1", "L", "I", "F") or mode.startswith("I;16"):
        return map_row_bands(image, _nonzero, bool)
    if not has_alpha(image):
        return map_row_bands(image if mode == "RGB" else image.convert("RGB"), _nonzero, bool)
    rgba = to_rgba(image)
    bands = cast(tuple[tuple[int, int], ...], rgba.getextrema())
    alpha_lo, alpha_hi = bands[3]
    colour = map_row_bands(rgba, lambda band: _nonzero(band[..., :3]), bool)
    if alpha_lo == alpha_hi:
        return colour
    opaque = map_row_bands(rgba, lambda band: band[..., 3] > 0, bool)
    if not colour.any():
        return opaque
    colour &= opaque
    return colour
