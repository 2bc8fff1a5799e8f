"""Which image formats we open, and opening untrusted bytes without decoding pixels.

PIL identifies a file by trying its registered plugins in turn, and some plugins do real
work while *opening*: ICO decodes its embedded PNG inside ``Image.open`` (before any size
check can run), EPS hands the file to Ghostscript on load. So the format is identified
here from the leading bytes with PIL's own registered ``accept`` functions (the same
16-byte prefix ``Image.open`` passes them), checked against an allow-list, and only then is
``Image.open`` called, restricted to that one plugin.

``open_image`` is the shared lazy-open path of ``decode_image``, ``load_mask`` and
``probe_image``: header parsed, size and format checked, no pixel decoded.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
import zlib
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

from PIL import Image, UnidentifiedImageError

from clipseg_serve.model.errors import (
    ImageDecodeError,
    ImageTooLargeError,
    UnsupportedImageFormatError,
)

__all__ = [
    "ALLOWED_FORMATS",
    "DECODE_ERRORS",
    "ImageInfo",
    "ImageSource",
    "check_pixels",
    "identify_format",
    "image_files",
    "open_image",
    "probe_image",
    "read_bytes",
]

#: PIL format ids accepted by default. Everything else PIL can read is refused up front:
#: the rarer plugins are the least exercised parsers (and ICO/EPS do heavy work on open).
#: Multi-frame formats (GIF, APNG, TIFF, MPO) use their first frame.
ALLOWED_FORMATS: frozenset[str] = frozenset({"JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "TIFF"})


def image_files(folder: str | os.PathLike) -> list[Path]:
    """The files of ``folder`` named as one of ``ALLOWED_FORMATS`` (by PIL's registry of
    file endings, any case), sorted by name; their contents are checked when decoded."""
    suffixes = {ext for ext, fmt in Image.registered_extensions().items() if fmt in ALLOWED_FORMATS}
    return sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in suffixes)


#: What ``decode_image`` accepts: encoded bytes, a file path, or an already-open PIL image.
ImageSource: TypeAlias = bytes | bytearray | memoryview | str | os.PathLike | Image.Image

# Errors PIL and its plugins raise on corrupt or foreign data. PIL is not consistent (a bad
# PNG chunk can give SyntaxError, a short TIFF struct.error, a broken GIF IndexError), so a
# server that must answer 4xx instead of 500 has to catch the whole family.
DECODE_ERRORS: tuple[type[BaseException], ...] = (
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

# Image.open reads this many bytes and calls each plugin's accept() with them.
_PREFIX_BYTES = 16
# What Image.open's _open_core tolerates from a plugin that does not match.
_ACCEPT_ERRORS = (SyntaxError, IndexError, TypeError, struct.error)
# Formats clients send that no PIL plugin opens; naming them gives a 415 ("send another
# format") instead of a 400 ("broken file"). ISO-BMFF brands are at bytes 8..12.
_FOREIGN_MAGIC = ((b"%PDF-", "PDF"),)
_HEIF_BRANDS = frozenset({b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"})


@dataclass(frozen=True)
class ImageInfo:
    """What an image's header says, read without decoding any pixel.

    Attributes:
        format: PIL format id (``"JPEG"``, ``"MPO"``, ``"PNG"``...); ``""`` for a PIL image
            made in memory.
        width, height: the stored size in pixels, before EXIF orientation (a 90-degree
            orientation swaps them in ``DecodedImage.original_size``; the pixel count is
            the same).
        mode: PIL mode the pixels will decode to (``"RGB"``, ``"I;16"``, ``"F"``...).
    """

    format: str
    width: int
    height: int
    mode: str


def identify_format(data: bytes) -> str | None:
    """The format of ``data`` from its first bytes, without running any plugin's parser.

    Tries every registered plugin's ``accept`` on the first 16 bytes in PIL's registration
    order (``Image.ID``), as ``Image.open`` does, and returns the first format id that
    accepts them; then a few well-known formats PIL cannot open (``"PDF"``, ``"HEIF"``).
    ``None`` when nothing recognises the bytes. Plugins without an ``accept`` (TGA, IM,
    SPIDER...) can only be recognised by parsing, so they are never reported.
    """
    Image.init()  # register every plugin, so refused formats are named, not "unknown"
    prefix = data[:_PREFIX_BYTES]
    for format_id in Image.ID:
        _, accept = Image.OPEN[format_id]
        if accept is None:
            continue
        try:
            verdict = accept(prefix)
        except _ACCEPT_ERRORS:
            continue
        # A str is PIL's "looks like it, but support is not installed" (e.g. WebP).
        if verdict and not isinstance(verdict, str):
            return format_id
    for magic, name in _FOREIGN_MAGIC:
        if prefix.startswith(magic):
            return name
    if prefix[4:8] == b"ftyp" and prefix[8:12] in _HEIF_BRANDS:
        return "HEIF"
    return None


def open_image(
    data: bytes, *, max_pixels: int | None, formats: Collection[str] | None
) -> Image.Image:
    """Open encoded ``data`` lazily (header only) with the format and size guards applied.

    Args:
        data: the encoded file, non-empty.
        max_pixels: largest ``width * height`` (None: only PIL's bomb limit applies).
        formats: accepted PIL format ids (case-insensitive); ``None`` lets ``Image.open``
            try every plugin it has, which is unsafe for untrusted input (see module doc).

    Returns:
        The lazily opened image (``load()`` not called), from an in-memory buffer so it
        holds no OS file handle.

    Raises:
        UnsupportedImageFormatError: a format PIL recognises that is not in ``formats``.
        ImageDecodeError: bytes no format recognises, or a broken header.
        ImageTooLargeError: more pixels than ``max_pixels`` or PIL's bomb limit.
    """
    allowed = None if formats is None else frozenset(f.upper() for f in formats)
    candidates = None if allowed is None else [_opener(data, allowed)]
    try:
        with warnings.catch_warnings():
            # PIL *warns* (not raises) between 1x and 2x its bomb limit; as an error it
            # becomes catchable. catch_warnings is process-global before Python 3.14; a race
            # with another thread can at worst let the warning through, and our own header
            # check right below still applies.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=candidates)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        limit = f"the limit of {max_pixels} pixels" if max_pixels else "PIL's bomb limit"
        raise ImageTooLargeError(f"image too large: more than {limit} ({exc})") from exc
    except UnidentifiedImageError as exc:
        # PIL's message names a BytesIO object; say what the client needs to know.
        what = "a readable " + candidates[0] + " image" if candidates else "a recognised format"
        raise ImageDecodeError(f"not {what} ({len(data)} bytes starting {data[:8]!r})") from exc
    except DECODE_ERRORS as exc:
        raise ImageDecodeError(f"not a readable image: {exc}") from exc
    if allowed is not None and image.format not in allowed:
        # The JPEG plugin opens MPO (multi-picture) files too; the caller listed formats.
        raise UnsupportedImageFormatError(_refusal(str(image.format), allowed))
    check_pixels(image.size, max_pixels)
    return image


def probe_image(
    source: ImageSource,
    *,
    max_pixels: int | None,
    formats: Collection[str] | None = ALLOWED_FORMATS,
) -> ImageInfo:
    """Format, size and mode of an image from its header alone (no pixel is decoded).

    Applies exactly the checks ``decode_image`` applies before decoding (format allow-list,
    ``max_pixels``, PIL's bomb limit), so a request's cost can be estimated, and hopeless
    uploads refused, before any decoding work. Costs microseconds for any format.

    Args:
        source: encoded bytes, a path, or a PIL image (trusted: only its size is checked).
        max_pixels: as in ``decode_image``.
        formats: as in ``decode_image``.

    Raises:
        The errors of ``open_image``, and ``ImageDecodeError`` for an unreadable file.
    """
    if isinstance(source, Image.Image):
        check_pixels(source.size, max_pixels)
        return ImageInfo(source.format or "", source.width, source.height, source.mode)
    image = open_image(read_bytes(source), max_pixels=max_pixels, formats=formats)
    return ImageInfo(str(image.format), image.width, image.height, image.mode)


def read_bytes(source: ImageSource) -> bytes:
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


def check_pixels(size: tuple[int, int], max_pixels: int | None) -> None:
    """Raise unless ``size`` (w, h) is non-empty and has at most ``max_pixels`` pixels."""
    width, height = size
    if width < 1 or height < 1:
        raise ImageDecodeError(f"image has an empty size {width}x{height}")
    if max_pixels is not None and width * height > max_pixels:
        raise ImageTooLargeError(
            f"image is {width}x{height} = {width * height} pixels, "
            f"more than the limit of {max_pixels} pixels"
        )


def _opener(data: bytes, allowed: frozenset[str]) -> str:
    """The one plugin ``Image.open`` may use for ``data``, or the refusal."""
    format_id = identify_format(data)
    if format_id is None:
        raise ImageDecodeError(
            f"not a recognised image format ({len(data)} bytes starting {data[:8]!r})"
        )
    # MPO is not a plugin of its own: the JPEG plugin opens it and reports "MPO".
    if format_id in allowed or (format_id == "JPEG" and "MPO" in allowed):
        return format_id
    raise UnsupportedImageFormatError(_refusal(format_id, allowed))


def _refusal(format_id: str, allowed: frozenset[str]) -> str:
    accepted = ", ".join(sorted(allowed)) or "none"
    return f"image format {format_id} is not accepted; send one of: {accepted}"
