"""Image pre-processing: any image in, CLIPSeg model input out.

The pipeline is split in two so the server can guard untrusted input cheaply:

1. ``decode_image`` turns bytes, a path or a PIL image into a plain 8-bit RGB PIL image.
   It checks the pixel count from the header *before* decoding (decompression-bomb guard),
   applies the EXIF orientation, maps every PIL mode to RGB without clipping surprises,
   and turns every decoder failure into ``ImageDecodeError``.
2. ``to_model_input`` squashes that image to the model's square input and normalises it,
   exactly like the reference CLIPSeg / HuggingFace processor.

``load_mask`` reads support masks for visual prompts with the same guards.
``normalize_tensor`` / ``denormalize_tensor`` work on batched tensors for the visual-prompt
code and for training.

This module imports PIL, numpy and torch only; it never touches the web stack.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
import zlib
from dataclasses import dataclass
from typing import TypeAlias

import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps, JpegImagePlugin, UnidentifiedImageError

from model.errors import ClipSegError, ImageDecodeError, ImageTooLargeError, InvalidMaskError
from model.image_modes import has_alpha, to_rgb, to_rgba

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "DecodedImage",
    "ImageSource",
    "MaskSource",
    "decode_image",
    "denormalize_tensor",
    "load_mask",
    "normalize_tensor",
    "to_model_input",
]

#: Largest ``width * height`` accepted by default. 50 megapixels covers every camera photo
#: a client is likely to send (a 48 MP phone sensor is 8000x6000) while bounding the
#: decoded RGB buffer to ~150 MB. It is deliberately below PIL's own bomb limit
#: (``Image.MAX_IMAGE_PIXELS``, ~89 MP), so our clear error fires first.
DEFAULT_MAX_PIXELS = 50_000_000

#: What ``decode_image`` accepts: encoded bytes, a file path, or an already-open PIL image.
ImageSource: TypeAlias = bytes | bytearray | memoryview | str | os.PathLike | Image.Image
#: What ``load_mask`` accepts: any ``ImageSource`` or a numpy array.
MaskSource: TypeAlias = ImageSource | np.ndarray

# Errors PIL and its plugins raise on corrupt or foreign data. PIL is not consistent (a bad
# PNG chunk can give SyntaxError, a short TIFF struct.error, a broken GIF IndexError), so a
# server that must answer 4xx instead of 500 has to catch the whole family.
_DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # includes UnidentifiedImageError and "image file is truncated"
    SyntaxError,
    ValueError,
    EOFError,
    IndexError,
    KeyError,
    TypeError,
    struct.error,
    zlib.error,
)

_ORIENTATION_TAG = ExifTags.Base.Orientation
# EXIF orientations 5..8 include a 90-degree turn, so the displayed image has width and
# height swapped relative to the stored pixels.
_SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})
_VALID_ORIENTATIONS = frozenset(range(2, 9))  # 1 is "as stored": nothing to do


@dataclass(frozen=True)
class DecodedImage:
    """A decoded, upright RGB image plus the size the client's image really has.

    Attributes:
        image: mode ``"RGB"``, 8 bits per channel, EXIF orientation already applied. When
            ``decode_image`` was called with ``draft_size`` it may be smaller than
            ``original_size`` (JPEG DCT-domain reduction), never smaller than the draft size.
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
) -> DecodedImage:
    """Decode ``source`` into an upright 8-bit RGB image.

    Args:
        source: encoded image bytes, a path to an image file, or a PIL image. A PIL image is
            used at its current frame; files and bytes use their first frame (GIF, TIFF...).
        max_pixels: largest accepted ``width * height``, checked from the header before any
            pixel is decoded; ``None`` disables this check (PIL's own global bomb limit,
            ``Image.MAX_IMAGE_PIXELS``, still applies and is reported the same way).
        draft_size: when set and the image is a JPEG (or MPO), libjpeg decodes at a reduced scale
            (1/2, 1/4 or 1/8) that keeps both sides >= ``draft_size``. Pass the model's
            input size: the image is squashed to that size anyway, and a 12 MP photo then
            decodes several times faster. Ignored for other formats.

    Returns:
        ``DecodedImage`` with ``image`` in mode RGB and ``original_size`` the full
        ``(width, height)`` after EXIF orientation (independent of ``draft_size``).

    Raises:
        ImageTooLargeError: the pixel count exceeds ``max_pixels`` or PIL's bomb limit.
        ImageDecodeError: empty, truncated, corrupt or non-image input, or a missing file.
    """
    if draft_size is not None and draft_size < 1:
        raise ValueError(f"draft_size must be a positive integer, got {draft_size}")
    if isinstance(source, Image.Image):
        return _decode_pil(source, max_pixels=max_pixels)
    im = _open_lazily(source, max_pixels=max_pixels)
    # Read the full size before ``draft`` rewrites ``im.size`` to the reduced one.
    full_width, full_height = im.size
    try:
        # isinstance, not format == "JPEG": phone photos are often MPO (multi-picture
        # JPEG), a JpegImageFile subclass that libjpeg can draft just the same.
        if draft_size is not None and isinstance(im, JpegImagePlugin.JpegImageFile):
            # Must come before load(): it reconfigures libjpeg's DCT scaling, so the
            # reduction costs nothing instead of decoding full size and shrinking.
            im.draft("RGB", (draft_size, draft_size))
        # load() decodes here, inside the try, so a truncated file surfaces as our error
        # rather than on first pixel access somewhere in the caller.
        im.load()
        orientation = _orientation(im)
        rgb = to_rgb(_apply_orientation(im, orientation))
    except ClipSegError:
        raise
    except _DECODE_ERRORS as exc:
        raise ImageDecodeError(f"cannot decode image: {exc}") from exc
    if orientation in _SWAPPING_ORIENTATIONS:
        original = (full_height, full_width)
    else:
        original = (full_width, full_height)
    return DecodedImage(image=rgb, original_size=original)


def _decode_pil(image: Image.Image, *, max_pixels: int | None) -> DecodedImage:
    """``decode_image`` for a caller-supplied PIL image (loaded if lazy, never closed)."""
    _check_pixels(image.size, max_pixels)
    try:
        image.load()
        rgb = to_rgb(_apply_orientation(image, _orientation(image)))
    except ClipSegError:
        raise
    except _DECODE_ERRORS as exc:
        raise ImageDecodeError(f"cannot decode image: {exc}") from exc
    if rgb is image:
        # Hand back our own object so later edits by either side cannot alias.
        rgb = image.copy()
    return DecodedImage(image=rgb, original_size=rgb.size)


def _open_lazily(source: ImageSource, *, max_pixels: int | None) -> Image.Image:
    """Open ``source`` (bytes or path) with the size guards applied, decoding no pixels.

    ``Image.open`` parses only the header, so the pixel-count check happens before any
    pixel buffer is allocated. Files are read into memory first so the returned image
    never holds an OS file handle that could leak (multi-frame images keep their file
    open after ``load()``).
    """
    data = _read_bytes(source)
    try:
        with warnings.catch_warnings():
            # PIL *warns* (not raises) between 1x and 2x its bomb limit; as an error it
            # becomes catchable. catch_warnings is process-global before Python 3.14; a race
            # with another thread can at worst let the warning through, and our own header
            # check right below still applies.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        limit = f"the limit of {max_pixels} pixels" if max_pixels else "PIL's bomb limit"
        raise ImageTooLargeError(f"image too large: more than {limit} ({exc})") from exc
    except UnidentifiedImageError as exc:
        # PIL's message names a BytesIO object; say what the client needs to know.
        raise ImageDecodeError(
            f"not a recognised image format ({len(data)} bytes starting {data[:8]!r})"
        ) from exc
    except _DECODE_ERRORS as exc:
        raise ImageDecodeError(f"not a readable image: {exc}") from exc
    _check_pixels(image.size, max_pixels)
    return image


def _read_bytes(source: ImageSource) -> bytes:
    """The encoded bytes of ``source`` (bytes-like or path), with clear errors."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    elif isinstance(source, (str, os.PathLike)):
        try:
            with open(source, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise ImageDecodeError(f"cannot read image file {os.fspath(source)!r}: {exc}") from exc
    else:
        raise TypeError(f"expected image bytes, a path or a PIL image, got {type(source).__name__}")
    if not data:
        raise ImageDecodeError("image data is empty (0 bytes)")
    return data


def _check_pixels(size: tuple[int, int], max_pixels: int | None) -> None:
    width, height = size
    if width < 1 or height < 1:
        raise ImageDecodeError(f"image has an empty size {width}x{height}")
    if max_pixels is not None and width * height > max_pixels:
        raise ImageTooLargeError(
            f"image is {width}x{height} = {width * height} pixels, "
            f"more than the limit of {max_pixels} pixels"
        )


def _orientation(image: Image.Image) -> int:
    """EXIF orientation (1..8) of ``image``; 1 when absent or malformed."""
    try:
        value = image.getexif().get(_ORIENTATION_TAG, 1)
    except _DECODE_ERRORS:
        # A corrupt EXIF block must not make an otherwise fine image undecodable.
        return 1
    return value if isinstance(value, int) and value in _VALID_ORIENTATIONS else 1


def _apply_orientation(image: Image.Image, orientation: int) -> Image.Image:
    """Turn ``image`` upright. Returns ``image`` itself when nothing needs doing."""
    if orientation == 1:
        # exif_transpose would return a full copy here; skip it for big photos.
        return image
    upright = ImageOps.exif_transpose(image)
    return image if upright is None else upright


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

    The image is squashed to ``size x size`` (aspect ratio NOT preserved: CLIPSeg was
    trained and evaluated on squashed squares, and the masks are stretched back to the
    original size afterwards) with PIL's antialiased BILINEAR filter, as HuggingFace's
    CLIPSeg processor does. Pixels are scaled to [0, 1] and then normalised
    ``(x - mean) / std`` per channel.

    Args:
        image: a PIL image, normally ``DecodedImage.image`` (RGB); other modes are
            converted with the same rules as ``decode_image``.
        size: side of the square model input (352 for the released weights).
        mean, std: per-channel RGB statistics of the weights (ImageNet's for CLIPSeg).

    Returns:
        float32 tensor ``[3, size, size]`` on the CPU, roughly in [-2.2, 2.7] for ImageNet
        statistics.
    """
    if size < 1:
        raise ValueError(f"size must be a positive integer, got {size}")
    rgb = to_rgb(image)
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
    # HWC uint8 -> CHW float32 in [0, 1]; the copy also detaches from PIL's buffer.
    pixels = torch.from_numpy(np.array(rgb, dtype=np.float32)).permute(2, 0, 1)
    return normalize_tensor(pixels.div_(255.0).contiguous(), mean, std)


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
) -> np.ndarray:
    """Read a binary support mask: nonzero means object.

    Args:
        source: encoded bytes, a path, a PIL image or a numpy array.

            * arrays: 2-D ``(h, w)`` is used directly; 3-D ``(h, w, c)`` is object where
              any channel is nonzero (the max over the last axis, for non-negative masks).
              NaN counts as background.
            * images: EXIF orientation is applied. Single-channel modes (1, L, I, I;16, F)
              are object where nonzero. Colour modes are converted to RGB and are object
              where any channel is nonzero (so black = background in any colour space).
              Alpha: if it is constant (e.g. all opaque) it is ignored; if it varies and the
              colour is all black, the mask is ``alpha > 0`` (a shape painted on a
              transparent canvas); if it varies and the colour is not all black, the mask is
              colour nonzero AND ``alpha > 0`` (transparent pixels are never object).
        max_pixels: pixel limit for encoded images, as in ``decode_image``.

    Returns:
        bool array ``(h, w)``, C-contiguous.

    Raises:
        ImageDecodeError: unreadable bytes or file.
        ImageTooLargeError: too many pixels.
        InvalidMaskError: an array that is not 2-D or 3-D, or has no pixels.
    """
    if isinstance(source, np.ndarray):
        return _mask_from_array(source)
    if isinstance(source, Image.Image):
        _check_pixels(source.size, max_pixels)
        return _mask_from_image(source)
    return _mask_from_image(_open_lazily(source, max_pixels=max_pixels))


def _mask_from_array(array: np.ndarray) -> np.ndarray:
    if array.ndim not in (2, 3):
        raise InvalidMaskError(
            f"a mask must be a 2-D (h, w) or 3-D (h, w, c) array, got shape {array.shape}"
        )
    if array.size == 0:
        raise InvalidMaskError(f"mask array has no pixels (shape {array.shape})")
    if array.dtype.kind == "f":
        array = np.nan_to_num(array, nan=0.0)
    nonzero = array != 0
    if nonzero.ndim == 3:
        nonzero = nonzero.any(axis=-1)
    return np.ascontiguousarray(nonzero, dtype=bool)


def _mask_from_image(image: Image.Image) -> np.ndarray:
    try:
        image.load()
        image = _apply_orientation(image, _orientation(image))
        mode = image.mode
        if mode in ("1", "L", "I", "F") or mode.startswith("I;16"):
            return _mask_from_array(np.asarray(image))
        if has_alpha(image):
            pixels = np.asarray(to_rgba(image))
            colour = (pixels[..., :3] != 0).any(axis=-1)
            alpha = pixels[..., 3]
            if alpha.min() == alpha.max():
                return np.ascontiguousarray(colour)
            if not colour.any():
                return np.ascontiguousarray(alpha > 0)
            return np.ascontiguousarray(colour & (alpha > 0))
        return _mask_from_array(np.asarray(image.convert("RGB")))
    except ClipSegError:
        raise
    except _DECODE_ERRORS as exc:
        raise ImageDecodeError(f"cannot decode mask image: {exc}") from exc


# --------------------------------------------------------------------------------------
# Header probe (provisional; superseded by the format allow-list work)
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageInfo:
    """What an image's header says: PIL format id, size and mode."""

    format: str
    width: int
    height: int
    mode: str


def probe_image(source: ImageSource, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> ImageInfo:
    """Format, size and mode of ``source`` from its header, with the pixel-limit guard."""
    image = _open_lazily(source, max_pixels=max_pixels)
    width, height = image.size
    return ImageInfo(str(image.format), width, height, image.mode)
