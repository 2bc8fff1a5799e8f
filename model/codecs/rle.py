"""Binary-mask encodings: COCO run-length encoding (RLE) and PNG.

These are plain functions over numpy arrays, shared by the HTTP service (to send masks
back) and by evaluation (to read COCO annotations). They need no torch.

COCO RLE
    A mask of shape ``(h, w)`` is flattened in column-major (Fortran) order and described
    by the lengths of its alternating runs, starting with a run of *background* pixels
    (of length 0 when the first pixel is foreground). The "compressed" form stores those
    counts as an ASCII string: each count (for index ``i > 2``, its difference from
    ``counts[i - 2]``) is written as a signed little-endian varint of 5 data bits per
    character, bit ``0x20`` meaning "more characters follow" and bit ``0x10`` of the last
    character being the sign, each character offset by 48 (so only ``'0'``..``'o'``
    appear). :func:`encode_rle` reproduces pycocotools' ``mask.encode`` byte for byte,
    except that ``counts`` is a ``str`` (JSON-ready) instead of ``bytes``.

PNG
    Masks are 8-bit grayscale (mode ``"L"``) images with values 0 and 255; probability
    maps are 8-bit grayscale with ``round(p * 255)``.

Everything is vectorised with numpy: encoding or decoding a 4000x3000 object mask takes
tens of milliseconds, and even pure noise (six million runs) stays well under a second.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from clipseg_serve.model.codecs.png import gray_png, packed_bit_png, packed_gray_png
from clipseg_serve.model.errors import ImageDecodeError, ImageTooLargeError, InvalidMaskError

__all__ = [
    "decode_png_mask",
    "decode_rle",
    "encode_png_gray",
    "encode_png_mask",
    "encode_png_packed",
    "encode_png_probabilities",
    "encode_rle",
    "encode_rle_runs",
    "mask_bbox",
    "rle_area",
]

#: zlib level for PNG output. Masks are long runs of identical bytes, which level 1 already
#: compresses to a small fraction of the raw size; higher levels cost several times more CPU
#: on large images for a few percent fewer bytes, a bad trade on a request's hot path.
PNG_COMPRESS_LEVEL = 1

#: Characters of the compressed RLE alphabet are ``48 + v`` for a 6-bit ``v``.
_RLE_CHAR_OFFSET = 48
#: Longest varint accepted when decoding: 12 characters hold 60 bits, far beyond any real
#: count (pycocotools counts are 32-bit), and keep every intermediate inside int64.
_RLE_MAX_CHARS = 12
#: Upper bound on ``h * w`` so that sums of counts can never overflow int64.
_MAX_PIXELS = 1 << 62


def _as_2d(mask: np.ndarray, what: str = "mask") -> np.ndarray:
    """Return ``mask`` as an array, raising ``InvalidMaskError`` unless it is 2-D."""
    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise InvalidMaskError(f"{what} must be 2-D (h, w), got shape {arr.shape}")
    return arr


def _mask_counts(mask: np.ndarray) -> np.ndarray:
    """Run lengths of a 2-D mask in column-major order, starting with a background run.

    Returns a 1-D int64 array with at least one element; it sums to ``h * w``.
    """
    flat = (mask != 0).ravel(order="F")
    n = flat.size
    if n == 0:
        return np.zeros(1, dtype=np.int64)
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate(([0], change, [n]))
    counts = np.diff(bounds).astype(np.int64, copy=False)
    if flat[0]:
        counts = np.concatenate((np.zeros(1, dtype=np.int64), counts))
    return counts


def _counts_to_string(counts: np.ndarray) -> str:
    """Compressed COCO string of a 1-D int64 array of run lengths (pycocotools' rleToString)."""
    x = counts.astype(np.int64, copy=True)
    if x.size > 3:
        x[3:] -= counts[1:-2]
    # Characters per value: the fewest k >= 1 such that x fits in a signed 5k-bit integer,
    # i.e. such that the bits above the 5k written ones are the sign extension of bit 5k-1.
    nchars = np.ones(x.shape, dtype=np.int64)
    for k in range(1, 13):
        half = 1 << (5 * k - 1)
        longer = (x < -half) | (x >= half)
        if not longer.any():
            break
        nchars += longer
    # Lay the characters out as an (m, K) table, K the longest value, and keep each row's
    # first nchars entries: row-major boolean indexing preserves the string order.
    pos = np.arange(int(nchars.max()), dtype=np.int64)
    chars = (x[:, None] >> (5 * pos)) & 0x1F
    chars |= (pos < (nchars - 1)[:, None]).astype(np.int64) << 5
    chars += _RLE_CHAR_OFFSET
    chars = chars[pos < nchars[:, None]]
    return chars.astype(np.uint8).tobytes().decode("ascii")


def _string_to_counts(counts: str | bytes) -> np.ndarray:
    """Run lengths (1-D int64, unvalidated) of a compressed COCO string (rleFrString)."""
    if isinstance(counts, str):
        try:
            raw = counts.encode("ascii")
        except UnicodeEncodeError as exc:
            raise InvalidMaskError("RLE counts string contains non-ASCII characters") from exc
    else:
        raw = bytes(counts)
    if not raw:
        return np.zeros(0, dtype=np.int64)
    v = np.frombuffer(raw, dtype=np.uint8).astype(np.int64) - _RLE_CHAR_OFFSET
    if v.min() < 0 or v.max() > 0x3F:
        bad = raw[int(np.flatnonzero((v < 0) | (v > 0x3F))[0])]
        raise InvalidMaskError(
            f"RLE counts string contains {chr(bad)!r}; only characters '0'..'o' are valid"
        )
    more = (v & 0x20) != 0
    if more[-1]:
        raise InvalidMaskError("RLE counts string is truncated (its last value is unfinished)")
    ends = np.flatnonzero(~more)
    starts = np.concatenate(([0], ends[:-1] + 1))
    lengths = ends - starts + 1
    if lengths.max() > _RLE_MAX_CHARS:
        raise InvalidMaskError(
            f"RLE counts string holds a value longer than {_RLE_MAX_CHARS} characters"
        )
    pos = np.arange(v.size, dtype=np.int64) - np.repeat(starts, lengths)
    x = np.add.reduceat((v & 0x1F) << (5 * pos), starts)
    negative = (v[ends] & 0x10) != 0
    x[negative] -= np.left_shift(1, 5 * lengths[negative])
    # Undo the delta coding: counts[i] = x[i] + counts[i - 2] for i > 2. The odd indices
    # form one running sum from index 1; the even ones one from index 2 (index 0 stands alone).
    out = x.copy()
    out[1::2] = np.cumsum(x[1::2])
    out[2::2] = np.cumsum(x[2::2])
    return out


def _parse_size(size: Any) -> tuple[int, int]:
    """Validate an RLE ``size`` field and return ``(h, w)``."""
    if not isinstance(size, (list, tuple)) or len(size) != 2:
        raise InvalidMaskError(f"RLE size must be a list [h, w] of two integers, got {size!r}")
    dims = []
    for d in size:
        if isinstance(d, (bool, np.bool_)) or not isinstance(d, (int, np.integer)):
            raise InvalidMaskError(f"RLE size must hold integers, got {size!r}")
        if d < 0:
            raise InvalidMaskError(f"RLE size must be non-negative, got {size!r}")
        dims.append(int(d))
    h, w = dims
    if h * w >= _MAX_PIXELS:
        raise InvalidMaskError(f"RLE size {size!r} is too large")
    return h, w


def _rle_counts(rle: Mapping[str, Any]) -> tuple[int, int, np.ndarray]:
    """Validate an RLE dict and return ``(h, w, counts)`` with counts a 1-D int64 array."""
    if not isinstance(rle, Mapping):
        raise InvalidMaskError(f"RLE must be a mapping with 'size' and 'counts', got {rle!r}")
    missing = [k for k in ("size", "counts") if k not in rle]
    if missing:
        raise InvalidMaskError(f"RLE is missing {', '.join(repr(k) for k in missing)}")
    h, w = _parse_size(rle["size"])
    total = h * w
    raw = rle["counts"]
    if isinstance(raw, (str, bytes, bytearray, memoryview)):
        counts = _string_to_counts(raw)
    elif isinstance(raw, (list, tuple, np.ndarray)):
        not_ints = "uncompressed RLE counts must be a flat list of integers"
        try:
            arr = np.asarray(raw)
        except (ValueError, TypeError, OverflowError) as exc:  # ragged or unconvertible
            raise InvalidMaskError(not_ints) from exc
        if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
            raise InvalidMaskError(not_ints)
        if arr.size and (arr.min() < 0 or arr.max() > total):
            raise InvalidMaskError(f"RLE counts must lie in [0, {total}] for size {[h, w]}")
        counts = arr.astype(np.int64)
    else:
        raise InvalidMaskError(
            f"RLE counts must be a string, bytes or a list of integers, got {type(raw).__name__}"
        )
    if counts.size and (counts.min() < 0 or counts.max() > total):
        raise InvalidMaskError(f"RLE counts must lie in [0, {total}] for size {[h, w]}")
    # Every count is in [0, total] and total < 2**62, so the running sum cannot overflow
    # before it first exceeds total; checking all partial sums therefore catches everything.
    partial = np.cumsum(counts)
    covered = int(partial[-1]) if partial.size else 0
    if covered != total:
        raise InvalidMaskError(f"RLE counts cover {covered} pixels but size {[h, w]} has {total}")
    if partial.size and int(partial.max()) > total:
        raise InvalidMaskError(f"RLE counts overrun the {total} pixels of size {[h, w]}")
    return h, w, counts


def encode_rle(mask: np.ndarray) -> dict[str, object]:
    """Encode a binary mask as COCO compressed RLE.

    Args:
        mask: 2-D array ``(h, w)`` of any dtype (bool, integer or float); nonzero pixels are
            foreground.

    Returns:
        ``{"size": [h, w], "counts": str}``, identical to pycocotools'
        ``mask.encode(np.asfortranarray(mask.astype(np.uint8)))`` for a 0/1 mask except
        that ``counts`` is ``str`` rather than ``bytes``.

    Raises:
        InvalidMaskError: ``mask`` is not 2-D.
    """
    arr = _as_2d(mask)
    h, w = arr.shape
    return {"size": [int(h), int(w)], "counts": _counts_to_string(_mask_counts(arr))}


def encode_rle_runs(runs: np.ndarray, size: tuple[int, int]) -> dict[str, object]:
    """COCO compressed RLE from run lengths already found (e.g. on the device).

    Args:
        runs: 1-D integer array of COCO's uncompressed counts (column-major, starting
            with a background run) summing to ``h * w``, as ``model.masks.runs`` returns.
        size: ``(h, w)``.

    Returns:
        The same dict as ``encode_rle`` of the mask those runs describe.
    """
    h, w = size
    return {"size": [int(h), int(w)], "counts": _counts_to_string(np.asarray(runs, np.int64))}


def decode_rle(rle: Mapping[str, Any]) -> np.ndarray:
    """Decode a COCO RLE into a mask.

    Args:
        rle: ``{"size": [h, w], "counts": ...}`` where counts is the compressed string
            (``str`` or ``bytes``, as from :func:`encode_rle` or pycocotools) or the
            uncompressed list of run lengths (COCO ``iscrowd`` annotations).

    Returns:
        bool array of shape ``(h, w)``.

    Raises:
        InvalidMaskError: the size is not two non-negative integers, the counts string is
            malformed, or the runs do not add up to exactly ``h * w`` pixels.
    """
    h, w, counts = _rle_counts(rle)
    values = (np.arange(counts.size) % 2).astype(bool)
    flat = np.repeat(values, counts)
    return flat.reshape((h, w), order="F")


def rle_area(rle: Mapping[str, Any]) -> int:
    """Number of foreground pixels of a COCO RLE (pycocotools ``mask.area``).

    Accepts the same forms as :func:`decode_rle` and raises ``InvalidMaskError`` likewise;
    the mask itself is never materialised.
    """
    _, _, counts = _rle_counts(rle)
    return int(counts[1::2].sum())


def mask_bbox(mask: np.ndarray) -> list[int]:
    """Bounding box ``[x, y, w, h]`` of the foreground of a 2-D mask (nonzero pixels).

    Same box as pycocotools ``mask.toBbox`` (as ints): ``x``/``y`` are the first foreground
    column/row, ``w``/``h`` the extent in pixels. An all-background mask gives
    ``[0, 0, 0, 0]``.

    Raises:
        InvalidMaskError: ``mask`` is not 2-D.
    """
    fg = _as_2d(mask) != 0
    cols = np.flatnonzero(fg.any(axis=0))
    if cols.size == 0:
        return [0, 0, 0, 0]
    rows = np.flatnonzero(fg.any(axis=1))
    x0, x1 = int(cols[0]), int(cols[-1])
    y0, y1 = int(rows[0]), int(rows[-1])
    return [x0, y0, x1 - x0 + 1, y1 - y0 + 1]


def _png_bytes(pixels: np.ndarray) -> bytes:
    """PNG of a 2-D uint8 array as a mode "L" image (width w, height h)."""
    if pixels.size == 0:
        raise InvalidMaskError(f"cannot write an empty {pixels.shape} mask as PNG")
    return gray_png(pixels, PNG_COMPRESS_LEVEL)


def encode_png_gray(pixels: np.ndarray) -> bytes:
    """Encode a uint8 [h, w] array (e.g. an 8-bit probability map) as a mode "L" PNG.

    Raises:
        InvalidMaskError: ``pixels`` is not a 2-D uint8 array with pixels.
    """
    arr = _as_2d(pixels, "pixels")
    if arr.dtype != np.uint8:
        raise InvalidMaskError(f"pixels must be uint8, got {arr.dtype}")
    return _png_bytes(arr)


def encode_png_mask(mask: np.ndarray) -> bytes:
    """Encode a binary mask as an 8-bit grayscale PNG.

    Args:
        mask: 2-D array ``(h, w)``; nonzero pixels are foreground.

    Returns:
        PNG bytes of a mode ``"L"`` image of size ``(w, h)`` with values 0 (background) and
        255 (foreground). zlib level :data:`PNG_COMPRESS_LEVEL` (1) is used: masks are long
        uniform runs that level 1 already shrinks to a tiny size, at a fraction of the CPU
        time of the default level.

    Raises:
        InvalidMaskError: ``mask`` is not 2-D or has no pixels.
    """
    fg = _as_2d(mask) != 0
    return _png_bytes(fg.astype(np.uint8) * np.uint8(255))


def encode_png_packed(packed: np.ndarray, width: int, bits: int = 8) -> bytes:
    """Encode a bit-packed mask as a PNG: with ``bits=8`` the same PNG as
    ``encode_png_mask`` (mode "L", 0/255); with ``bits=1`` a 1-bit grayscale PNG (mode
    "1", the same pixels as booleans), written from the packed rows as they are.

    Args:
        packed: uint8 ``(h, ceil(width / 8))``, rows ``np.packbits``-ed (first pixel in the
            most significant bit), unpacked straight into the PNG's scanlines
            (``model.codecs.png``).
        width: the mask's width in pixels.
        bits: 8 or 1.

    Raises:
        InvalidMaskError: ``packed`` is not 2-D uint8 of a matching width.
        ValueError: ``bits`` is neither 8 nor 1.
    """
    arr = _as_2d(packed, "packed mask")
    if arr.dtype != np.uint8 or arr.shape[1] != -(-width // 8) or width < 1 or arr.shape[0] < 1:
        raise InvalidMaskError(f"packed mask {arr.shape} {arr.dtype} does not fit width {width}")
    if bits == 1:
        return packed_bit_png(_padding_cleared(arr, width), width, PNG_COMPRESS_LEVEL)
    if bits != 8:
        raise ValueError(f"PNG masks have 8 or 1 bits per pixel, not {bits}")
    return packed_gray_png(arr, width, PNG_COMPRESS_LEVEL)


def _padding_cleared(packed: np.ndarray, width: int) -> np.ndarray:
    """``packed`` with the bits past ``width`` in each row's last byte set to 0 (PNG
    decoders ignore them, but a mask's file should not depend on them)."""
    spare = -width % 8
    if not spare or not (packed[:, -1] & ((1 << spare) - 1)).any():
        return packed
    cleared = packed.copy()
    cleared[:, -1] &= 0xFF & ~((1 << spare) - 1)
    return cleared


def encode_png_probabilities(probs: np.ndarray) -> bytes:
    """Encode a probability map as an 8-bit grayscale PNG.

    Args:
        probs: 2-D float array ``(h, w)`` with values in [0, 1]; values outside are clipped.

    Returns:
        PNG bytes of a mode ``"L"`` image of size ``(w, h)`` whose pixels are
        ``round(p * 255)`` (round half to even, as numpy and Python do).

    Raises:
        InvalidMaskError: ``probs`` is not 2-D, has no pixels or contains NaN.
    """
    p = _as_2d(probs, "probabilities").astype(np.float64, copy=False)
    if np.isnan(p).any():
        raise InvalidMaskError("probabilities contain NaN")
    pixels = np.clip(np.rint(p * 255.0), 0, 255).astype(np.uint8)
    return _png_bytes(pixels)


def decode_png_mask(data: bytes) -> np.ndarray:
    """Decode a PNG mask into a bool array ``(h, w)``; nonzero pixels are foreground.

    Grayscale and bilevel PNGs are read directly; other modes (palette, RGB, ...) are first
    converted to grayscale, so any non-black pixel counts as foreground.

    Raises:
        ImageDecodeError: ``data`` is empty, not a PNG, or truncated/corrupt.
        ImageTooLargeError: the PNG exceeds PIL's decompression-bomb pixel limit.
    """
    if not data:
        raise ImageDecodeError("mask PNG is empty")
    try:
        with Image.open(io.BytesIO(data), formats=["PNG"]) as img:
            img.load()
            if img.mode not in ("1", "L", "I", "I;16", "F"):
                img = img.convert("L")
            arr = np.asarray(img)
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"mask PNG is too large: {exc}") from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageDecodeError(f"cannot decode mask PNG: {exc}") from exc
    return arr != 0
