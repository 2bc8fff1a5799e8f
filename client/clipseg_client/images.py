"""Turn what a caller holds (a path, bytes, a PIL image, a numpy array) into an upload.

Files and bytes are sent as they are (the server decodes JPEG faster with draft mode
than we could re-encode it); PIL images and arrays are encoded as PNG, losslessly, so
the server sees exactly the caller's pixels.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

#: Everything accepted as an image or a mask.
ImageInput = str | os.PathLike | bytes | bytearray | memoryview | Image.Image | np.ndarray

# First bytes -> MIME type, for a truthful part header (the server sniffs anyway, but
# refuses a declared non-image type with 415, so never guess from a file's extension).
_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"BM", "image/bmp"),
    (b"II*\x00", "image/tiff"),
    (b"MM\x00*", "image/tiff"),
)
# PNG stores these modes as they are; anything else (CMYK, YCbCr, F...) becomes RGB(A).
_PNG_MODES = {"1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16"}


@dataclass(frozen=True)
class Upload:
    """One multipart file part: its name, bytes and declared type."""

    filename: str
    data: bytes
    content_type: str

    def part(self) -> tuple[str, bytes, str]:
        """The ``(filename, content, content_type)`` tuple httpx takes for a file."""
        return (self.filename, self.data, self.content_type)


def sniff_type(data: bytes) -> str:
    """The MIME type from the first bytes; ``application/octet-stream`` if unknown."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    for magic, mime in _MAGIC:
        if data.startswith(magic):
            return mime
    return "application/octet-stream"


def png_bytes(image: Image.Image) -> bytes:
    """``image`` as PNG (lossless); modes PNG cannot hold are converted to RGB/RGBA."""
    if image.mode not in _PNG_MODES:
        image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    buffer = io.BytesIO()
    # compress_level 1: uploads are transient; fast encoding beats a few % fewer bytes.
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def array_to_image(array: np.ndarray) -> Image.Image:
    """A PIL image from ``uint8 (H, W)``, ``(H, W, 3)`` or ``(H, W, 4)``, or ``bool (H, W)``
    (a mask: True -> 255).

    Raises:
        ValueError: another shape or dtype (floats are refused: their scale is ambiguous).
    """
    if array.dtype == np.bool_ and array.ndim == 2:
        return Image.fromarray(array.astype(np.uint8) * 255)
    if array.dtype != np.uint8:
        raise ValueError(f"arrays must be uint8 (or bool for masks), got {array.dtype}")
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise ValueError(f"arrays must be HxW, HxWx3 or HxWx4, got shape {array.shape}")
    # uint8 with 1, 3 or 4 channels: PIL infers L, RGB or RGBA.
    return Image.fromarray(np.ascontiguousarray(array))


def to_upload(value: ImageInput, name: str) -> Upload:
    """The upload for an image or mask given in any accepted form.

    Args:
        value: a path (``str``/``PathLike``), encoded bytes, a PIL image, or a numpy
            array (see :func:`array_to_image`).
        name: the file name used for PIL images and arrays (``<name>.png``) and bytes.

    Raises:
        FileNotFoundError: a path that does not exist.
        TypeError: a value of another type.
    """
    if isinstance(value, (str, os.PathLike)):
        path = Path(value)
        data = path.read_bytes()
        return Upload(path.name, data, sniff_type(data))
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        return Upload(name, data, sniff_type(data))
    if isinstance(value, np.ndarray):
        value = array_to_image(value)
    if isinstance(value, Image.Image):
        return Upload(f"{name}.png", png_bytes(value), "image/png")
    raise TypeError(
        f"expected a path, bytes, a PIL image or a numpy array, got {type(value).__name__}"
    )
