"""Domain errors of the CLIPSeg library.

Every error a caller can cause with bad input derives from ``ClipSegError`` so that a
server can map it to a 4xx answer without guessing. Errors are also ``ValueError`` where
they describe a bad value, so plain library users can catch the usual exception.
"""

from __future__ import annotations


class ClipSegError(Exception):
    """Base class of every error this library raises on purpose."""


class ImageDecodeError(ClipSegError, ValueError):
    """Bytes or a file that are not a readable image (truncated, wrong type, empty)."""


class UnsupportedImageFormatError(ClipSegError, ValueError):
    """An image in a format PIL recognises but the caller does not accept (ICO, EPS, PSD...).

    Raised from the leading bytes alone, before any format plugin parses the file, so a
    refused format never runs its decoder (EPS would start Ghostscript, ICO decodes its
    embedded PNG while opening).
    """


class ImageTooLargeError(ClipSegError, ValueError):
    """An image whose pixel count exceeds the configured limit (decompression bomb guard)."""


class InvalidMaskError(ClipSegError, ValueError):
    """A support mask that is empty, of the wrong size, or not a 2-D mask."""


class InvalidPromptError(ClipSegError, ValueError):
    """A prompt that is empty or otherwise unusable, or an unknown template mode."""


class WeightsError(ClipSegError):
    """A checkpoint that cannot be loaded: wrong format, variant, or missing/unexpected keys."""
